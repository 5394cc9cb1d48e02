"""A remaster job's segments: its work folder's key and lock, the split, the upscale, the join.

Each finished segment stays under ``OUTPUT.parts/<key>/``, where the key hashes what the
segment's bytes depend on, so a killed run started again with the same command redoes only what
was unfinished. Segments are upscaled as Prefect tasks, on the flow's task runner.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.futures import as_completed, wait

from flows.runners import ModelSpec, runs_in_process, upscaler, worker_name
from remaster.commandline import progress_bar
from remaster.config import RemasterParams
from remaster.files import sha256_file, write_json
from remaster.video import ffmpeg, probe
from remaster.video.reuse import NO_REUSE, ReuseRule

FORMAT = "remaster-video/1"  # in every segment key: bump it when the same inputs would give other bytes


def segment_key(input_sha: str, model_sha: str, p: RemasterParams, pix_fmt: str) -> str:
    """What a finished segment depends on; a change in any of it starts afresh."""
    keyed: dict[str, object] = {"format": FORMAT, "input": input_sha, "model": model_sha, "pix_fmt": pix_fmt}
    keyed.update(
        {k: getattr(p, k) for k in ("scale", "codec", "crf", "preset", "segment_seconds", "deinterlace")}
    )
    if p.reuse != "off":  # reused frames change the bytes; keys made before reuse existed stay valid
        keyed.update({"reuse": p.reuse, "reuse_tolerance": p.reuse_tolerance})
    return hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:16]


@contextlib.contextmanager
def locked(parts: Path) -> Iterator[None]:
    """One run per output: ``OUTPUT.parts/.lock``, held with ``flock``, names its holder. The lock
    goes with its process, so a killed run's lock never blocks: only its note stays, and the next
    run overwrites it."""
    parts.mkdir(parents=True, exist_ok=True)
    with open(parts / ".lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "a run that has not written its name yet"
            raise RuntimeError(f"another remaster run is writing {parts.with_suffix('')}: {holder}") from None
        f.seek(0)
        f.truncate()
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        f.write(f"pid {os.getpid()} on {socket.gethostname()}, started {started}: {' '.join(sys.argv)}\n")
        f.flush()
        for stale in parts.rglob(".*.tmp-*"):  # half-written by a run that was killed
            stale.unlink()
        yield


def plan_segments(info: probe.VideoInfo, work: Path, seconds: float) -> list[ffmpeg.Segment]:
    """The split, or the one an earlier run of the same job made (its frames were counted then)."""
    plan = work / "plan.json"
    if plan.exists():
        segments = [ffmpeg.Segment(**{**d, "pts": tuple(d["pts"])}) for d in json.loads(plan.read_text())]
        if all(Path(s.path).exists() for s in segments):
            return segments
    segments = ffmpeg.split(info, (work / "src").resolve(), seconds)
    write_json(plan, [dataclasses.asdict(s) for s in segments])
    return segments


def reassemble(
    info: probe.VideoInfo, parts: list[Path], segments: list[ffmpeg.Segment], muxed: Path, codec: str
) -> Path:
    joined = muxed.with_name("joined.mkv")
    ffmpeg.concat(parts, [s.duration for s in segments], joined)
    ffmpeg.mux(joined, info, muxed, codec)
    joined.unlink()
    return muxed


def upscale_segment(
    seg: ffmpeg.Segment,
    dst: Path,
    info: probe.VideoInfo,
    model: ModelSpec,
    enc: ffmpeg.Encode,
    *,
    deinterlace: bool = False,
    batch: int = 4,
    progress: Callable[[int, int], object] | None = None,
    keep_frames: Path | None = None,
    reuse: ReuseRule = NO_REUSE,
) -> ffmpeg.SegmentResult:
    """``ffmpeg.upscale_segment`` with the model ``model`` names, loaded once per process (the
    flow's, or a Dask worker's)."""
    if not Path(seg.path).exists():
        raise FileNotFoundError(
            f"{seg.path} is not visible on {worker_name()}: Dask workers need the output's folder "
            "at the same path (a shared filesystem)"
        )
    if sha256_file(model.path) != model.sha256:
        raise RuntimeError(
            f"the model file {model.path} changed during the run (its sha256 is no longer "
            f"{model.sha256[:12]}...): segments made with two models would not match; run the same "
            "command again to start over with the new file"
        )
    up = upscaler(model)
    return ffmpeg.upscale_segment(
        seg, dst, info, up.upscale_frames, model.scale, enc,
        deinterlace=deinterlace, batch=batch, progress=progress, keep_frames=keep_frames, reuse=reuse,
    )  # fmt: skip


split_task = task(name="split", cache_policy=NO_CACHE)(plan_segments)
upscale_task = task(
    name="upscale-segment", task_run_name="upscale-segment-{seg.index}", cache_policy=NO_CACHE
)(upscale_segment)
reassemble_task = task(name="reassemble", cache_policy=NO_CACHE)(reassemble)


def upscale_all(
    segments: list[ffmpeg.Segment],
    work: Path,
    info: probe.VideoInfo,
    model: ModelSpec,
    p: RemasterParams,
    enc: ffmpeg.Encode,
    deinterlace: bool,
    keep_frames: Path | None,
) -> tuple[list[Path], int, int, int]:
    """Upscale every unfinished segment as a task; (segment outputs, segments kept from an earlier
    run, frames upscaled, of which computed by the model)."""
    logger = get_run_logger()
    ctx = FlowRunContext.get()
    runner = ctx.task_runner if ctx else None
    live = runs_in_process(runner)  # tasks in this process can move the progress bar as they go
    if p.runner == "dask" and live:
        logger.warning(
            "remaster.runner is dask, but this run has %s: see with_workers()", type(runner).__name__
        )
    (work / "out").mkdir(exist_ok=True)
    # absolute: a Dask worker's working directory is its own
    dsts = [(work / "out").resolve() / f"seg_{s.index:05d}.mkv" for s in segments]
    # a finished segment has its final name (it is renamed only when whole) and all its frames
    todo = [(s, d) for s, d in zip(segments, dsts, strict=True) if probe.count_packets(d) != s.frames]
    reused = len(segments) - len(todo)
    logger.info("%d segments: %d reused from an earlier run, %d to upscale", len(segments), reused, len(todo))
    frames = sum(s.frames for s, _ in todo)
    bar = progress_bar(info.frames, initial=info.frames - frames, unit="frame", log=logger)
    counts = [0, 0]  # frames computed, reused in this run

    def tick(n: int, computed: int) -> None:
        counts[0] += computed
        counts[1] += n - computed
        if p.reuse != "off":
            bar.set_postfix_str(f"{counts[0]} computed, {counts[1]} reused", refresh=False)
        bar.update(n)

    with bar:
        kwargs: dict[str, Any] = {
            "deinterlace": deinterlace,
            "batch": p.batch,
            "progress": tick if live else None,
            "keep_frames": keep_frames,
            "reuse": ReuseRule(p.reuse, p.reuse_tolerance),
        }
        futures = [upscale_task.submit(s, d, info, model, enc, **kwargs) for s, d in todo]
        try:
            if live:
                wait(futures)
            else:  # a worker process cannot reach this bar: count each segment as it finishes
                frames_of = {f.task_run_id: s.frames for f, (s, _) in zip(futures, todo, strict=True)}
                for future in as_completed(futures):
                    bar.update(frames_of[future.task_run_id])
        except BaseException:
            for future in futures:  # a stop: segments not yet started never start
                wrapped = getattr(future, "wrapped_future", None)
                if wrapped is not None:
                    wrapped.cancel()
            raise
        # the first failure fails the run; the finished segments stay for the next
        computed = sum(future.result().computed for future in futures)
    if p.reuse != "off" and frames:
        logger.info("%d frames upscaled: %d computed by the model, %d reused held frames (%.2fx fewer calls)",
                    frames, computed, frames - computed, frames / max(computed, 1))  # fmt: skip
    return dsts, reused, frames, computed
