"""What is in a media file, from ffprobe and one decode pass: streams, timing, colour,
interlacing, packet counts and stream hashes. ``remaster.video.ffmpeg`` builds the remaster on it.

Every call is an argument list, never a shell string: ffmpeg's are built as ffmpeg-python graphs
(``ffmpeg_args``), ffprobe's are written out. A source that cannot be remastered raises
``VideoError`` with the reason.
"""

from __future__ import annotations

import itertools
import json
import re
import statistics
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, NamedTuple

import ffmpeg as ffmpeg_python  # the ffmpeg-python package, which builds the ffmpeg command lines

from remaster import stopping

FFMPEG = "ffmpeg"
FFPROBE = "ffprobe"
QUIET = ("-hide_banner", "-nostdin", "-loglevel", "error")
TRUNCATION_SIGNS = ("partial file", "ended prematurely", "moov atom not found")
# ffprobe's colour-matrix names -> the scale filter's names for the same matrices
SCALE_MATRIX = {
    "bt709": "bt709",
    "smpte170m": "smpte170m",
    "bt470bg": "bt470",
    "bt2020nc": "bt2020",
    "bt2020c": "bt2020",
    "fcc": "fcc",
    "smpte240m": "smpte240m",
}
BT601 = ("smpte170m", "bt470bg")
# matrix -> (primaries, transfer) to tag where the source left them unset
DEFAULT_TAGS = {"bt709": ("bt709", "bt709"), "smpte170m": ("smpte170m", "smpte170m")}
DEFAULT_TAGS["bt470bg"] = ("bt470bg", "smpte170m")


class VideoError(ValueError):
    """A source that cannot be remastered, with the reason."""


def tail_text(text: str, n: int = 1500) -> str:
    return text.strip()[-n:]


def as_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def ffmpeg_args(graph: Any, global_args: Sequence[str] = QUIET, overwrite: bool = False) -> list[str]:
    """The ffmpeg argument list of an ffmpeg-python output graph, with ``global_args`` (which ffmpeg
    takes anywhere on the line) and ``-y`` where ``overwrite``."""
    return list(graph.global_args(*global_args).compile(FFMPEG, overwrite_output=overwrite))


# ffmpeg (5.1) exits 0 when it cannot write an output's trailer or close it, a full disk among the
# causes: the file it leaves is cut short. These lines in its errors are failures all the same.
WRITE_FAILURES = ("Error writing trailer", "Error closing file", "No space left on device")


def run_ffmpeg(cmd: Sequence[str], what: str) -> subprocess.CompletedProcess[str]:
    res = stopping.run(cmd, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {res.returncode}): {tail_text(res.stderr)}")
    if any(sign in res.stderr for sign in WRITE_FAILURES):
        raise RuntimeError(f"{what} failed: the output could not be written in full: {tail_text(res.stderr)}")
    return res


def ffprobe_json(path: Path | str) -> dict[str, Any]:
    # The ffprobe calls stay argument lists: ffmpeg-python's probe() always asks for the format and
    # streams as JSON (no -show_chapters, -show_entries or -count_packets alone, no compact output)
    # and starts its own child, outside the registry of ``remaster.stopping``.
    cmd = [FFPROBE, "-v", "error", "-show_format", "-show_streams", "-show_chapters", "-of", "json"]
    return dict(json.loads(run_ffmpeg([*cmd, str(path)], f"probing {path}").stdout))


def compact_rows(text: str) -> list[tuple[str, dict[str, str]]]:
    """ffprobe ``-of compact`` lines -> [(section, {key: value})]."""
    rows = []
    for line in text.splitlines():
        section, _, rest = line.partition("|")
        if section and rest:
            rows.append((section, dict(kv.partition("=")[::2] for kv in rest.split("|") if "=" in kv)))
    return rows


@dataclass(frozen=True)
class Colour:
    matrix: str = "unknown"  # ffprobe's color_space: bt709, smpte170m, bt470bg, ...
    primaries: str = "unknown"
    transfer: str = "unknown"
    range: str = "unknown"  # tv (limited) or pc (full)


@dataclass(frozen=True)
class VideoInfo:
    """What the remaster needs to know about a source, from ffprobe and one decode pass."""

    path: str
    format_name: str
    start_time: float  # the container's, s
    duration: float  # the container's, s
    index: int  # absolute index of the video stream
    codec: str
    width: int  # coded; display_size applies the rotation
    height: int
    rotation: int  # degrees clockwise to display upright: 0, 90, 180 or 270
    sar: str
    pix_fmt: str
    bit_depth: int
    colour: Colour
    r_frame_rate: str
    avg_frame_rate: str
    time_base: str
    vfr: bool
    field_order: str
    interlaced: bool
    interlace_evidence: str  # field_order, frame flags or idet
    frames: int  # decoded, exact
    pts: tuple[int, ...]  # each frame's presentation time, in time_base
    last_duration: int  # the last frame's duration, in time_base
    language: str
    disposition: str  # the video stream's, as ffmpeg's -disposition takes it
    decode_errors: int
    streams: tuple[str, ...]  # type:codec:language of every stream
    chapters: int

    @property
    def tb(self) -> Fraction:
        return Fraction(self.time_base)

    @property
    def display_size(self) -> tuple[int, int]:
        return (self.height, self.width) if self.rotation in (90, 270) else (self.width, self.height)

    @property
    def frame_rate(self) -> Fraction:
        """The nominal rate: the average where it is sane, else r_frame_rate, else the last frame's."""
        for text in (self.avg_frame_rate, self.r_frame_rate):
            num, _, den = text.partition("/")
            if as_int(num) and as_int(den or "1"):
                return Fraction(int(num), int(den or "1"))
        return 1 / (self.tb * self.last_duration)

    @property
    def video_start(self) -> float:
        return float(self.pts[0] * self.tb)

    @property
    def video_duration(self) -> float:
        return float((self.pts[-1] - self.pts[0] + self.last_duration) * self.tb)

    def summary(self) -> dict[str, Any]:
        keep = "format_name codec rotation sar pix_fmt bit_depth vfr interlaced interlace_evidence frames"
        out: dict[str, Any] = {k: getattr(self, k) for k in keep.split()}
        out["width"], out["height"] = self.display_size
        out["fps"] = round(float(self.frame_rate), 3)
        out["duration"] = round(self.video_duration, 3)
        out["colour"] = vars(self.colour)
        out.update(decode_errors=self.decode_errors, streams=list(self.streams), chapters=self.chapters)
        return out


def rotation_of(stream: dict[str, Any]) -> int:
    """Clockwise degrees from a display matrix (side data) or an old ``rotate`` tag."""
    for side in stream.get("side_data_list", []):
        if "rotation" in side:
            return round(-float(side["rotation"]) / 90) * 90 % 360  # ffprobe prints it anticlockwise
    return round(float(stream.get("tags", {}).get("rotate", 0) or 0) / 90) * 90 % 360


class Frames(NamedTuple):
    tb: Fraction
    pts: list[int]
    durations: list[int]
    interlaced: int  # frames flagged interlaced
    errors: str  # the decoder's complaints


def frame_pass(path: str | Path, stream: int | str) -> Frames:
    """Decode one stream with ffprobe: every frame's timestamp, duration and interlace flag."""
    entries = "stream=time_base:frame=best_effort_timestamp,pkt_duration,interlaced_frame"
    # ffprobe -show_entries: a list, as in ffprobe_json
    cmd = [FFPROBE, "-v", "error", "-select_streams", str(stream), "-show_entries", entries]
    res = stopping.run([*cmd, "-of", "compact", str(path)], text=True)
    if res.returncode != 0:
        raise VideoError(f"{path}: cannot decode: {tail_text(res.stderr)}")
    frames = Frames(Fraction(1, 1000), [], [], 0, res.stderr)
    flagged = 0
    for section, row in compact_rows(res.stdout):
        if section == "stream" and "time_base" in row:
            frames = frames._replace(tb=Fraction(row["time_base"]))
        elif section == "frame" and "best_effort_timestamp" in row:
            t = as_int(row["best_effort_timestamp"])
            if t is None:  # no timestamp: one frame after the last
                t = frames.pts[-1] + (frames.durations[-1] or 1) if frames.pts else 0
            frames.pts.append(t)
            frames.durations.append(as_int(row.get("pkt_duration")) or 0)
            flagged += row.get("interlaced_frame") == "1"
    return frames._replace(interlaced=flagged)


def idet(path: str | Path, index: int, frames: int = 300, start: float = 0.0) -> tuple[int, int, int]:
    """(TFF, BFF, progressive) frame counts from ffmpeg's interlace detector on a sample."""
    video = ffmpeg_python.input(str(path), ss=f"{start:.3f}")[str(index)]
    graph = video.filter("idet").output("-", format="null", **{"frames:v": frames})
    # info-level stderr: idet prints its counts there
    cmd = ffmpeg_args(graph, ["-hide_banner", "-nostdin", "-nostats"])
    err = run_ffmpeg(cmd, f"interlace detection on {path}").stderr
    # The last report: ffmpeg first builds a -filter_complex graph once without frames, and its idet
    # reports zeros as that graph is freed.
    found = re.findall(r"Multi frame detection: TFF:\s*(\d+)\s*BFF:\s*(\d+)\s*Progressive:\s*(\d+)", err)
    tff, bff, progressive = found[-1] if found else ("0", "0", "0")
    return int(tff), int(bff), int(progressive)


def _bit_depth(stream: dict[str, Any]) -> int:
    m = re.search(r"p(\d+)(le|be)$", stream.get("pix_fmt", ""))
    return as_int(stream.get("bits_per_raw_sample")) or (int(m[1]) if m else 8)


def _interlace(path: Path, v: dict[str, Any], frames: Frames, duration: float) -> tuple[bool, str]:
    """Interlaced or not, and the evidence: the stream's field order, the frames' flags or idet."""
    order = v.get("field_order", "unknown")
    if order in ("tt", "bb", "tb", "bt", "progressive"):
        return order != "progressive", "field_order"
    if frames.interlaced * 2 > len(frames.pts):
        return True, "frame flags"
    tff, bff, progressive = idet(path, v["index"], start=duration / 4 if duration > 60 else 0)
    return tff + bff > progressive, "idet"


def probe(path: str | Path) -> VideoInfo:
    """Everything about ``path`` the remaster needs; raises ``VideoError`` on anything unusable."""
    path = Path(path)
    if not path.is_file():
        raise VideoError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise VideoError(f"{path}: empty file (0 bytes)")
    try:
        data = ffprobe_json(path)
    except RuntimeError as e:
        hint = " (truncated?)" if any(s in str(e) for s in TRUNCATION_SIGNS) else ""
        raise VideoError(f"{path}: not a video file ffprobe can read{hint}: {str(e)[-300:]}") from None
    fmt, streams = data.get("format") or {}, data.get("streams") or []
    name = fmt.get("format_name", "")
    if name == "image2" or name.endswith("_pipe"):
        raise VideoError(f"{path}: a still image ({name}), not a video")
    videos = [s for s in streams if s["codec_type"] == "video" and not s["disposition"].get("attached_pic")]
    if not videos:
        kinds = sorted({str(s.get("codec_type")) for s in streams})
        held = f"only {', '.join(kinds)}" if kinds else "no streams at all: zero duration"
        raise VideoError(f"{path}: no video stream ({held})")
    v = videos[0]
    frames = frame_pass(path, v["index"])
    pts, n = frames.pts, len(frames.pts)
    if not pts:
        raise VideoError(f"{path}: the video stream has no decodable frames (zero duration)")
    declared = as_int(v.get("nb_frames"))
    if any(s in frames.errors for s in TRUNCATION_SIGNS) or (
        declared and declared - n > max(2, declared // 100)
    ):
        of = f" of the {declared} its header declares" if declared else ""
        why = tail_text(frames.errors, 300)
        raise VideoError(f"{path}: truncated or damaged: {n} frames decode{of} ({why})")
    deltas = [b - a for a, b in itertools.pairwise(pts)]
    if any(d <= 0 for d in deltas):
        raise VideoError(f"{path}: frame timestamps go backwards or repeat; remux it first (ffmpeg -c copy)")
    med = statistics.median(deltas) if deltas else frames.durations[0] or 1
    interlaced, evidence = _interlace(path, v, frames, float(fmt.get("duration") or 0))
    tags, disposition = v.get("tags", {}), v.get("disposition", {})
    return VideoInfo(
        path=str(path),
        format_name=name,
        start_time=float(fmt.get("start_time") or 0),
        duration=float(fmt.get("duration") or 0),
        index=int(v["index"]),
        codec=v.get("codec_name", "?"),
        width=int(v["width"]),
        height=int(v["height"]),
        rotation=rotation_of(v),
        sar=v.get("sample_aspect_ratio", "1:1"),
        pix_fmt=v.get("pix_fmt", "unknown"),
        bit_depth=_bit_depth(v),
        colour=Colour(*(v.get(f"color_{k}", "unknown") for k in ("space", "primaries", "transfer", "range"))),
        r_frame_rate=v.get("r_frame_rate", "0/0"),
        avg_frame_rate=v.get("avg_frame_rate", "0/0"),
        time_base=str(frames.tb),
        # VFR: steps that differ by more than timestamp rounding (a tick, or 1%)
        vfr=any(abs(d - med) > max(1, med / 100) for d in deltas),
        field_order=v.get("field_order", "unknown"),
        interlaced=interlaced,
        interlace_evidence=evidence,
        frames=n,
        pts=tuple(pts),
        last_duration=frames.durations[-1] if frames.durations[-1] > 0 else round(med),
        language=tags.get("language", "und"),
        disposition="+".join(k for k, on in disposition.items() if on) or "0",
        decode_errors=len(frames.errors.strip().splitlines()),
        streams=tuple(
            f"{s['codec_type']}:{s.get('codec_name')}:{s.get('tags', {}).get('language', 'und')}"
            for s in streams
        ),
        chapters=len(data.get("chapters") or []),
    )


def count_packets(path: Path, stream: str = "v:0") -> int:
    """Packets of one stream, without decoding; -1 when the file cannot be read."""
    # ffprobe -count_packets: a list, as in ffprobe_json
    cmd = [FFPROBE, "-v", "error", "-select_streams", stream, "-count_packets"]
    res = stopping.run(
        [*cmd, "-show_entries", "stream=nb_read_packets", "-of", "csv=p=0", str(path)], text=True
    )
    return (as_int(res.stdout.strip().split(",")[0]) or 0) if res.returncode == 0 else -1


def packet_times(path: Path | str, stream: str) -> tuple[Fraction, list[int], list[int]]:
    """A stream's time base, and its packets' pts (sorted) and durations, without decoding."""
    # ffprobe -show_entries packet=...: a list, as in ffprobe_json
    cmd = [FFPROBE, "-v", "error", "-select_streams", stream, "-show_entries"]
    cmd += ["stream=time_base:packet=pts,duration", "-of", "compact", str(path)]
    rows = compact_rows(run_ffmpeg(cmd, f"reading packets of {path}").stdout)
    tb = next((Fraction(r["time_base"]) for s, r in rows if s == "stream" and "time_base" in r), Fraction(1))
    packets = sorted(
        (as_int(r.get("pts")) or 0, as_int(r.get("duration")) or 0) for s, r in rows if s == "packet"
    )
    return tb, [p for p, _ in packets], [d for _, d in packets]


def stream_hashes(path: Path | str, kind: str) -> list[str]:
    """sha256 of the packets' bytes of every stream of ``kind`` (a, s): the container does not matter."""
    graph = ffmpeg_python.input(str(path))[kind].output("-", c="copy", format="streamhash", hash="sha256")
    out = run_ffmpeg(ffmpeg_args(graph), f"hashing {path}").stdout
    return [line.split(",", 2)[2] for line in out.splitlines() if line.count(",") >= 2]
