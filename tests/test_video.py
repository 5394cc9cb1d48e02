"""The video helpers on tiny generated clips with the real ffmpeg: probe, split, pipes, mux, verify.

A nearest-neighbour stand-in takes the model's place, so these run in seconds; the model and
Prefect come in test_remaster_flow.py.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from remaster.video import ffmpeg, probe
from remaster.video.verify import verify

FF = ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-y"]
SD601 = ["-colorspace", "smpte170m", "-color_primaries", "smpte170m", "-color_trc", "smpte170m"]
X264 = ["-c:v", "libx264", "-preset", "ultrafast", "-g", "12", "-pix_fmt", "yuv420p"]
BT = ("bt709", "smpte170m")
SRT = "1\n00:00:00,200 --> 00:00:00,900\nhello\n\n2\n00:00:01,100 --> 00:00:01,800\nworld\n"
CHAPTERS = ";FFMETADATA1\ntitle=Tiny\n[CHAPTER]\nTIMEBASE=1/1000\nSTART=0\nEND=1000\ntitle=One\n"
CHAPTERS += "[CHAPTER]\nTIMEBASE=1/1000\nSTART=1000\nEND=2000\ntitle=Two\n"


def run_ffmpeg(*args: str | Path) -> None:
    subprocess.run([*FF, *map(str, args)], check=True)


def make_episode(folder: Path, size: str = "96x72", seconds: float = 2.0, on_twos: bool = False) -> Path:
    """An .mkv like a fansub release: h264 (BT.601), two AAC tracks, subtitles, chapters, a font.
    ``on_twos``: each picture held for two frames, as anime is drawn."""
    (folder / "subs.srt").write_text(SRT)
    (folder / "chapters.txt").write_text(CHAPTERS)
    (folder / "font.ttf").write_bytes(b"not really a font")
    out = folder / "episode.mkv"
    run_ffmpeg(
        *("-f", "lavfi", "-i", f"testsrc2=s={size}:r=12:d={seconds},fps=24" if on_twos
          else f"testsrc2=s={size}:r=24:d={seconds}"),
        *("-f", "lavfi", "-i", f"sine=f=440:d={seconds}", "-f", "lavfi", "-i", f"sine=f=660:d={seconds}"),
        *("-i", folder / "subs.srt", "-i", folder / "chapters.txt"),
        *("-map", "0:v", "-map", "1:a", "-map", "2:a", "-map", "3:s"),
        *("-map_metadata", "4", "-map_chapters", "4"),
        *X264, *SD601, "-color_range", "tv", "-c:a", "aac", "-c:s", "srt",
        *("-metadata:s:a:0", "language=jpn", "-metadata:s:a:1", "language=eng"),
        *("-metadata:s:s:0", "language=eng"),
        *("-disposition:a:0", "default", "-disposition:a:1", "0", "-disposition:s:0", "forced"),
        *("-attach", folder / "font.ttf", "-metadata:s:t", "mimetype=application/x-truetype-font"),
        out,
    )  # fmt: skip
    return out


def nearest(scale: int) -> Callable[[np.ndarray], np.ndarray]:
    """The model's stand-in: (N, H, W, 3) -> (N, H*s, W*s, 3) by pixel repetition."""
    return lambda frames: frames.repeat(scale, axis=1).repeat(scale, axis=2)


def remaster(src: Path, work: Path, scale: int = 2, seconds: float = 0.5, suffix: str = ".mkv") -> Path:
    """The flow's steps without Prefect or the model: split, upscale, concat, mux."""
    info = probe.probe(src)
    segments = ffmpeg.split(info, work / "src", seconds)
    parts = []
    for seg in segments:
        parts.append(work / f"out_{seg.index}.mkv")
        enc = ffmpeg.Encode(preset="ultrafast")
        ffmpeg.upscale_segment(seg, parts[-1], info, nearest(scale), scale, enc, deinterlace=info.interlaced)
    ffmpeg.concat(parts, [s.duration for s in segments], work / "joined.mkv")
    ffmpeg.mux(work / "joined.mkv", info, work / f"final{suffix}")
    return work / f"final{suffix}"


def ffprobe(path: Path) -> dict:
    return probe.ffprobe_json(path)


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("media")
    make_episode(folder)
    src = ["-f", "lavfi", "-i", "testsrc2=s=96x72:r=24:d=2"]
    run_ffmpeg(*src, "-f", "lavfi", "-i", "sine=d=2", *X264, *SD601, "-c:a", "aac", folder / "clip.mp4")
    drop = "select='not(eq(mod(n\\,5)\\,3))'"  # every fifth frame gone: 2-frame gaps
    run_ffmpeg(
        *src,
        "-f",
        "lavfi",
        "-i",
        "sine=d=2",
        "-vf",
        drop,
        "-fps_mode",
        "vfr",
        *X264,
        "-c:a",
        "aac",
        folder / "vfr.mp4",
    )
    woven = ["-f", "lavfi", "-i", "testsrc2=s=96x72:r=48:d=1", "-vf", "interlace=scan=tff"]
    run_ffmpeg(*woven, *X264, "-flags", "+ilme+ildct", "-top", "1", folder / "tff.mp4")
    run_ffmpeg(*woven, "-c:v", "ffv1", folder / "unflagged.avi")  # no field order: only idet can tell
    return folder


def test_probe_reads_rate_frames_format_and_colour(sources: Path) -> None:
    info = probe.probe(sources / "clip.mp4")
    assert (info.width, info.height, info.frames, info.frame_rate) == (96, 72, 48, 24)
    assert not info.vfr and not info.interlaced and info.interlace_evidence == "field_order"
    assert (info.pix_fmt, info.bit_depth, info.rotation) == ("yuv420p", 8, 0)
    assert info.colour == probe.Colour("smpte170m", "smpte170m", "smpte170m", "tv")
    assert info.video_duration == pytest.approx(2.0)
    assert info.streams == ("video:h264:und", "audio:aac:und")
    ep = probe.probe(sources / "episode.mkv")
    assert ep.chapters == 2 and [s.split(":")[0] for s in ep.streams].count("audio") == 2


def test_probe_detects_interlacing_and_vfr(sources: Path) -> None:
    tff = probe.probe(sources / "tff.mp4")
    assert tff.interlaced and tff.field_order == "tt" and tff.interlace_evidence == "field_order"
    unflagged = probe.probe(sources / "unflagged.avi")
    assert unflagged.field_order == "unknown"
    assert unflagged.interlaced and unflagged.interlace_evidence == "idet"
    vfr = probe.probe(sources / "vfr.mp4")
    assert vfr.vfr and vfr.frames == 39 and vfr.r_frame_rate == "24/1"


def test_rotation_and_timestamp_expressions() -> None:
    assert probe.rotation_of({"side_data_list": [{"rotation": -90}]}) == 90
    assert probe.rotation_of({"side_data_list": [{"rotation": 90}]}) == 270
    assert probe.rotation_of({"tags": {"rotate": "180"}}) == 180
    assert probe.rotation_of({}) == 0
    pts = [0, 512, 1024, 2048, 2560, 3072, 4096, 4136]
    expr = ffmpeg.pts_expression(pts)
    assert expr.count("clip") == 5  # runs of 512, 1024, 512, 1024, 40
    clip = lambda x, lo, hi: min(max(x, lo), hi)  # noqa: E731  # ffmpeg's clip()
    assert [eval(expr, {"clip": clip, "N": n}) for n in range(len(pts))] == pts


def test_split_accounts_for_every_frame(sources: Path, tmp_path: Path) -> None:
    info = probe.probe(sources / "clip.mp4")
    segments = ffmpeg.split(info, tmp_path, 0.5)
    assert [s.frames for s in segments] == [12, 12, 12, 12]
    assert [s.first for s in segments] == [0, 12, 24, 36]
    assert sum(s.duration for s in segments) == pytest.approx(info.video_duration)
    assert all(len(s.pts) == s.frames and s.pts[0] == 0 for s in segments)
    whole = ffmpeg.split(info, tmp_path / "whole", 0)
    assert len(whole) == 1 and whole[0].frames == 48
    with pytest.raises(probe.VideoError, match=r"segments hold 47 \[12, 12, 12, 11\], the source 48"):
        ffmpeg.check_accounting(48, [12, 12, 12, 11])


@pytest.mark.parametrize("name", ["realesrgan_onepiece_demo.mp4", "tas_jjk_1080p_test.mp4"])
def test_the_shared_clips_probe_and_split_exactly(shared: Path, tmp_path: Path, name: str) -> None:
    info = probe.probe(shared / "data/video" / name)
    assert info.frames == probe.count_packets(shared / "data/video" / name) > 100
    assert not info.vfr and not info.interlaced and info.streams[1].startswith("audio:aac")
    segments = ffmpeg.split(info, tmp_path, 2.0)  # at the encodes' own keyframes
    assert len(segments) >= 2 and sum(s.frames for s in segments) == info.frames
    assert sum(s.duration for s in segments) == pytest.approx(info.video_duration)


@pytest.fixture(scope="module")
def remastered(sources: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return remaster(sources / "episode.mkv", tmp_path_factory.mktemp("work"))


def test_reassembly_keeps_every_stream_byte_for_byte(sources: Path, remastered: Path) -> None:
    info = probe.probe(sources / "episode.mkv")
    checks = verify(info, remastered, 2)
    assert all(c["ok"] for c in checks.values())
    assert len(checks["audio_sha256"]["actual"]) == 2 and len(checks["subtitle_sha256"]["actual"]) == 1
    out = ffprobe(remastered)
    kinds = [(s["codec_type"], s.get("tags", {}).get("language")) for s in out["streams"]]
    assert kinds == [
        ("video", None),
        ("audio", "jpn"),
        ("audio", "eng"),
        ("subtitle", "eng"),
        ("attachment", None),
    ]
    assert [s["disposition"]["default"] for s in out["streams"][1:3]] == [1, 0]
    assert out["streams"][3]["disposition"]["forced"] == 1
    assert [c["tags"]["title"] for c in out["chapters"]] == ["One", "Two"]
    assert out["format"]["tags"]["title"] == "Tiny"
    v = out["streams"][0]
    assert (v["width"], v["height"], v["color_space"], v["color_range"]) == (192, 144, "smpte170m", "tv")


def test_verify_catches_a_missing_frame(sources: Path, remastered: Path, tmp_path: Path) -> None:
    short = tmp_path / "short.mkv"
    run_ffmpeg("-i", remastered, "-map", "0", "-c", "copy", "-frames:v", "47", short)
    with pytest.raises(ffmpeg.VerifyError, match="frames: expected 48, got 47"):
        verify(probe.probe(sources / "episode.mkv"), short, 2)
    with pytest.raises(ffmpeg.VerifyError, match=r"size: expected \[384, 288\], got \[192, 144\]"):
        verify(probe.probe(sources / "episode.mkv"), remastered, 4)


def test_vfr_and_interlaced_sources_keep_their_timing(sources: Path, tmp_path: Path) -> None:
    for name in ("vfr.mp4", "tff.mp4"):
        out = remaster(sources / name, tmp_path / name, seconds=0, suffix=".mp4")
        checks = verify(probe.probe(sources / name), out, 2)
        assert checks["max_drift"]["ok"] and checks["frames"]["actual"] == probe.probe(sources / name).frames


def test_sd_bt601_upscaled_to_hd_becomes_bt709(tmp_path: Path) -> None:
    rgb = (200, 60, 40)
    src = tmp_path / "red.mp4"
    run_ffmpeg("-f", "lavfi", "-i", f"color=c=0x{bytes(rgb).hex()}:s=128x184:r=24:d=0.25", *X264, *SD601, src)
    info = probe.probe(src)
    assert ffmpeg.output_colour(info, 736) == probe.Colour("bt709", "bt709", "bt709", "tv")
    assert ffmpeg.output_colour(info, 368).matrix == "smpte170m"  # not HD: left as it was
    out = remaster(src, tmp_path / "work", scale=4, seconds=0)
    stream = ffprobe(out)["streams"][0]
    assert [stream[k] for k in ("height", "color_space", "color_primaries", "color_transfer")] == [
        736,
        "bt709",
        "bt709",
        "bt709",
    ]
    decoded = {
        m: ffmpeg.extract_frame(dataclasses.replace(probe.probe(out), colour=probe.Colour(m)), 0) for m in BT
    }
    source = ffmpeg.extract_frame(info, 0).reshape(-1, 3).mean(0)
    assert np.abs(decoded["bt709"].reshape(-1, 3).mean(0) - source).max() <= 2  # the colour survives
    assert np.abs(decoded["smpte170m"].reshape(-1, 3).mean(0) - source).max() > 8  # as the matrix changed


def test_odd_sized_sources(tmp_path: Path) -> None:
    src = tmp_path / "odd.mkv"
    run_ffmpeg("-f", "lavfi", "-i", "testsrc2=s=96x72:r=24:d=0.25", "-vf", "scale=95:71", "-c:v", "ffv1", src)
    out = remaster(src, tmp_path / "work")
    assert verify(probe.probe(src), out, 2)["size"]["actual"] == [190, 142]


def test_bad_inputs_fail_clearly(sources: Path, tmp_path: Path) -> None:
    (tmp_path / "notes.mp4").write_text("not a video\n")
    (tmp_path / "empty.mkv").write_bytes(b"")
    run_ffmpeg("-f", "lavfi", "-i", "sine=d=1", "-c:a", "aac", tmp_path / "audio.m4a")
    zero = tmp_path / "zero.mp4"
    run_ffmpeg("-f", "lavfi", "-i", "testsrc2=s=96x72:r=24:d=1", *X264, "-frames:v", "0", zero)
    data = (sources / "clip.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])  # its index (moov) is at the end: lost
    run_ffmpeg("-i", sources / "clip.mp4", "-c", "copy", "-movflags", "+faststart", tmp_path / "fast.mp4")
    fast = (tmp_path / "fast.mp4").read_bytes()
    (tmp_path / "cut_fast.mp4").write_bytes(fast[: len(fast) * 2 // 3])  # index intact, frames gone
    run_ffmpeg("-i", sources / "episode.mkv", "-map", "0", "-c", "copy", tmp_path / "whole.mkv")
    mkv = (tmp_path / "whole.mkv").read_bytes()
    (tmp_path / "cut.mkv").write_bytes(mkv[: len(mkv) // 2])
    before = sorted(p.name for p in tmp_path.iterdir())
    cases = {
        "notes.mp4": "not a video file ffprobe can read",
        "empty.mkv": r"empty file \(0 bytes\)",
        "missing.mp4": "no such file",
        "audio.m4a": r"no video stream \(only audio\)",
        "zero.mp4": "zero duration",
        "cut.mp4": r"not a video file ffprobe can read \(truncated\?\)",
        "cut_fast.mp4": "truncated or damaged: .* of the 48 its header declares",
        "cut.mkv": "truncated or damaged",
    }
    for name, message in cases.items():
        with pytest.raises(probe.VideoError, match=message):
            probe.probe(tmp_path / name)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written
    assert json.dumps(probe.probe(sources / "clip.mp4").summary())  # the summary is plain JSON


def test_a_long_matroska_segment_at_23_976_keeps_its_times(tmp_path: Path) -> None:
    """Matroska's 1 ms times at 24000/1001 fps step 42, 42, 41, ... ms: too many runs for one
    setpts expression of runs, so the encoder takes the rounded constant rate instead."""
    src = tmp_path / "ntsc.mkv"
    run_ffmpeg("-f", "lavfi", "-i", "testsrc2=s=64x48:r=24000/1001:d=9", *X264, src)
    info = probe.probe(src)
    assert info.tb == Fraction(1, 1000) and info.frames == 216
    seg = ffmpeg.split(info, tmp_path / "src", 0)[0]
    assert ffmpeg.pts_expression(seg.pts).count("clip(") > ffmpeg.RUN_TERMS_MAX
    expr = ffmpeg.rounded_rate_expression(info, seg)
    assert expr == "floor((2*(N+0)*1001+24)/48)-0"
    dst = tmp_path / "up.mkv"
    ffmpeg.upscale_segment(seg, dst, info, nearest(2), 2, ffmpeg.Encode(preset="ultrafast"))
    _, pts, _ = probe.packet_times(dst, "v:0")
    assert pts == list(info.pts)  # every frame where the source has it, to the millisecond
