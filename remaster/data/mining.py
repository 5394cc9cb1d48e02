"""Training frames mined out of video: few, distinct, and the least compressed.

Anime repeats most of its frames (drawn on twos and threes, shots that hold still) and inter-frame
compression softens many of the rest, so an episode holds far fewer pictures worth learning from
than it has frames. ``mine`` finds them in passes that each hold a frame or two at most, so memory
does not grow with the length of the video:

1. ffprobe: the video stream (size, sample aspect, field order, colour), then its packets,
   demuxed and not decoded (pts, size, key flag). A file that cannot be read, is truncated, holds
   no video, or is too short or too small is rejected here, before anything is decoded.
2. Bars: ffmpeg's ``cropdetect`` over the keyframes (over a sample of every frame in a short video)
   finds the picture inside letterbox and pillarbox bars. The frame size after the crop and the
   square-pixel correction must pass ``min_side``.
3. Analysis: one decode with the loop filter skipped, scaled down to a small grey copy
   (``ANALYSIS_WIDTH`` wide) inside the crop, with each frame's type and packet position from
   ``showinfo``. ``Chooser`` sees one frame after another:

   - black (98% of the luma under ``black_level``), near-flat (luma deviation under ``flat_std``)
     and fading frames (the change from a neighbour is a global gain and offset) are skipped;
   - a scene cut (the grey histogram changes by more than ``scene_threshold`` into a usable
     frame), or the first frame after black ones, starts a new shot;
   - a hold is a run of frames within ``repeat_tolerance`` of its first one (mean luma
     difference); a cut ends it. Each hold offers one frame, its least compressed usable one:
     an I-frame, else the largest packet;
   - each window of ``60 / frames_per_minute`` seconds keeps at most one offer: one from a shot
     other than the last kept frame's first, then an I-frame, then the largest packet.

   Every decision is made on integer sums of 8-bit pixels and exact timestamps, so the same
   file and params always give the same frames.
4. Extraction (``extract``): each chosen frame is decoded at full size from the keyframe before it
   (a seek), deinterlaced where the source is interlaced, cropped and scaled to square pixels,
   in the source's colour matrix, as 8-bit RGB.

Every ffmpeg and ffprobe runs through ``remaster.stopping``, so a stop ends them.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import re
import subprocess
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import IO, Any

import ffmpeg as ffmpeg_python  # the ffmpeg-python package, which builds the ffmpeg command lines
import numpy as np

from remaster import stopping
from remaster.config import MiningParams
from remaster.video.probe import FFMPEG, FFPROBE, SCALE_MATRIX, TRUNCATION_SIGNS, as_int, idet, rotation_of

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = frozenset({".mp4", ".mkv", ".webm", ".avi", ".mov", ".ts", ".m2ts"})
ANALYSIS_WIDTH = 160  # the grey copy that repeats, cuts, fades, black and flat frames are judged on
HIST_BINS = 32
BLACK_SHARE = 0.02  # a frame is black when no more than this share of its luma is over black_level
FADE_MIN = 0.75  # RMS change (grey levels) from which a global gain and offset counts as fading ...
FADE_FIT = 0.5  # ... when they leave no more than this share of the change unexplained ...
FADE_CORR = 0.95  # ... and the two frames correlate at least this well (the same picture)
CROP_SAMPLES = 50  # frames cropdetect looks at in a video with few keyframes
MIN_KEYFRAMES = 20  # with fewer keyframes than this, cropdetect samples every frame instead
SEEK_MARGIN = Fraction(1)  # s before the keyframe where a container without an index is entered
ISO_BOXES = (b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"uuid")
QUIET = ("-hide_banner", "-nostdin", "-loglevel", "error")
_SHOWINFO = re.compile(
    r"\bn:\s*(\d+)\s+pts:\s*(-?\d+|NOPTS)\b.*?\bpos:\s*(-?\d+)\b.*?\bi:(\S)\s+iskey:(\d)\s+type:(\S+)"
)
_CROP = re.compile(r"crop=(-?\d+):(-?\d+):(-?\d+):(-?\d+)")


class Rejected(Exception):
    """A video that gives no frames, and why: ``reason`` is one word (``no_video_stream``,
    ``corrupt``, ``truncated``, ``too_small``, ``too_large``, ``too_short``, ``no_usable_frames``),
    the message adds the detail."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class Source:
    """The video stream of a file, as ffprobe describes it without decoding."""

    index: int  # absolute stream index
    format_name: str
    width: int  # as displayed (after any rotation), before cropping
    height: int
    sar: Fraction  # sample aspect ratio as displayed; 1 where unknown
    time_base: Fraction
    start: Fraction  # the container's start time, s
    frame_rate: Fraction  # nominal; 0 where unknown
    field_order: str
    matrix: str  # the scale filter's name for the YCbCr matrix
    full_range: bool
    seekable: bool  # the container has an index, so a seek lands on the keyframe asked for
    declared_frames: int  # the frame count the container declares; 0 where it declares none

    @property
    def frame_duration(self) -> Fraction:
        return 1 / self.frame_rate if self.frame_rate > 0 else Fraction(1, 1000)


class Packets:
    """The video stream's packets, demuxed and not decoded: each one's size by its byte position
    (or, where the demuxer gives none, by its pts), and how many are keyframes."""

    def __init__(self, pos: list[int], pts: list[int], size: list[int], keyframes: int) -> None:
        self.count, self.keyframes = len(size), keyframes
        sizes = np.array(size, np.int64)
        self._by = []
        for keys in (np.array(pos, np.int64), np.array(pts, np.int64)):
            order = np.argsort(keys, kind="stable")
            self._by.append((keys[order], sizes[order]))
        known = self._by[1][0][self._by[1][0] >= 0]
        self.pts_span = (int(known[0]), int(known[-1])) if known.size else None

    def size_of(self, pos: int, pts: int | None) -> int:
        """The size of the packet at byte ``pos`` (or else with ``pts``); 0 where unknown."""
        for (keys, sizes), value in zip(self._by, (pos, pts), strict=True):
            if value is None or value < 0:
                continue
            i = int(np.searchsorted(keys, value))
            if i < keys.size and keys[i] == value:
                return int(sizes[i])
        return 0


@dataclass(frozen=True)
class Plan:
    """How each decoded frame of a source becomes a training picture."""

    crop: tuple[int, int, int, int] | None  # w, h, x, y of the picture in the displayed frame
    width: int  # the picture's size once cropped and made square
    height: int
    square: bool  # scaled from a non-square sample aspect ratio
    deinterlace: bool = False

    @property
    def crop_text(self) -> str:
        return ":".join(map(str, self.crop)) if self.crop else ""


@dataclass(frozen=True)
class Frame:
    """A decoded frame, as the analysis saw it."""

    n: int  # decode-output (display) order
    pts: int  # in the stream's time base
    time: Fraction  # s from the container's start
    frame_type: str  # I, P, B (as the decoder reports it)
    key: bool
    packet_size: int  # bytes of its coded picture; 0 where unknown
    interlaced: bool  # flagged interlaced by the decoder
    seek: Fraction  # time of the keyframe at or before it, s from the container's start

    @property
    def intra(self) -> bool:
        return self.key or self.frame_type == "I"


@dataclass
class Stats:
    decoded: int = 0
    shots: int = 0
    holds: int = 0  # holds that offered a frame
    black: int = 0
    fading: int = 0
    flat: int = 0
    interlaced: int = 0  # frames the decoder flagged interlaced


@dataclass(frozen=True)
class Mined:
    """The frames chosen from one video, and how to make their pictures."""

    source: Source
    plan: Plan
    frames: tuple[Frame, ...]
    stats: Stats
    seconds: float  # the video stream's length

    def describe(self) -> str:
        s = self.stats
        skipped = f"skipped {s.black} black, {s.fading} fading, {s.flat} flat"
        return (
            f"mined {len(self.frames)} frame{'' if len(self.frames) == 1 else 's'} from {s.decoded} "
            f"over {self.seconds:.1f} s "
            f"({s.shots} shots, {s.holds} holds; {skipped})"
        )


# --- reading the file without decoding ------------------------------------------------------------


def _detail(stderr: str, path: Path) -> str:
    """The decoder's last complaint, without the path (the manifest names the file)."""
    lines = [line.strip() for line in stderr.replace(str(path), path.name).splitlines() if line.strip()]
    return lines[-1][-300:] if lines else "unreadable"


def _looks_like_iso_media(path: Path) -> bool:
    """Whether the file starts like an MP4/MOV box; a truncated one says 'moov atom not found'."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return False
    return len(head) == 8 and head[4:8] in ISO_BOXES


def _ratio(text: Any) -> Fraction:
    num, _, den = str(text or "").replace(":", "/").partition("/")
    n, d = as_int(num), as_int(den or "1")
    return Fraction(n, d) if n and d and n > 0 and d > 0 else Fraction(0)


def probe_source(path: Path) -> Source:
    """The first video stream of ``path``; ``Rejected`` if there is none or the file is unreadable."""
    if path.stat().st_size == 0:
        raise Rejected("corrupt", "empty file (0 bytes)")
    cmd = [FFPROBE, "-v", "error", "-show_format", "-show_streams", "-of", "json", str(path)]
    res = stopping.run(cmd, text=True)
    if res.returncode != 0:
        truncated = any(s in res.stderr for s in TRUNCATION_SIGNS) and (
            "moov atom not found" not in res.stderr or _looks_like_iso_media(path)
        )
        raise Rejected("truncated" if truncated else "corrupt", _detail(res.stderr, path))
    data = json.loads(res.stdout or "{}")
    fmt, streams = data.get("format") or {}, data.get("streams") or []
    videos = [
        s
        for s in streams
        if s.get("codec_type") == "video" and not (s.get("disposition") or {}).get("attached_pic")
    ]
    if not videos:
        kinds = sorted({str(s.get("codec_type")) for s in streams})
        raise Rejected("no_video_stream", f"only {', '.join(kinds)}" if kinds else "no streams")
    v = videos[0]
    width, height = as_int(v.get("width")) or 0, as_int(v.get("height")) or 0
    if width <= 0 or height <= 0:
        raise Rejected("corrupt", "the video stream has no frame size")
    sar = _ratio(v.get("sample_aspect_ratio")) or Fraction(1)
    if rotation_of(v) in (90, 270):
        width, height, sar = height, width, 1 / sar
    rate = _ratio(v.get("avg_frame_rate")) or _ratio(v.get("r_frame_rate"))
    space = v.get("color_space", "unknown")
    name = fmt.get("format_name", "")
    start = fmt.get("start_time")
    return Source(
        index=int(v["index"]),
        format_name=name,
        width=width,
        height=height,
        sar=sar,
        time_base=_ratio(v.get("time_base")) or Fraction(1, 1000),
        start=Fraction(start) if start not in (None, "N/A") else Fraction(0),
        frame_rate=rate,
        field_order=str(v.get("field_order", "unknown")),
        matrix=SCALE_MATRIX.get(space, "bt709" if height >= 720 else "smpte170m"),
        full_range=v.get("color_range") == "pc",
        seekable=any(k in name for k in ("mov", "mp4", "matroska", "webm", "avi")),
        declared_frames=as_int(v.get("nb_frames")) or 0,
    )


def read_packets(path: Path, src: Source) -> Packets:
    """Every packet of the video stream (demuxed only); ``Rejected`` when the file is cut short."""
    entries = "packet=pts,size,pos,flags"
    cmd = [FFPROBE, "-v", "error", "-select_streams", str(src.index), "-show_entries", entries]
    res = stopping.run([*cmd, "-of", "compact", str(path)], text=True)
    if any(s in res.stderr for s in TRUNCATION_SIGNS):
        raise Rejected("truncated", _detail(res.stderr, path))
    if res.returncode != 0:
        raise Rejected("corrupt", _detail(res.stderr, path))
    pos: list[int] = []
    pts: list[int] = []
    size: list[int] = []
    keys = 0
    for line in res.stdout.splitlines():
        section, _, rest = line.partition("|")
        if section != "packet":
            continue
        row = dict(kv.partition("=")[::2] for kv in rest.split("|"))
        p, t = as_int(row.get("pos")), as_int(row.get("pts"))
        pos.append(-1 if p is None else p)
        pts.append(-1 if t is None else t)
        size.append(as_int(row.get("size")) or 0)
        keys += "K" in row.get("flags", "")
    if not size:
        raise Rejected("corrupt", "the video stream holds no packets")
    return Packets(pos, pts, size, keys)


def span_seconds(src: Source, packets: Packets) -> Fraction:
    """From the first frame to the end of the last, from the packets' timestamps."""
    if packets.pts_span is None:
        return packets.count * src.frame_duration
    first, last = packets.pts_span
    return (last - first) * src.time_base + src.frame_duration


# --- the plan: bars, square pixels, interlacing ------------------------------------------------


def _command(graph: Any, *global_args: str) -> list[str]:
    return list(graph.global_args(*global_args).compile(FFMPEG))


def detect_crop(path: Path, src: Source, packets: Packets) -> tuple[int, int, int, int] | None:
    """The picture inside any black bars, as (w, h, x, y); None when there are none.

    cropdetect keeps the union of the picture areas of every frame it sees, so one bright frame
    reaching an edge keeps that edge. It looks at the keyframes, or, in a video with few of them,
    at about ``CROP_SAMPLES`` frames spread over it.
    """
    few_keys = packets.keyframes < MIN_KEYFRAMES
    inp = ffmpeg_python.input(str(path), **({} if few_keys else {"skip_frame": "nokey"}))
    video = inp[str(src.index)]
    if few_keys:
        step = max(1, packets.count // CROP_SAMPLES)
        video = video.filter("select", f"not(mod(n,{step}))")
    video = video.filter("cropdetect", round=2, skip=0, reset_count=0)
    graph = video.output("-", format="null")
    res = stopping.run(
        _command(graph, "-hide_banner", "-nostdin", "-nostats", "-loglevel", "info"), text=True
    )
    if res.returncode != 0:
        raise Rejected("corrupt", _detail(res.stderr, path))
    found = _CROP.findall(res.stderr)
    if not found:
        return None
    w, h, x, y = (int(v) for v in found[-1])
    if w <= 0 or h <= 0 or (w, h) == (src.width, src.height):
        return None  # every frame black, or no bars
    return w, h, x, y


def square_size(width: int, height: int, sar: Fraction, mode: str) -> tuple[int, int]:
    """The size with square pixels: ``shrink`` scales the denser axis down (no pixel is made up),
    ``stretch`` the sparser one up (as players display it), ``keep`` keeps the samples."""
    if mode == "keep" or sar == 1:
        return width, height
    wide = sar > 1  # each sample is wider than tall: the width is the sparser axis
    if mode == "shrink":
        return (width, max(1, round(height / sar))) if wide else (max(1, round(width * sar)), height)
    return (max(1, round(width * sar)), height) if wide else (width, max(1, round(height / sar)))


def is_interlaced(path: Path, src: Source, stats: Stats, mode: str) -> bool:
    """Deinterlace or not: ``on``/``off``, or (``auto``) the stream's field order, else the
    decoder's frame flags, else ffmpeg's interlace detector on a sample."""
    if mode != "auto":
        return mode == "on"
    if src.field_order in ("tt", "bb", "tb", "bt"):
        return True
    if src.field_order == "progressive":
        return False
    if stats.interlaced * 2 > stats.decoded:
        return True
    tff, bff, progressive = idet(path, src.index, frames=200)
    return tff + bff > progressive


# --- the analysis ---------------------------------------------------------------------------------


@dataclass
class _Look:
    """What one small grey frame shows, from exact integer sums."""

    frame: Frame
    grey: np.ndarray  # (h, w) uint8
    wide: np.ndarray  # the same as int64, for the sums
    hist: np.ndarray  # HIST_BINS counts
    black: bool
    flat: bool
    fading: bool = False
    cut: bool = False


def _fading(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether ``b`` is ``a`` under a global gain and offset (a fade, a flash), not a repeat."""
    n = a.size
    diff = a - b
    change = float((diff * diff).sum()) / n  # mean squared change
    if change < FADE_MIN * FADE_MIN:
        return False
    sa, sb = int(a.sum()), int(b.sum())
    saa = float(int((a * a).sum()) - sa * sa / n)
    sbb = float(int((b * b).sum()) - sb * sb / n)
    sab = float(int((a * b).sum()) - sa * sb / n)
    if saa <= 0 or sbb <= 0 or sab < FADE_CORR * math.sqrt(saa * sbb):
        return False
    unexplained = max(0.0, sbb - sab * sab / saa) / n  # the least-squares fit's mean squared residual
    return unexplained <= FADE_FIT * FADE_FIT * change


class Chooser:
    """The frames of one video worth keeping, decided as the small grey frames stream past.

    Call ``add`` for each decoded frame in order, then ``finish``; ``chosen`` holds the frames
    kept so far. Memory holds two frames and one offer per open hold and window, whatever the length.
    """

    def __init__(self, params: MiningParams) -> None:
        self.p = params
        self.window = Fraction(60) / Fraction(params.frames_per_minute)
        self.stats = Stats()
        self.chosen: list[Frame] = []
        self._t0: Fraction | None = None
        self._prev: _Look | None = None  # the last frame added, not yet decided (one-frame lookahead)
        self._shot = -1
        self._after_black = False
        self._anchor: np.ndarray | None = None
        self._hold_best: Frame | None = None
        self._hold_shot = -1
        self._window: int | None = None
        self._window_best: tuple[tuple[Any, ...], Frame, int] | None = None
        self._last_kept_shot = -1

    def add(self, frame: Frame, grey: np.ndarray) -> None:
        if self._t0 is None:
            self._t0 = frame.time
        self.stats.decoded += 1
        self.stats.interlaced += frame.interlaced
        wide = grey.astype(np.int64)
        n = grey.size
        total = int(wide.sum())
        var = int((wide * wide).sum()) / n - (total / n) ** 2
        look = _Look(
            frame,
            grey,
            wide,
            np.bincount((grey >> 3).ravel(), minlength=HIST_BINS),
            black=int(np.count_nonzero(grey > self.p.black_level)) <= BLACK_SHARE * n,
            flat=var < self.p.flat_std * self.p.flat_std,
        )
        prev = self._prev
        if prev is not None:
            look.cut = int(np.abs(look.hist - prev.hist).sum()) > 2 * self.p.scene_threshold * n
            if _fading(prev.wide, wide):
                prev.fading = look.fading = True
            self._decide(prev)
        self._prev = look

    def finish(self) -> list[Frame]:
        if self._prev is not None:
            self._decide(self._prev)
            self._prev = None
        self._close_hold()
        self._close_window()
        return self.chosen

    def _decide(self, look: _Look) -> None:
        s = self.stats
        usable = not (look.black or look.fading or look.flat)
        if look.black:
            s.black += 1
        elif look.fading:
            s.fading += 1
        elif look.flat:
            s.flat += 1
        # a fade shifts the histogram as much as a cut; the black after it ends the shot instead
        new_shot = self._shot < 0 or (look.cut and usable) or (self._after_black and not look.black)
        self._after_black = look.black
        if new_shot:
            self._shot += 1
            s.shots += 1
        tol_sum = self.p.repeat_tolerance * look.grey.size
        if (
            new_shot
            or self._anchor is None
            or self._anchor.shape != look.wide.shape
            or int(np.abs(look.wide - self._anchor).sum()) > tol_sum
        ):
            self._close_hold()
            self._anchor = look.wide
        if usable:
            best = self._hold_best
            f = look.frame
            if best is None or (f.intra, f.packet_size) > (best.intra, best.packet_size):
                self._hold_best = f
            self._hold_shot = self._shot

    def _close_hold(self) -> None:
        best, self._hold_best = self._hold_best, None
        if best is None:
            return
        self.stats.holds += 1
        assert self._t0 is not None
        window = math.floor((best.time - self._t0) / self.window)
        if self._window is not None and window != self._window:
            self._close_window()
        self._window = window
        shot = self._hold_shot
        rank = (shot != self._last_kept_shot, best.intra, best.packet_size, -best.n)
        if self._window_best is None or rank > self._window_best[0]:
            self._window_best = (rank, best, shot)

    def _close_window(self) -> None:
        if self._window_best is not None:
            _, frame, shot = self._window_best
            self.chosen.append(frame)
            self._last_kept_shot = shot
        self._window_best = None


def analysis_size(plan: Plan, src: Source) -> tuple[int, int]:
    w, h = plan.crop[:2] if plan.crop else (src.width, src.height)
    aw = min(ANALYSIS_WIDTH, w - w % 2) or 2
    ah = max(2, round(aw * h * src.sar.denominator / (w * src.sar.numerator) / 2) * 2)
    return aw, ah


def analysis_command(path: Path, src: Source, plan: Plan) -> list[str]:
    """ffmpeg decoding every frame (loop filter skipped) to a small grey copy of the picture on
    stdout, with ``showinfo`` naming each frame on stderr."""
    aw, ah = analysis_size(plan, src)
    video = ffmpeg_python.input(str(path), skip_loop_filter="all")[str(src.index)]
    if plan.crop:
        w, h, x, y = plan.crop
        video = video.crop(x, y, w, h)
    rng = {"in_range": "full"} if src.full_range else {}
    video = video.filter("scale", aw, ah, flags="area", out_range="full", **rng)
    video = video.filter("format", "gray").filter("showinfo")
    graph = video.output("pipe:", format="rawvideo", pix_fmt="gray", fps_mode="passthrough")
    return _command(graph, "-hide_banner", "-nostdin", "-nostats", "-loglevel", "info", "-copyts")


def _read_showinfo(stream: IO[bytes], out: queue.Queue[tuple[str, ...] | None], tail: deque[str]) -> None:
    try:
        for raw in stream:
            line = raw.decode("utf-8", errors="replace")
            m = _SHOWINFO.search(line) if "showinfo" in line else None
            if m:
                out.put(m.groups())
            elif line.strip():
                tail.append(line.strip())
    finally:
        out.put(None)


def frames(path: Path, src: Source, plan: Plan, packets: Packets) -> Iterator[tuple[Frame, np.ndarray]]:
    """Every decoded frame with its small grey copy, (h, w) uint8, one at a time.

    Raises ``Rejected`` when ffmpeg fails or the file turns out cut short.
    """
    aw, ah = analysis_size(plan, src)
    nbytes = aw * ah
    proc = stopping.spawn(analysis_command(path, src, plan), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    infos: queue.Queue[tuple[str, ...] | None] = queue.Queue()
    tail: deque[str] = deque(maxlen=40)
    reader = threading.Thread(target=_read_showinfo, args=(proc.stderr, infos, tail), daemon=True)
    reader.start()
    seek: Fraction | None = None
    try:
        while True:
            buf = proc.stdout.read(nbytes)
            if len(buf) < nbytes:
                break
            info = infos.get()
            if info is None:
                raise Rejected("corrupt", "ffmpeg gave a frame it did not describe")
            n, pts_text, pos, interlace, key, kind = info
            if pts_text == "NOPTS":
                continue  # a frame without a timestamp cannot be found again
            pts = int(pts_text)
            time = pts * src.time_base - src.start
            if key == "1" or seek is None:
                seek = time
            frame = Frame(
                n=int(n),
                pts=pts,
                time=time,
                frame_type=kind,
                key=key == "1",
                packet_size=packets.size_of(int(pos), pts),
                interlaced=interlace in ("T", "B"),
                seek=seek,
            )
            yield frame, np.frombuffer(buf, np.uint8).reshape(ah, aw)
    finally:
        if proc.poll() is None:
            proc.kill()
        rc = stopping.reap(proc)
        reader.join()
    errors = "\n".join(tail)
    if any(s in errors for s in TRUNCATION_SIGNS):
        raise Rejected("truncated", _detail(errors, path))
    if rc != 0:
        raise Rejected("corrupt", _detail(errors, path))


# --- the whole of it ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    min_side: int
    max_pixels: int


def plan_source(path: Path, params: MiningParams, limits: Limits) -> tuple[Source, Packets, Plan, Fraction]:
    """Everything decided before the analysis decode; ``Rejected`` for a video not worth it."""
    src = probe_source(path)
    full = square_size(src.width, src.height, src.sar, params.square_pixels)
    if min(full) < limits.min_side:
        raise Rejected("too_small", f"short side {min(full)} < {limits.min_side}")
    packets = read_packets(path, src)
    declared = src.declared_frames
    if declared and declared - packets.count > max(2, declared // 100):
        raise Rejected("truncated", f"{packets.count} of the {declared} frames its header declares")
    seconds = span_seconds(src, packets)
    if seconds < Fraction(params.min_seconds):
        raise Rejected("too_short", f"{float(seconds):.2f} s < {params.min_seconds:g} s")
    crop = detect_crop(path, src, packets) if params.crop else None
    w, h = crop[:2] if crop else (src.width, src.height)
    width, height = square_size(w, h, src.sar, params.square_pixels)
    if min(width, height) < limits.min_side:
        raise Rejected("too_small", f"short side {min(width, height)} < {limits.min_side} after cropping")
    if width * height > limits.max_pixels:
        raise Rejected("too_large", f"{width}x{height} is over {limits.max_pixels} pixels")
    plan = Plan(crop, width, height, square=(width, height) != (w, h))
    return src, packets, plan, seconds


def mine(path: Path, params: MiningParams, limits: Limits) -> Mined:
    """Choose the frames of ``path`` worth training on (``extract`` makes their pictures).

    Raises ``Rejected`` with the reason for a video that gives none.
    """
    src, packets, plan, seconds = plan_source(path, params, limits)
    chooser = Chooser(params)
    for frame, grey in frames(path, src, plan, packets):
        chooser.add(frame, grey)
    chosen = chooser.finish()
    stats = chooser.stats
    if stats.decoded == 0:
        raise Rejected("corrupt", "no frame decodes")
    if not chosen:
        raise Rejected("no_usable_frames", f"all {stats.decoded} frames are black, fading or flat")
    deinterlace = is_interlaced(path, src, stats, params.deinterlace)
    plan = Plan(plan.crop, plan.width, plan.height, plan.square, deinterlace)
    return Mined(src, plan, tuple(chosen), stats, float(seconds))


def extract_command(path: Path, mined: Mined, frame: Frame, seek: Fraction | None) -> list[str]:
    """ffmpeg writing one frame at full size to stdout as rgb24: entered at ``seek`` (s from the
    container's start; None: from the start), deinterlaced, cropped and made square."""
    src, plan = mined.source, mined.plan
    inp = ffmpeg_python.input(str(path), **({"ss": f"{float(seek):.6f}"} if seek else {}))
    video = inp[str(src.index)]
    if plan.deinterlace:  # before the select, so the chosen frame has its neighbours' fields
        video = video.filter("bwdif", mode="send_frame", parity="auto", deint="all")
    at, half = frame.pts * src.time_base, src.frame_duration / 4
    video = video.filter("select", f"between(t,{float(at - half):.6f},{float(at + half):.6f})")
    if plan.crop:
        w, h, x, y = plan.crop
        video = video.crop(x, y, w, h)
    flags = "lanczos+accurate_rnd+full_chroma_int"
    rng = "pc" if src.full_range else "tv"
    video = video.filter(
        "scale", plan.width, plan.height, flags=flags, in_color_matrix=src.matrix, in_range=rng
    ).filter("format", "rgb24")
    graph = video.output("pipe:", format="rawvideo", fps_mode="passthrough", **{"frames:v": 1})
    return _command(graph, *QUIET, "-copyts", "-filter_threads", "1")


def extract(path: Path, mined: Mined, frame: Frame) -> np.ndarray:
    """``frame`` at full size as (H, W, 3) uint8 RGB, the same bytes every time."""
    src, plan = mined.source, mined.plan
    nbytes = plan.width * plan.height * 3
    entry = frame.seek if src.seekable else frame.seek - SEEK_MARGIN
    tries = [entry, None] if entry > 0 else [None]
    err = ""
    for seek in tries:
        res = stopping.run(extract_command(path, mined, frame, seek))
        if res.returncode == 0 and len(res.stdout) == nbytes:
            return np.frombuffer(res.stdout, np.uint8).reshape(plan.height, plan.width, 3)
        err = res.stderr.decode(errors="replace")
        log.debug("frame %d of %s not found entering at %s: %s", frame.n, path, seek, err[-300:])
    raise Rejected("corrupt", f"the frame at {float(frame.time):.3f} s does not decode again: {err[-200:]}")


def mined_frames(path: Path, mined: Mined) -> Iterator[tuple[Frame, np.ndarray]]:
    """Each chosen frame with its picture, one at a time."""
    for frame in mined.frames:
        yield frame, extract(path, mined, frame)
