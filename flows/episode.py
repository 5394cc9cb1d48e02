"""The ``remaster-episode`` flow (``remaster video`` runs it): probe, split, upscale, reassemble, verify.

Segments are upscaled as Prefect tasks on a thread pool (``remaster.workers``: one at a time on
a CPU, where one upscale already uses every core), or on Dask workers (``remaster.runner``, see
``flows.runners``), which load the model themselves once each. Each finished segment stays
under ``OUTPUT.parts/<key>/`` (``flows.segments``), where the key hashes the input file, the
model file, the scale and the encode settings, so a killed run started again with the same
command redoes only what was unfinished. OUTPUT appears only once complete and verified (muxed
inside the parts folder, then renamed), and the parts folder goes once OUTPUT is in place.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.runners import ModelSpec, make_task_runner, upscaler
from flows.segments import locked, reassemble_task, segment_key, split_task, upscale_all
from remaster import stopping
from remaster.config import RemasterParams, check_choices, flatten
from remaster.data.imaging import bicubic_upscale
from remaster.engine.upscaler import Upscaler
from remaster.files import sha256_file
from remaster.model_source import SOURCE_KIND, resolve_model, video_default
from remaster.tracking import NullTracker, Tracker
from remaster.video import ffmpeg, probe
from remaster.video.reuse import ReuseRule
from remaster.video.verify import verify

EXPERIMENT = "remaster"
CONTAINERS = (".mkv", ".mp4", ".m4v", ".mov")
SCALES = (2, 4)


def check_roots(p: RemasterParams, paths: list[Path]) -> None:
    """With ``remaster.media_roots`` set, every path must lie under one of them (symlinks
    resolved): a flow run started through the API takes its paths from whoever can reach it."""
    if not p.media_roots:
        return
    roots = [Path(r).expanduser().resolve() for r in p.media_roots]
    for path in paths:
        real = path.expanduser().resolve()
        if not any(real.is_relative_to(root) for root in roots):
            raise PermissionError(f"{path} is outside remaster.media_roots ({', '.join(map(str, roots))})")


def check_job(p: RemasterParams, source: Path, output: Path, overwrite: bool) -> None:
    """Fail before any work on settings or an output that cannot be right."""
    check_choices(p, "remaster")
    if p.scale not in SCALES:
        raise ValueError(f"remaster.scale must be one of {SCALES}, got {p.scale!r}")
    ReuseRule(p.reuse, p.reuse_tolerance)  # a ValueError on a bad mode or tolerance
    check_roots(p, [source, output])
    if output.suffix.lower() not in CONTAINERS:
        raise ValueError(
            f"{output}: the output must end in one of {', '.join(CONTAINERS)} (.mkv holds anything)"
        )
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} exists; pass --overwrite to replace it")


def side_by_side(info: probe.VideoInfo, up: Upscaler, deinterlace: bool) -> np.ndarray:
    """The middle frame, bicubic on the left and A2N on the right: (H*s, 2*W*s, 3) uint8."""
    frame = ffmpeg.extract_frame(info, info.frames // 2, deinterlace)
    return np.concatenate([bicubic_upscale(frame, up.scale), up.upscale_image(frame)], axis=1)


probe_task = task(name="probe", cache_policy=NO_CACHE)(probe.probe)
verify_task = task(name="verify", cache_policy=NO_CACHE)(verify)


@contextlib.contextmanager
def timed(seconds: dict[str, float], step: str) -> Iterator[None]:
    t0 = time.perf_counter()
    yield
    seconds[step] = round(time.perf_counter() - t0, 3)


@flow(name="remaster-episode")
def remaster_episode(
    input_path: str,
    output_path: str,
    params: RemasterParams | None = None,
    overwrite: bool = False,
    keep_frames: str | None = None,
    tracker: Any = None,
) -> dict[str, Any]:
    """Remaster ``input_path`` into ``output_path``; the summary's ``run`` part is what varies by run."""
    p = params or RemasterParams()
    trk: Tracker = tracker if tracker is not None else NullTracker()
    src, out = Path(input_path), Path(output_path)
    check_job(p, src, out, overwrite)
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    with trk.start_run(EXPERIMENT, f"{src.stem}-x{p.scale}"):
        with timed(seconds, "probe"):
            info = probe_task(src)
            shipped = video_default(info.codec)
            if not p.model and shipped in SOURCE_KIND:
                why = SOURCE_KIND[shipped]
                get_run_logger().info("%s: %s source (%s), so the %s weights", src, why, info.codec, shipped)
            model_path = resolve_model(p.model or None, p.scale, default=shipped)
            model: dict[str, Any] = {"path": str(model_path), "sha256": sha256_file(model_path)}
            enc = ffmpeg.Encode(p.codec, p.crf, p.preset, ffmpeg.resolve_pix_fmt(p.pix_fmt, info))
            deinterlace = p.deinterlace == "on" or (p.deinterlace == "auto" and info.interlaced)
            if info.decode_errors:
                get_run_logger().warning(
                    "%s: the decoder reported %d errors; it conceals them, and every frame is still counted",
                    src, info.decode_errors,
                )  # fmt: skip
            key = segment_key(sha256_file(src), model["sha256"], p, enc.pix_fmt)
        parts = out.with_name(out.name + ".parts")
        with locked(parts), stopping.children_end_with_the_block():
            with timed(seconds, "split"):
                segments = split_task(info, parts / key, p.segment_seconds)
            spec = ModelSpec(
                str(model_path.resolve()),
                model["sha256"],
                p.scale,
                p.precision,
                p.tile or None,
                cuda_graphs=p.cuda_graphs,
            )
            up = upscaler(spec)  # the thread pool's tasks use this one; Dask workers load their own
            model.update({k: (up.info or {}).get(k) for k in ("source", "step")})
            with timed(seconds, "upscale"):
                frames_dir = Path(keep_frames).resolve() if keep_frames else None
                dsts, reused, upscaled, computed = upscale_all(
                    segments, parts / key, info, spec, p, enc, deinterlace, frames_dir
                )
            with timed(seconds, "reassemble"):
                muxed = reassemble_task(
                    info, dsts, segments, parts / key / f"muxed{out.suffix.lower()}", p.codec
                )
            with timed(seconds, "verify"):
                checks = verify_task(info, muxed, p.scale)
            os.replace(muxed, out)
        shutil.rmtree(parts, ignore_errors=True)
        seconds["wall"] = round(time.perf_counter() - started, 3)
        out_w, out_h = ffmpeg.output_size(info, p.scale)
        summary: dict[str, Any] = {
            "input": str(src),
            "output": str(out),
            "scale": p.scale,
            "model": model,
            "encode": dataclasses.asdict(enc),
            "deinterlaced": deinterlace,
            "frames": info.frames,
            "segments": len(segments),
            "source": info.summary(),
            "result": {"width": out_w, "height": out_h, "colour": vars(ffmpeg.output_colour(info, out_h))},
            "verify": checks,
            "run": {
                "segments_reused": reused,
                "frames_upscaled": upscaled,
                "frames_computed": computed,
                "frames_reused": upscaled - computed,
                "fps": round(upscaled / seconds["upscale"], 3) if upscaled else 0.0,
                "seconds": seconds,
            },
        }
        track(trk, summary, p, info, up, deinterlace)
    get_run_logger().info(
        "remastered %s -> %s: %d frames in %d segments (%d kept from an earlier run), %d frames computed "
        "and %d reused, %.1f s, %.2f frames/s; verified: %s",
        src, out, info.frames, len(segments), reused, computed, upscaled - computed, seconds["wall"],
        summary["run"]["fps"],
        ", ".join(f"{k} ok" for k in checks),
    )  # fmt: skip
    return summary


def track(
    trk: Tracker,
    summary: dict[str, Any],
    p: RemasterParams,
    info: probe.VideoInfo,
    up: Upscaler,
    deinterlace: bool,
) -> None:
    """Params, metrics, the summary and a bicubic-vs-A2N sample frame, to the tracker's open run."""
    if trk.run_id is None:
        return
    model = summary["model"]
    trk.log_params(
        {
            **flatten(dataclasses.asdict(p), "remaster."),
            **{f"model_{k}": v for k, v in model.items()},
            "input": summary["input"],
            "output": summary["output"],
            "deinterlaced": deinterlace,
        }
    )
    run = summary["run"]
    metrics = {
        k: run[k] for k in ("segments_reused", "frames_upscaled", "frames_computed", "frames_reused", "fps")
    }
    metrics.update({f"seconds_{k}": v for k, v in run["seconds"].items()})
    trk.log_metrics({"frames": info.frames, "segments": summary["segments"], **metrics})
    trk.log_dict(summary, "summary.json")
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sample_bicubic_vs_a2n.png"
        Image.fromarray(side_by_side(info, up, deinterlace)).save(path)
        trk.log_artifact(path)


def with_workers(p: RemasterParams) -> Any:
    """The flow on ``p.runner``: ``p.workers`` threads or local Dask processes (0: one on a CPU,
    two on a GPU), or the Dask cluster at ``p.dask_address``."""
    import torch

    workers = p.workers or (2 if torch.cuda.is_available() else 1)
    runner: Any = make_task_runner(p.runner, p.dask_address or None, workers)
    return remaster_episode.with_options(task_runner=runner)


def reuse_preview(src: Path, p: RemasterParams) -> str:
    """A table of what each reuse mode would save on ``src``: decoded and compared, never upscaled."""
    ReuseRule(p.reuse, p.reuse_tolerance)
    info = probe.probe(src)
    deinterlace = p.deinterlace == "on" or (p.deinterlace == "auto" and info.interlaced)
    rules = [ReuseRule("exact"), ReuseRule("near", p.reuse_tolerance)]
    with tempfile.TemporaryDirectory() as tmp:
        segments = ffmpeg.split(info, Path(tmp), p.segment_seconds)
        counts = [ffmpeg.count_held(info, segments, rule, deinterlace) for rule in rules]
    lines = [f"{src}: {info.frames} frames in {len(segments)} segments of ~{p.segment_seconds:g} s",
             "| reuse | frames computed | frames reused | model calls saved |",
             "| --- | ---: | ---: | ---: |", f"| off | {info.frames} | 0 | 1.00x |"]  # fmt: skip
    for rule, (frames, computed) in zip(rules, counts, strict=True):
        name = rule.mode + (f" (tolerance {rule.tolerance:g})" if rule.mode == "near" else "")
        lines.append(f"| {name} | {computed} | {frames - computed} | {frames / max(computed, 1):.2f}x |")
    lines.append(f"remaster.reuse is {p.reuse}")
    return "\n".join(lines)
