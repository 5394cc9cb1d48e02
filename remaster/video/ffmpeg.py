"""ffmpeg for the video remaster: split, upscale through pipes, concat, mux (checked by
``remaster.video.verify``).

Every command is built as an ffmpeg-python graph and compiled to an argument list (never a shell
string), which ``remaster.stopping`` runs, so that a stop can end every child. Every step checks
what it made: a dropped frame silently desynchronises the audio, so frames are counted at the
split, at the upscale and at the end, and any mismatch raises with the reason.

Frames travel as raw rgb24 through pipes, which carry no timestamps. Each segment's encoder
rebuilds them from the source's own frame timestamps (a ``setpts`` expression over the runs of
equal frame durations), and the concat list gives each segment its exact source duration, so a
VFR source keeps its timing and the audio, copied untouched, stays in sync.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import ffmpeg as ffmpeg_python  # the ffmpeg-python package (this module shares its name)
import numpy as np

from remaster import stopping
from remaster.files import atomic_path
from remaster.video.probe import (
    BT601,
    DEFAULT_TAGS,
    SCALE_MATRIX,
    Colour,
    VideoError,
    VideoInfo,
    count_packets,
    ffmpeg_args,
    frame_pass,
    run_ffmpeg,
    tail_text,
)
from remaster.video.reuse import NO_REUSE, HeldFrames, ReuseRule

log = logging.getLogger(__name__)


class VerifyError(RuntimeError):
    """The finished file does not match its source."""


@dataclass(frozen=True)
class Segment:
    """A stream copy of source frames [first, first + frames), cut at a keyframe."""

    index: int
    path: str
    first: int
    frames: int
    pts: tuple[int, ...]  # its frames' times from its first frame, in the source's time base
    duration: float  # s, from its first frame to the next segment's (the last: to the end)


def check_accounting(total: int, counts: Sequence[int]) -> None:
    """Segment frame counts must add up to the source's, or frames went missing at a cut."""
    if sum(counts) != total:
        raise VideoError(
            f"split frames do not add up: the segments hold {sum(counts)} {list(counts)}, the source "
            f"{total}. It may have open GOPs that cannot be cut there; --segment-seconds 0 keeps it whole."
        )


def split_cmd(info: VideoInfo, out_dir: Path, seconds: float) -> list[str]:
    """ffmpeg copying the video stream to ``out_dir/seg_%05d.mkv``, cut at keyframes every ~``seconds``."""
    # genpts: an MPEG program stream (a DVD's .vob, .mpg) leaves some packets without a pts, which
    # the matroska muxer refuses; ffmpeg fills them in from the frame order.
    video = ffmpeg_python.input(info.path, fflags="+genpts")[str(info.index)]
    graph = video.output(
        str(out_dir / "seg_%05d.mkv"),
        c="copy",
        format="segment",
        segment_time=f"{seconds:.3f}" if seconds > 0 else "99999999",
        reset_timestamps=1,
        segment_format="matroska",
    )
    return ffmpeg_args(graph)


def split(info: VideoInfo, out_dir: Path, seconds: float) -> list[Segment]:
    """Cut the video stream at keyframes every ~``seconds`` (0: one segment) by stream copy."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("seg_*.mkv"):
        old.unlink()
    run_ffmpeg(split_cmd(info, out_dir, seconds), f"splitting {info.path}")
    paths = sorted(out_dir.glob("seg_*.mkv"))
    passes = [frame_pass(p, "v:0") for p in paths]
    if seconds > 0 and len(paths) > 1 and sum(len(f.pts) for f in passes) != info.frames:
        # Open GOPs (common on DVDs): the B-frames before a cut's keyframe need the GOP before it,
        # so a segment loses them. One segment keeps every frame; it only resumes as a whole.
        log.warning(
            "%s: cutting at keyframes loses frames (open GOPs); splitting it as one segment", info.path
        )
        return split(info, out_dir, 0)
    check_accounting(info.frames, [len(f.pts) for f in passes])
    half_frame = float(info.tb * info.last_duration) / 2
    segments, first, tb = [], 0, info.tb
    for i, (path, seg) in enumerate(zip(paths, passes, strict=True)):
        n = len(seg.pts)
        rel = tuple(t - info.pts[first] for t in info.pts[first : first + n])
        end = info.pts[first + n] if first + n < info.frames else info.pts[-1] + info.last_duration
        # Each segment's frames must sit where the source's do: a shift means frames moved at the cut.
        drift = max(abs((s - seg.pts[0]) * seg.tb - r * tb) for s, r in zip(seg.pts, rel, strict=True))
        if drift > max(0.002, half_frame):
            raise VideoError(
                f"segment {i} of {info.path}: its frames are {float(drift):.3f} s off the source's"
            )
        segments.append(Segment(i, str(path), first, n, rel, float((end - info.pts[first]) * tb)))
        first += n
    return segments


def source_matrix(info: VideoInfo) -> str:
    """The matrix the source's YCbCr was made with: its tag, or the usual guess for its height."""
    if info.colour.matrix in SCALE_MATRIX:
        return info.colour.matrix
    if info.height >= 720:
        return "bt709"
    return "bt470bg" if info.height in (288, 576) else "smpte170m"


def colour_range(info: VideoInfo) -> str:
    rgb = info.pix_fmt.startswith(("rgb", "bgr", "gbr", "argb", "abgr", "pal"))
    return "pc" if info.colour.range == "pc" and not rgb else "tv"


def output_colour(info: VideoInfo, out_height: int) -> Colour:
    """BT.601 upscaled to HD becomes BT.709 (what HD players assume); otherwise the source's, kept.

    Primaries are re-tagged, not gamut-mapped: SMPTE 170M and BT.709 primaries differ slightly.
    """
    matrix = source_matrix(info)
    if matrix in BT601 and out_height >= 720:
        return Colour("bt709", "bt709", "bt709", colour_range(info))
    prim, trc = DEFAULT_TAGS.get(matrix, ("unknown", "unknown"))
    c = info.colour
    prim = c.primaries if c.primaries not in ("unknown", "reserved") else prim
    trc = c.transfer if c.transfer not in ("unknown", "reserved") else trc
    return Colour(matrix, prim, trc, colour_range(info))


@dataclass(frozen=True)
class Encode:
    codec: str = "libx264"
    crf: int = 18
    preset: str = "medium"
    pix_fmt: str = "yuv420p"


def resolve_pix_fmt(requested: str, info: VideoInfo) -> str:
    """``auto``: 10-bit output for a deeper source (the model is 8-bit, but 10 bits spare the banding)."""
    if requested != "auto":
        return requested
    return "yuv420p10le" if info.bit_depth > 8 else "yuv420p"


def output_size(info: VideoInfo, scale: int) -> tuple[int, int]:
    """The upscaled display size, padded to even sides for 4:2:0 (only odd scales ever need it)."""
    w, h = info.display_size
    return w * scale + (w * scale) % 2, h * scale + (h * scale) % 2


def decode_filters(video: Any, info: VideoInfo, deinterlace: bool) -> Any:
    """``video`` (an ffmpeg-python stream) deinterlaced (one frame per frame), rotated upright and
    turned from YCbCr to rgb24 with the source's matrix."""
    if deinterlace:
        video = video.filter("bwdif", mode="send_frame", parity="auto", deint="all")
    if info.rotation in (90, 270):
        video = video.filter("transpose", dir="clock" if info.rotation == 90 else "cclock")
    elif info.rotation == 180:
        video = video.filter("hflip").filter("vflip")
    matrix, rng = SCALE_MATRIX[source_matrix(info)], colour_range(info)
    flags = "accurate_rnd+full_chroma_int"
    video = video.filter("scale", in_color_matrix=matrix, in_range=rng, flags=flags)
    return video.filter("format", pix_fmts="rgb24")


def pts_expression(pts: Sequence[int]) -> str:
    """A setpts expression giving frame N the time ``pts[N]``: one clipped ramp per run of equal steps."""
    deltas = [b - a for a, b in itertools.pairwise(pts)]
    terms, i = [], 0
    while i < len(deltas):
        j = i
        while j + 1 < len(deltas) and deltas[j + 1] == deltas[i]:
            j += 1
        terms.append(f"{deltas[i]}*clip(N-{i},0,{j - i + 1})")
        i = j + 1
    return "+".join(terms) or "0"


RUN_TERMS_MAX = 24  # past this many runs, ffmpeg's expression parser may fail ("Cannot allocate memory")


def rounded_rate_expression(info: VideoInfo, seg: Segment) -> str | None:
    """For a source whose times are a constant rate rounded to its time base (Matroska's 1 ms at
    23.976 fps gives 42, 42, 41, 42, ... ms): frame k of the source at round(k * D), D = 1 / (rate
    * tb), as one exact integer expression for ``seg``; None if no usual rate fits its frames."""
    if not info.pts:
        return None
    first = seg.first
    rel = [p - info.pts[0] for p in info.pts[first : first + seg.frames]]  # from the source's start
    for text in (info.r_frame_rate, info.avg_frame_rate, "24000/1001", "30000/1001", "60000/1001"):
        try:
            rate = Fraction(text)
        except (ValueError, ZeroDivisionError):
            continue
        if rate <= 0:
            continue
        d = 1 / (rate * info.tb)
        num, den = d.numerator, d.denominator
        if all((2 * k * num + den) // (2 * den) == r for k, r in enumerate(rel, start=first)):
            start = (2 * first * num + den) // (2 * den)
            return f"floor((2*(N+{first})*{num}+{den})/{2 * den})-{start}"
    return None


def segment_pts(info: VideoInfo, seg: Segment) -> str:
    """The setpts expression for ``seg``: runs of equal steps, or a rounded constant rate when the
    runs are too many for ffmpeg's parser."""
    expr = pts_expression(seg.pts)
    if expr.count("clip(") > RUN_TERMS_MAX and (rounded := rounded_rate_expression(info, seg)):
        return rounded
    return expr


def encode_cmd(dst: Path, info: VideoInfo, seg: Segment, scale: int, enc: Encode) -> list[str]:
    """ffmpeg reading rgb24 frames on stdin and writing ``dst`` with the source's frame times."""
    w, h = info.display_size
    out_w, out_h = output_size(info, scale)
    colour, rate, tb = output_colour(info, out_h), info.frame_rate, info.tb
    size, fps = f"{w * scale}x{h * scale}", f"{rate.numerator}/{rate.denominator}"
    video = ffmpeg_python.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=size, framerate=fps)
    video = video.filter("settb", expr=f"{tb.numerator}/{tb.denominator}")
    video = video.filter("setpts", expr=segment_pts(info, seg))
    if (out_w, out_h) != (w * scale, h * scale):
        video = video.filter("pad", width=out_w, height=out_h)
    if info.sar not in ("1:1", "0:1", "N/A", ""):
        video = video.filter("setsar", r=info.sar.replace(":", "/"))
    matrix = SCALE_MATRIX[colour.matrix]
    video = video.filter("scale", out_color_matrix=matrix, out_range=colour.range, flags="accurate_rnd")
    video = video.filter("format", pix_fmts=enc.pix_fmt)
    opts: dict[str, object] = {"fps_mode": "passthrough", "c:v": enc.codec, "preset": enc.preset}
    # the encoder keeps the source's time base: its default, 1/frame rate, would round VFR times
    opts.update(enc_time_base=f"{tb.numerator}/{tb.denominator}", crf=enc.crf)
    if enc.codec == "libx265":
        opts["x265-params"] = "log-level=error"
    tags = {"colorspace": colour.matrix, "color_primaries": colour.primaries, "color_trc": colour.transfer}
    opts.update({opt: value for opt, value in tags.items() if value != "unknown"})
    graph = video.output(str(dst), format="matroska", color_range=colour.range, **opts)
    return ffmpeg_args(graph, overwrite=True)


def decode_cmd(seg: Segment, info: VideoInfo, deinterlace: bool) -> list[str]:
    """ffmpeg writing ``seg``'s frames to stdout as rgb24, as the upscaler sees them."""
    video = ffmpeg_python.input(seg.path, noautorotate=None)["v:0"]  # None: a flag without a value
    graph = decode_filters(video, info, deinterlace).output(
        "pipe:", format="rawvideo", fps_mode="passthrough"
    )
    return ffmpeg_args(graph)


@dataclass(frozen=True)
class SegmentResult:
    frames: int  # written to the encoder
    computed: int  # of which went through the model; the rest repeat a held frame's output


def upscale_segment(
    seg: Segment,
    dst: Path,
    info: VideoInfo,
    upscale: Callable[[np.ndarray], np.ndarray],
    scale: int,
    enc: Encode,
    *,
    deinterlace: bool = False,
    batch: int = 4,
    progress: Callable[[int, int], object] | None = None,
    keep_frames: Path | None = None,
    reuse: ReuseRule = NO_REUSE,
) -> SegmentResult:
    """Decode ``seg`` to rgb24, ``upscale`` batches of (N, H, W, 3) uint8, encode to ``dst`` (atomic).

    With ``reuse`` on, a frame that repeats the last computed one (``remaster.video.reuse``) takes its
    output again instead of a model call; batches still fill with frames that need the model.
    ``progress(frames, computed)`` is called as frames go to the encoder.
    """
    w, h = info.display_size
    frame_bytes = w * h * 3
    held = HeldFrames(reuse)
    # Frames in order, each computed (its index in `todo`) or a repeat (None) of the last computed
    # one before it. A long hold is flushed every `most` frames, so memory stays bounded.
    order: list[int | None] = []
    todo: list[np.ndarray] = []
    most = max(4 * batch, 8)
    last: list[np.ndarray] = []  # the output of the last computed frame of an earlier flush
    done = 0

    def flush(encoder: subprocess.Popen[bytes]) -> bool:
        nonlocal done
        assert encoder.stdin is not None
        computed = len(todo)
        out = upscale(np.stack(todo)) if todo else None  # (N, H*s, W*s, 3)
        if out is not None and (out.shape != (len(todo), h * scale, w * scale, 3) or out.dtype != np.uint8):
            raise RuntimeError(f"the upscaler gave {out.shape} {out.dtype} for {len(todo)} frames of {w}x{h}")
        n = len(order)
        for j in order:
            if j is not None:
                assert out is not None
                last[:] = [np.ascontiguousarray(out[j])]  # (H*s, W*s, 3)
            try:
                encoder.stdin.write(last[0].data)
            except BrokenPipeError:
                return False  # the encoder died: its exit status and stderr say why
            if keep_frames is not None:
                save_frames(keep_frames, seg.first + done, last[0][None])
            done += 1
        order.clear()
        todo.clear()
        if progress is not None:
            progress(n, computed)
        return True

    # stderr goes to files: a full stderr pipe would block ffmpeg while we wait on its stdout.
    # stopping.spawn, not ffmpeg-python's run_async: the registry must own both children.
    with atomic_path(dst) as tmp, tempfile.TemporaryFile() as dec_err, tempfile.TemporaryFile() as enc_err:
        dec = stopping.spawn(decode_cmd(seg, info, deinterlace), stdout=subprocess.PIPE, stderr=dec_err)
        encoder = stopping.spawn(
            encode_cmd(tmp, info, seg, scale, enc), stdin=subprocess.PIPE, stderr=enc_err
        )
        assert dec.stdout is not None and encoder.stdin is not None
        try:
            alive = True
            while alive and (data := dec.stdout.read(frame_bytes)):
                if len(data) != frame_bytes:
                    raise RuntimeError(f"segment {seg.index}: the decoder stopped mid-frame")
                frame = np.frombuffer(data, np.uint8).reshape(h, w, 3)  # (H, W, 3)
                if held.repeats(frame):
                    order.append(None)
                else:
                    held.computed(frame)
                    order.append(len(todo))
                    todo.append(frame)
                if len(todo) == batch or len(order) >= most:
                    alive = flush(encoder)
            if alive and order:
                flush(encoder)
            with contextlib.suppress(BrokenPipeError):  # a dead encoder says why in its status
                encoder.stdin.close()
            if not alive:  # the encoder died: a decoder still writing frames must not block on us
                dec.stdout.close()
                dec.kill()
            # the encoder's status first: when it dies, the decoder is killed here, not at fault
            codes = {"encoding": (stopping.reap(encoder), enc_err), "decoding": (stopping.reap(dec), dec_err)}
        except BaseException:
            for proc in (dec, encoder):
                proc.kill()
                stopping.reap(proc)
            raise
        if stopping.stop_requested():
            raise RuntimeError(f"segment {seg.index} stopped: the run was told to stop")
        for what, (rc, err) in codes.items():
            if rc != 0:
                err.seek(0)
                msg = tail_text(err.read().decode(errors="replace"))
                raise RuntimeError(f"{what} segment {seg.index} failed (exit {rc}): {msg}")
        if done != seg.frames:
            raise RuntimeError(f"segment {seg.index}: {done} frames decoded, {seg.frames} expected")
        # ffmpeg can exit 0 after failed writes (a full disk): the file must hold every frame
        if (written := count_packets(tmp)) != done:
            raise RuntimeError(
                f"encoding segment {seg.index} wrote {max(written, 0)} of {done} frames to {dst.name} "
                "(a full disk or a broken encoder); the segment is not kept"
            )
    if reuse.mode != "off":
        log.info("segment %d: %d frames, %d computed, %d reused", seg.index, done, held.computed_frames,
                 held.reused_frames)  # fmt: skip
    return SegmentResult(done, held.computed_frames)


def count_held(
    info: VideoInfo, segments: Sequence[Segment], reuse: ReuseRule, deinterlace: bool = False
) -> tuple[int, int]:
    """What ``reuse`` would save, without the model: (frames, frames the model would compute)."""
    w, h = info.display_size
    frames = computed = 0
    for seg in segments:
        held = HeldFrames(reuse)
        with tempfile.TemporaryFile() as err:
            # stopping.spawn, not ffmpeg-python's run_async: the registry must own the child
            dec = stopping.spawn(decode_cmd(seg, info, deinterlace), stdout=subprocess.PIPE, stderr=err)
            assert dec.stdout is not None
            try:
                while data := dec.stdout.read(w * h * 3):
                    frame = np.frombuffer(data, np.uint8).reshape(h, w, 3)
                    if not held.repeats(frame):
                        held.computed(frame)
            finally:
                dec.stdout.close()
                rc = stopping.reap(dec)
            if rc != 0:
                err.seek(0)
                raise RuntimeError(
                    f"decoding segment {seg.index} failed (exit {rc}): {tail_text(err.read().decode())}"
                )
        frames += held.computed_frames + held.reused_frames
        computed += held.computed_frames
    return frames, computed


def save_frames(folder: Path, first: int, frames: np.ndarray) -> None:
    """(N, H, W, 3) uint8 -> ``folder/{first + i:06d}.png``, for inspection."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{first + i:06d}.png", compress_level=1)


def extract_frame(info: VideoInfo, frame: int, deinterlace: bool = False) -> np.ndarray:
    """One source frame as the upscaler sees it: (H, W, 3) uint8."""
    t = float((info.pts[frame] - info.pts[0]) * info.tb)
    video = ffmpeg_python.input(info.path, noautorotate=None)[str(info.index)]
    graph = decode_filters(video, info, deinterlace).output(
        "pipe:", ss=f"{t:.6f}", format="rawvideo", **{"frames:v": 1}
    )
    done = stopping.run(ffmpeg_args(graph))  # not ffmpeg-python's run: the registry must own the child
    if done.returncode != 0:
        raise RuntimeError(
            f"extracting frame {frame} failed (exit {done.returncode}): {tail_text(done.stderr.decode())}"
        )
    data = done.stdout
    w, h = info.display_size
    return np.frombuffer(data[: w * h * 3], np.uint8).reshape(h, w, 3).copy()


def concat(parts: Sequence[Path], durations: Sequence[float], dst: Path) -> None:
    """Join encoded segments by stream copy, each starting where its source segment started."""
    listing = dst.with_name(dst.name + ".ffconcat")
    lines = ["ffconcat version 1.0"]
    for part, duration in zip(parts, durations, strict=True):
        quoted = str(Path(part).resolve()).replace("'", "'\\''")
        lines += [f"file '{quoted}'", f"duration {duration:.6f}"]
    listing.write_text("\n".join(lines) + "\n")
    run_ffmpeg(concat_cmd(listing, dst), "joining the segments")
    listing.unlink()


def concat_cmd(listing: Path, dst: Path) -> list[str]:
    """ffmpeg copying the video of the segments an ffconcat ``listing`` names into ``dst``."""
    video = ffmpeg_python.input(str(listing), format="concat", safe=0)["v"]
    return ffmpeg_args(video.output(str(dst), c="copy", format="matroska"), overwrite=True)


def mux(video: Path, info: VideoInfo, dst: Path, codec: str = "libx264") -> None:
    """The new video plus every audio, subtitle, attachment and chapter of the source, copied as is."""
    try:
        run_ffmpeg(mux_cmd(video, info, dst, codec), "muxing")
    except RuntimeError as e:
        if dst.suffix.lower() == ".mkv":
            raise
        raise RuntimeError(f"{e}\n(.mkv holds any stream; {dst.suffix} may not hold all the source's)") from e


def mux_cmd(video: Path, info: VideoInfo, dst: Path, codec: str = "libx264") -> list[str]:
    """ffmpeg writing ``dst``: ``video``'s video, then every audio, subtitle and attachment stream,
    the chapters and the metadata of the source, all copied."""
    offset = info.video_start - info.start_time  # where the video starts among the source's streams
    new = ffmpeg_python.input(str(video), **({"itsoffset": f"{offset:.6f}"} if abs(offset) > 1e-6 else {}))
    source = ffmpeg_python.input(info.path)
    opts: dict[str, object] = {
        "map_chapters": 1,
        "map_metadata": 1,
        "c": "copy",
        "max_muxing_queue_size": 4096,
    }
    # Setting one disposition by hand stops ffmpeg marking streams default by itself: all stay as they were.
    opts.update({"metadata:s:v:0": f"language={info.language}", "disposition:v:0": info.disposition})
    if dst.suffix.lower() in (".mp4", ".m4v", ".mov"):
        opts.update({"movflags": "+faststart", **({"tag:v": "hvc1"} if codec == "libx265" else {})})
    # inputs are numbered in the order their streams are first given: the new video 0, the source 1
    streams = [new["v:0"], source["a?"], source["s?"], source["t?"]]  # every audio, subtitle and attachment
    return ffmpeg_args(ffmpeg_python.output(*streams, str(dst), **opts), overwrite=True)
