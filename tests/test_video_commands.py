"""The ffmpeg commands the video remaster builds with ffmpeg-python: what each carries, and that
ffmpeg reads them as meant (filter escaping, stream mapping, frame times) on tiny lavfi clips."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import numpy as np
import pytest

from remaster import stopping
from remaster.data import degradations
from remaster.video import ffmpeg, probe

SD601 = probe.Colour("smpte170m", "smpte170m", "smpte170m", "tv")
VFR_PTS = (0, 42, 125, 167, 250, 292)  # runs of 42 and 83 ms: a setpts expression of several terms


def source_info(**changes: object) -> probe.VideoInfo:
    """A probed source as ``probe.probe`` would give it: 32x24 BT.601 h264, VFR, in Matroska."""
    info = probe.VideoInfo(
        path="/media/episode.mkv", format_name="matroska,webm", start_time=0.0, duration=0.334, index=0,
        codec="h264", width=32, height=24, rotation=0, sar="1:1", pix_fmt="yuv420p", bit_depth=8,
        colour=SD601, r_frame_rate="24/1", avg_frame_rate="18/1", time_base="1/1000", vfr=True,
        field_order="progressive", interlaced=False, interlace_evidence="field_order", frames=len(VFR_PTS),
        pts=VFR_PTS, last_duration=42, language="jpn", disposition="default", decode_errors=0,
        streams=("video:h264:jpn", "audio:aac:jpn", "subtitle:subrip:eng"), chapters=0,
    )  # fmt: skip
    return dataclasses.replace(info, **changes)  # type: ignore[arg-type]


def whole(info: probe.VideoInfo, path: str = "/work/seg_00000.mkv") -> ffmpeg.Segment:
    """``info``'s frames as one segment."""
    duration = float((info.pts[-1] - info.pts[0] + info.last_duration) * info.tb)
    return ffmpeg.Segment(0, path, 0, info.frames, info.pts, duration)


def value(args: list[str], option: str) -> str:
    """The value after ``option``, which must appear once."""
    assert args.count(option) == 1, f"{option} appears {args.count(option)} times in {args}"
    return args[args.index(option) + 1]


def values(args: list[str], option: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == option]


def test_the_encode_pipe_carries_the_codec_quality_pixel_format_and_colour_asked_for() -> None:
    info = source_info(height=180, width=240)
    enc = ffmpeg.Encode("libx265", 23, "slow", "yuv420p10le")
    args = ffmpeg.encode_cmd(Path("/out/up.mkv"), info, whole(info), 4, enc)
    assert args[0] == "ffmpeg" and args[-1] == "-y" and "/out/up.mkv" in args
    assert values(args, "-i") == ["pipe:"] and values(args, "-f") == ["rawvideo", "matroska"]
    assert value(args, "-pix_fmt") == "rgb24" and value(args, "-s") == "960x720"
    assert (value(args, "-c:v"), value(args, "-crf"), value(args, "-preset")) == ("libx265", "23", "slow")
    assert value(args, "-x265-params") == "log-level=error"
    # BT.601 upscaled to 720 lines: converted and tagged BT.709
    tags = {k: value(args, f"-{k}") for k in ("colorspace", "color_primaries", "color_trc", "color_range")}
    assert tags == {
        "colorspace": "bt709",
        "color_primaries": "bt709",
        "color_trc": "bt709",
        "color_range": "tv",
    }
    graph = value(args, "-filter_complex")
    assert "out_color_matrix=bt709" in graph and "format=pix_fmts=yuv420p10le[" in graph
    assert "settb=expr=1/1000" in graph and "setpts=expr=42*clip(N-0\\,0\\,1)" in graph
    assert (value(args, "-enc_time_base"), value(args, "-fps_mode")) == ("1/1000", "passthrough")

    untagged = source_info(colour=probe.Colour("smpte170m"))
    sd = ffmpeg.encode_cmd(Path("/out/up.mkv"), untagged, whole(untagged), 2, ffmpeg.Encode())
    assert "-x265-params" not in sd and value(sd, "-c:v") == "libx264" and value(sd, "-crf") == "18"
    assert value(sd, "-colorspace") == "smpte170m" and value(sd, "-color_primaries") == "smpte170m"
    assert "format=pix_fmts=yuv420p[" in value(sd, "-filter_complex")
    unknown = source_info(colour=probe.Colour("bt2020nc"))  # no usual primaries or transfer to assume
    wide = ffmpeg.encode_cmd(Path("/out/up.mkv"), unknown, whole(unknown), 2, ffmpeg.Encode())
    assert (
        value(wide, "-colorspace") == "bt2020nc"
        and "-color_primaries" not in wide
        and "-color_trc" not in wide
    )


def test_the_encode_pipe_pads_odd_sizes_and_keeps_the_aspect() -> None:
    info = source_info(width=31, height=23, sar="8:9")
    graph = value(ffmpeg.encode_cmd(Path("up.mkv"), info, whole(info), 3, ffmpeg.Encode()), "-filter_complex")
    assert "pad=height=70:width=94" in graph and "setsar=r=8/9" in graph
    even = source_info()
    square = value(
        ffmpeg.encode_cmd(Path("up.mkv"), even, whole(even), 2, ffmpeg.Encode()), "-filter_complex"
    )
    assert "pad=" not in square and "setsar" not in square


def test_the_decode_pipe_deinterlaces_only_when_asked_and_turns_the_picture_upright() -> None:
    info = source_info()
    plain = ffmpeg.decode_cmd(whole(info), info, deinterlace=False)
    woven = ffmpeg.decode_cmd(whole(info), info, deinterlace=True)
    assert "bwdif" not in value(plain, "-filter_complex")
    assert "bwdif=deint=all:mode=send_frame:parity=auto" in value(woven, "-filter_complex")
    for args in (plain, woven):
        assert args.index("-noautorotate") < args.index("-i") and value(args, "-i") == "/work/seg_00000.mkv"
        assert value(args, "-filter_complex").startswith("[0:v:0]")
        assert values(args, "-f") == ["rawvideo"] and "pipe:" in args and "-y" not in args
        graph = value(args, "-filter_complex")
        assert "in_color_matrix=smpte170m:in_range=tv" in graph and "format=pix_fmts=rgb24" in graph
    assert "transpose" not in value(plain, "-filter_complex")
    turned = {
        r: value(ffmpeg.decode_cmd(whole(info), source_info(rotation=r), False), "-filter_complex")
        for r in (90, 180, 270)
    }
    assert "transpose=dir=clock" in turned[90] and "transpose=dir=cclock" in turned[270]
    assert "hflip" in turned[180] and "vflip" in turned[180] and "transpose" not in turned[180]


def test_the_mux_maps_every_stream_of_the_source() -> None:
    info = source_info(pts=tuple(p + 23 for p in VFR_PTS), disposition="default+forced")
    args = ffmpeg.mux_cmd(Path("/work/joined.mkv"), info, Path("/out/final.mp4"), "libx265")
    assert values(args, "-i") == ["/work/joined.mkv", info.path]  # the new video is 0, the source 1
    assert args.index("-itsoffset") < args.index("-i") and value(args, "-itsoffset") == "0.023000"
    assert values(args, "-map") == ["0:v:0", "1:a?", "1:s?", "1:t?"]
    assert (value(args, "-map_metadata"), value(args, "-map_chapters"), value(args, "-c")) == (
        "1",
        "1",
        "copy",
    )
    assert value(args, "-metadata:s:v:0") == "language=jpn"
    assert value(args, "-disposition:v:0") == "default+forced"
    assert (value(args, "-movflags"), value(args, "-tag:v")) == ("+faststart", "hvc1")
    assert args[-1] == "-y" and "/out/final.mp4" in args
    mkv = ffmpeg.mux_cmd(Path("/work/joined.mkv"), source_info(), Path("/out/final.mkv"))
    assert "-itsoffset" not in mkv and "-movflags" not in mkv and "-tag:v" not in mkv


def test_split_and_concat_copy_the_video_stream() -> None:
    args = ffmpeg.split_cmd(source_info(index=2), Path("/work/src"), 0)
    assert value(args, "-map") == "0:2" and value(args, "-c") == "copy" and value(args, "-f") == "segment"
    assert value(args, "-segment_time") == "99999999" and value(args, "-segment_format") == "matroska"
    assert value(ffmpeg.split_cmd(source_info(), Path("/w"), 2.5), "-segment_time") == "2.500"
    joined = ffmpeg.concat_cmd(Path("/w/j.mkv.ffconcat"), Path("/w/j.mkv"))
    assert values(joined, "-f") == ["concat", "matroska"] and value(joined, "-safe") == "0"
    assert value(joined, "-map") == "0:v" and value(joined, "-c") == "copy"


@pytest.fixture(scope="module")
def red(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six frames of one colour, BT.601 h264, from lavfi."""
    path = tmp_path_factory.mktemp("lavfi") / "red.mkv"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-nostdin", "-f", "lavfi", "-i", "color=c=0xC83C28:s=32x24:r=24:d=0.25",
         "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-colorspace", "smpte170m",
         "-color_primaries", "smpte170m", "-color_trc", "smpte170m", "-color_range", "tv", str(path)],
        check=True,
    )  # fmt: skip
    return path


@pytest.mark.parametrize("deinterlace", [False, True])
def test_the_decode_pipe_gives_every_frame_in_rgb24(red: Path, deinterlace: bool) -> None:
    info = probe.probe(red)
    done = stopping.run(ffmpeg.decode_cmd(whole(info, str(red)), info, deinterlace))
    assert done.returncode == 0, done.stderr.decode()
    frames = np.frombuffer(done.stdout, np.uint8).reshape(-1, 24, 32, 3)
    assert len(frames) == info.frames == 6  # one frame out per frame in, deinterlaced or not
    assert np.abs(frames.reshape(-1, 3).mean(0) - (200, 60, 40)).max() <= 3


def test_the_encode_pipe_writes_the_frames_at_their_source_times(tmp_path: Path) -> None:
    info = source_info()
    dst = tmp_path / "up.mkv"
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (info.frames, 48, 64, 3), dtype=np.uint8)
    cmd = ffmpeg.encode_cmd(dst, info, whole(info), 2, ffmpeg.Encode(preset="ultrafast"))
    done = stopping.run(cmd, input=frames.tobytes())
    assert done.returncode == 0, done.stderr.decode()
    _, pts, _ = probe.packet_times(dst, "v:0")
    assert pts == list(VFR_PTS)  # the setpts expression's commas reached ffmpeg intact
    stream = probe.ffprobe_json(dst)["streams"][0]
    kept = ("codec_name", "pix_fmt", "width", "height", "color_space", "color_range", "color_transfer")
    assert [stream[k] for k in kept] == ["h264", "yuv420p", 64, 48, "smpte170m", "tv", "smpte170m"]


def test_idet_reads_the_counts_of_the_graph_that_saw_the_frames(tmp_path: Path) -> None:
    """ffmpeg builds a -filter_complex graph once without frames first: its report (all zeros) is not
    the one to read."""
    woven = tmp_path / "woven.mkv"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-nostdin", "-f", "lavfi", "-i",
         "testsrc2=s=96x72:r=48:d=1,interlace=scan=tff", "-c:v", "ffv1", str(woven)],
        check=True,
    )  # fmt: skip
    tff, bff, progressive = probe.idet(woven, 0)
    assert tff > bff + progressive and tff >= 6


def test_the_codec_round_trip_commands_go_through_the_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    spawn = stopping.spawn

    def recording(cmd: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
        seen.append(list(cmd))
        return spawn(cmd, **kwargs)

    monkeypatch.setattr(stopping, "spawn", recording)
    frame = np.random.default_rng(1).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    out = degradations.codec_round_trip([frame, frame], "x264", 30)
    assert len(out) == 2 and out[0].shape == frame.shape
    encode, decode = seen
    assert (value(encode, "-vcodec"), value(encode, "-crf"), value(encode, "-g")) == ("libx264", "30", "1")
    assert value(encode, "-threads") == "1" and values(encode, "-pix_fmt") == ["rgb24", "yuv420p"]
    assert values(encode, "-f") == ["rawvideo", "h264"] and value(encode, "-s") == "24x16"
    assert values(decode, "-f") == ["h264", "rawvideo"] and value(decode, "-fps_mode") == "passthrough"
    assert not stopping.live_children()
