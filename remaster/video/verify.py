"""Check a remastered video against its source, stream by stream, before it is handed over.

Frames (count, size, timestamps), durations, the stream layout, byte-identical audio and
subtitle packets, and chapters: every check comes back with what was expected and found, and
any failure raises ``VerifyError`` naming each mismatch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from remaster.video.ffmpeg import VerifyError, output_size
from remaster.video.probe import VideoInfo, ffprobe_json, packet_times, stream_hashes


def _layout(streams: list[dict[str, Any]]) -> list[str]:
    """type:codec:language:dispositions of each audio, subtitle and attachment stream, in order."""
    out = []
    for s in streams:
        if s["codec_type"] in ("audio", "subtitle", "attachment"):
            flags = "+".join(k for k in ("default", "forced") if s.get("disposition", {}).get(k))
            lang = s.get("tags", {}).get("language", "und")
            out.append(f"{s['codec_type']}:{s.get('codec_name')}:{lang}:{flags}")
    return out


def verify(info: VideoInfo, output: Path, scale: int) -> dict[str, dict[str, Any]]:
    """Check ``output`` against its source: every check comes back, and any failure raises."""
    src, out = ffprobe_json(info.path), ffprobe_json(output)
    checks: dict[str, dict[str, Any]] = {}

    def check(name: str, expected: Any, actual: Any, ok: bool | None = None) -> None:
        checks[name] = {
            "ok": expected == actual if ok is None else ok,
            "expected": expected,
            "actual": actual,
        }

    video = next(s for s in out["streams"] if s["codec_type"] == "video")
    tb, pts, durs = packet_times(output, "v:0")
    frame = 1 / float(info.frame_rate)
    check("frames", info.frames, len(pts))
    check("size", list(output_size(info, scale)), [video.get("width"), video.get("height")])
    if pts:
        last = durs[-1] or (pts[-1] - pts[-2] if len(pts) > 1 else 0)
        span = float((pts[-1] + last - pts[0]) * tb)
        check(
            "duration",
            round(info.video_duration, 4),
            round(span, 4),
            abs(span - info.video_duration) <= frame,
        )
    if len(pts) == info.frames:  # every frame where its source frame was: VFR kept, no drift
        drift = max(
            abs((p - pts[0]) * tb - (s - info.pts[0]) * info.tb) for p, s in zip(pts, info.pts, strict=True)
        )
        check("max_drift", "<= 0.002", round(float(drift), 4), drift <= 0.002)  # ms rounding in .mkv
    d_src, d_out = float(src["format"].get("duration", 0)), float(out["format"].get("duration", 0))
    check("container_duration", round(d_src, 4), round(d_out, 4), abs(d_src - d_out) <= frame)
    check("streams", _layout(src["streams"]), _layout(out["streams"]))
    for kind in ("audio", "subtitle"):
        hashes = [
            stream_hashes(p, kind[0]) if any(s["codec_type"] == kind for s in d["streams"]) else []
            for p, d in ((info.path, src), (output, out))
        ]
        check(f"{kind}_sha256", hashes[0], hashes[1])
    check("chapters", len(src.get("chapters", [])), len(out.get("chapters", [])))
    failed = [f"{k}: expected {c['expected']}, got {c['actual']}" for k, c in checks.items() if not c["ok"]]
    if failed:
        raise VerifyError(f"{output} does not match its source: " + "; ".join(failed))
    return checks
