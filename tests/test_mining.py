"""Mining training frames out of video files (remaster.data.mining, through the ingest stage)."""

from __future__ import annotations

import csv
import hashlib
import os
import subprocess
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from remaster.config import IngestParams, MiningParams, load_params
from remaster.data import mining
from remaster.data.drawing import EPISODE_FPS, EPISODE_FRAMES, episode_drawings, episode_frames
from stages import demo, ingest

W, H = 384, 288  # the test episode; every clip below passes min_side unless it is meant not to
ALL_HOLDS = MiningParams(frames_per_minute=600)  # windows of 0.1 s: every hold of the episode offers
PARAMS = IngestParams(min_side=256, video=ALL_HOLDS)


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *args], check=True)


def _manifest(out: Path) -> list[dict[str, str]]:
    with open(out / "manifest.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _frames_of(rows: list[dict[str, str]], video: str) -> list[dict[str, str]]:
    return [r for r in rows if r["video"] == video]


def _tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for dirpath, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for name in sorted(files):
            p = Path(dirpath) / name
            st = p.stat()
            h.update(f"{p.relative_to(root)}|{st.st_size}|{st.st_mtime_ns}|{st.st_mode}|".encode())
            h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


@pytest.fixture(scope="module")
def episode(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo episode: a held still, a cut, 8 drawings on threes, a fade to black (24 fps)."""
    return demo.write_episode(tmp_path_factory.mktemp("episode") / "episode.mkv", W, H, seed=0)


def _first_pts(path: Path) -> int:
    out = subprocess.run(
        [
            *("ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "packet=pts"),
            *("-of", "csv=p=0", "-read_intervals", "%+#1", str(path)),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return int(out.split()[0])


def test_the_demo_episode_gives_exactly_its_drawings(episode: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    os.link(episode, src / "episode.mkv")
    summary = ingest.run(PARAMS, src, tmp_path / "out")
    rows = _manifest(tmp_path / "out")
    video, *frames = rows
    assert (video["source"], video["status"], video["video"]) == ("episode.mkv", "video", "")
    assert video["reason"].startswith("mined 9 frames from 60 over 2.5 s (2 shots, 9 holds;")
    assert video["crop"] == "" and video["deinterlaced"] == "False" and video["sar"] == ""
    # one frame per drawing: the held still once, then each drawing's first frame (mkv times in ms)
    t0 = _first_pts(episode)
    pts = [t0 + round(n * 1000 / EPISODE_FPS) for n in episode_drawings()]
    assert [int(r["pts"]) for r in frames] == pts
    assert [r["source"] for r in frames] == [f"episode.mkv#pts={p}" for p in pts]
    assert [float(r["time"]) for r in frames] == [p / 1000 for p in pts]
    assert [r["frame_type"] for r in frames] == ["I", "I", *["P"] * 7]  # keyframes start the shots
    assert all(int(r["packet_size"]) > 100 for r in frames)
    assert {(r["video"], r["width"], r["height"]) for r in frames} == {("episode.mkv", str(W), str(H))}
    assert summary["videos"] == 1 and summary["frames"] == 9
    # the kept frames are the pictures that were drawn
    drawn = list(episode_frames(W, H, seed=0))
    for n, r in zip(episode_drawings(), frames, strict=True):
        if r["status"] == "ok":
            with Image.open(tmp_path / "out" / "images" / f"{r['hash']}.png") as im:
                got = np.asarray(im, np.int16)
            want = np.frombuffer(drawn[n], np.uint8).reshape(H, W, 3).astype(np.int16)
            assert np.abs(got - want).mean() < 4, n


def test_frames_per_minute_keeps_one_per_window_and_prefers_a_new_shot(episode: Path) -> None:
    limits = mining.Limits(256, 10**9)
    t0 = Fraction(_first_pts(episode), 1000)
    one_a_second = mining.mine(episode, MiningParams(frames_per_minute=60), limits)
    # window [0, 1 s): the still; window [1, 2 s): the new shot's keyframe beats its larger drawings
    assert [f.time for f in one_a_second.frames] == [t0, t0 + 1]
    default = mining.mine(episode, MiningParams(), limits)  # one per 5 s
    assert len(default.frames) == 1


def test_bad_videos_are_rows_with_reasons_and_the_run_goes_on(episode: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    clip = src / "good.mp4"
    _ffmpeg("-i", str(episode), "-c", "copy", "-movflags", "+faststart", str(clip))
    data = clip.read_bytes()
    (src / "truncated.mp4").write_bytes(data[: len(data) * 6 // 10])
    _ffmpeg("-f", "lavfi", "-i", "sine=d=2", "-c:a", "aac", str(src / "audio_only.mkv"))
    (src / "empty.mkv").write_bytes(b"")
    (src / "notes.mp4").write_text("not a video at all\n")
    _ffmpeg("-i", str(episode), "-frames:v", "10", "-an", str(src / "ten_frames.mp4"))
    _ffmpeg("-i", str(episode), "-vf", "scale=320:240", "-an", str(src / "small.mp4"))
    black = f"color=black:s={W}x{H}:r={EPISODE_FPS}:d=1.5"
    _ffmpeg(
        "-f", "lavfi", "-i", black, "-i", str(episode),
        "-filter_complex", "[0:v][1:v]concat=n=2:v=1:a=0", "-c:v", "libx264", "-bf", "0", "-threads", "1",
        str(src / "black_start.mkv"),
    )  # fmt: skip
    demo.write_images(src, 1, seed=3, width=320, height=256)
    before = _tree_hash(src)
    summary = ingest.run(PARAMS, src, tmp_path / "out")
    rows = {r["source"]: r for r in _manifest(tmp_path / "out")}

    def reason(name: str) -> str:
        assert rows[name]["status"] == "rejected", rows[name]
        return rows[name]["reason"]

    assert reason("truncated.mp4").startswith("truncated: ")
    assert reason("audio_only.mkv") == "no_video_stream: only audio"
    assert reason("empty.mkv") == "zero_byte"
    assert reason("notes.mp4").startswith("corrupt: ")
    assert reason("ten_frames.mp4") == "too_short: 0.42 s < 1 s"
    assert reason("small.mp4") == "too_small: short side 240 < 256"
    assert rows["good.mp4"]["status"] == "video" and len(_frames_of(list(rows.values()), "good.mp4")) == 9
    assert rows["demo_000.png"]["status"] == "ok"
    # the black second and a half is skipped, the episode after it is mined
    mined = _frames_of(list(rows.values()), "black_start.mkv")
    assert len(mined) == 9 and min(float(r["time"]) for r in mined) >= 1.5
    assert "(3 shots, 9 holds; skipped 38 black" in rows["black_start.mkv"]["reason"]  # 36 + the fade's 2
    assert summary["videos"] == 2 and summary["rejected"] == 6
    assert _tree_hash(src) == before, "the source folder must not change"


def test_letterbox_interlacing_and_non_square_pixels(episode: Path, tmp_path: Path) -> None:
    """Bars are cropped, the fields are woven back, and 4:3 samples shrink to square pixels."""
    src = tmp_path / "src"
    src.mkdir()
    _ffmpeg(
        "-i", str(episode), "-vf", f"pad={W}:{H + 144}:0:72:black,setsar=4/3,setfield=tff",
        "-c:v", "libx264", "-bf", "0", "-flags", "+ildct+ilme", "-x264-params", "tff=1", "-threads", "1",
        "-an", str(src / "broadcast.ts"),
    )  # fmt: skip
    ingest.run(IngestParams(min_side=200, video=ALL_HOLDS), src, tmp_path / "out")
    video, *frames = _manifest(tmp_path / "out")
    assert video["status"] == "video", video
    height = round(H * 3 / 4)  # the denser axis (rows) is shrunk: no pixel is made up
    expected = {"crop": f"{W}:{H}:0:72", "deinterlaced": "True", "sar": "4:3", "width": str(W)}
    assert {k: video[k] for k in expected} == expected and video["height"] == str(height)
    assert len(frames) == 9
    assert all({k: r[k] for k in expected} == expected and r["height"] == str(height) for r in frames)
    drawn = np.frombuffer(next(iter(episode_frames(W, H, seed=0))), np.uint8).reshape(H, W, 3)
    want = np.asarray(Image.fromarray(drawn).resize((W, height), Image.Resampling.LANCZOS), np.int16)
    with Image.open(tmp_path / "out" / "images" / f"{frames[0]['hash']}.png") as im:
        assert np.abs(np.asarray(im, np.int16) - want).mean() < 6  # no bar left, nothing squashed twice


def test_same_files_same_frames_and_a_rerun_decodes_nothing(
    episode: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    os.link(episode, src / "a.mkv")
    demo.write_images(src, 2, seed=5, width=320, height=256)
    first = ingest.run(PARAMS, src, tmp_path / "one")
    ingest.run(PARAMS, src, tmp_path / "two")
    assert (tmp_path / "one/manifest.csv").read_bytes() == (tmp_path / "two/manifest.csv").read_bytes()
    pngs = sorted(p.name for p in (tmp_path / "one/images").iterdir())
    assert pngs == sorted(p.name for p in (tmp_path / "two/images").iterdir())
    for name in pngs:
        assert (tmp_path / "one/images" / name).read_bytes() == (tmp_path / "two/images" / name).read_bytes()
    assert first["decoded"] == 3

    calls: list[Path] = []
    real_mine = mining.mine

    def counting_mine(path: Path, *args: object, **kwargs: object) -> mining.Mined:
        calls.append(path)
        return real_mine(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(mining, "mine", counting_mine)
    again = ingest.run(PARAMS, src, tmp_path / "one")
    assert again["decoded"] == 0 and calls == []
    assert (tmp_path / "one/manifest.csv").read_bytes() == (tmp_path / "two/manifest.csv").read_bytes()

    # a video setting re-mines the videos only; the images keep their cache
    fewer = IngestParams(min_side=256, video=MiningParams(frames_per_minute=60))
    third = ingest.run(fewer, src, tmp_path / "one")
    assert third["decoded"] == 1 and calls == [src / "a.mkv"]
    assert third["frames"] == 2

    # a kept frame whose PNG went missing: its video is mined again, to the same bytes
    rows = _frames_of(_manifest(tmp_path / "one"), "a.mkv")
    gone = tmp_path / "one/images" / f"{rows[1]['hash']}.png"
    kept = gone.read_bytes()
    gone.unlink()
    fourth = ingest.run(fewer, src, tmp_path / "one")
    assert fourth["decoded"] == 1 and gone.read_bytes() == kept


def _frame(n: int, size: int = 10, intra: bool = False, fps: int = 24) -> mining.Frame:
    t = Fraction(n, fps)
    return mining.Frame(n, n, t, "I" if intra else "P", intra, size, False, t)


def test_chooser_holds_cuts_black_and_fades() -> None:
    """The decisions on small grey frames, without ffmpeg."""
    x, y = np.meshgrid(np.arange(64), np.arange(48))
    a = (x * 4).astype(np.uint8)  # a horizontal ramp
    b = (((x // 8 + y // 8) % 2) * 200 + 30).astype(np.uint8)  # a checkerboard: another histogram
    c = (y * 3 + 60).astype(np.uint8)  # a vertical ramp
    noise = np.random.default_rng(0).integers(-1, 2, a.shape)
    black = np.full(a.shape, 8, np.uint8)
    seq = [
        (a, 1000, True), ((a + noise).clip(0, 255).astype(np.uint8), 10, False), (a, 10, False),
        (b, 10, False), (b, 500, False), (b, 20, False),  # a cut; the largest packet of the hold wins
        (black, 5, False), (black, 5, False),
        (c, 300, False), (c, 10, False),  # after black: a new shot
        ((c * 0.7).astype(np.uint8), 900, False), ((c * 0.4).astype(np.uint8), 900, False),  # fading
    ]  # fmt: skip
    chooser = mining.Chooser(MiningParams(frames_per_minute=3600))  # windows of 1/60 s
    for n, (grey, size, intra) in enumerate(seq):
        chooser.add(_frame(n, size, intra), grey)
    assert [f.n for f in chooser.finish()] == [0, 4, 8]
    s = chooser.stats
    assert (s.decoded, s.shots, s.holds, s.black, s.fading, s.flat) == (12, 3, 3, 2, 3, 0)


def test_chooser_window_prefers_a_new_shot_then_an_i_frame() -> None:
    x, y = np.meshgrid(np.arange(64), np.arange(48))
    a, b = (x * 4).astype(np.uint8), (((x // 8 + y // 8) % 2) * 200 + 30).astype(np.uint8)
    a2, a3 = a.copy(), a.copy()
    a2[10:20, 10:25] = 255 - a2[10:20, 10:25]  # new drawings in the same shot
    a3[30:40, 40:55] = 255 - a3[30:40, 40:55]

    def chosen(seq: list[tuple[int, np.ndarray, int, bool]]) -> list[int]:
        chooser = mining.Chooser(MiningParams(frames_per_minute=60))  # 1 s windows; 24 fps
        for n, grey, size, intra in seq:
            chooser.add(_frame(n, size, intra), grey)
        return [f.n for f in chooser.finish()]

    # in the window [1 s, 2 s): a frame from a shot not kept yet beats a larger packet ...
    assert chosen([(0, a, 100, True), (26, a2, 900, False), (36, b, 50, False)]) == [0, 36]
    # ... and among frames of the same shot, an I-frame beats a larger packet
    assert chosen([(0, a, 100, True), (26, a2, 900, False), (36, a3, 50, True)]) == [0, 36]
    assert chosen([(0, a, 100, True), (26, a2, 900, False), (36, a3, 50, False)]) == [0, 26]


def test_video_params_are_checked_when_params_load(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("ingest:\n  video:\n    frames_per_minute: 0\n")
    with pytest.raises(ValueError, match=r"ingest\.video\.frames_per_minute"):
        load_params(params)
    for bad, key in (("deinterlace: maybe", "deinterlace"), ("square_pixels: wide", "square_pixels")):
        params.write_text(f"ingest:\n  video:\n    {bad}\n")
        with pytest.raises(ValueError, match=rf"ingest\.video\.{key}: '"):
            load_params(params)
    params.write_text("ingest:\n  video:\n    fps: 3\n")
    with pytest.raises(ValueError, match=r"ingest\.video: unknown key\(s\) fps"):
        load_params(params)


@pytest.mark.parametrize(
    ("size", "sar", "mode", "expected"),
    [
        ((1440, 1080), Fraction(4, 3), "shrink", (1440, 810)),
        ((1440, 1080), Fraction(4, 3), "stretch", (1920, 1080)),
        ((720, 480), Fraction(8, 9), "shrink", (640, 480)),
        ((720, 480), Fraction(8, 9), "keep", (720, 480)),
        ((1920, 1080), Fraction(1), "shrink", (1920, 1080)),
    ],
)
def test_square_size(size: tuple[int, int], sar: Fraction, mode: str, expected: tuple[int, int]) -> None:
    assert mining.square_size(*size, sar, mode) == expected


def test_demo_writes_the_episode_only_when_asked(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("demo: {n_images: 1, width: 64, height: 48, seed: 2}\n")
    base = ["--params", str(params), "--output", str(tmp_path / "imgs"), "--no-clip"]
    assert demo.main(base) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs", "params.yaml"]
    assert demo.main([*base, "--episode", str(tmp_path / "ep.mkv")]) == 0
    first = (tmp_path / "ep.mkv").read_bytes()
    out = subprocess.run(
        [
            *("ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries"),
            *("stream=width,height,nb_read_frames", "-of", "csv=p=0", str(tmp_path / "ep.mkv")),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert out == f"64,48,{EPISODE_FRAMES}" and len(list(episode_frames(64, 48))) == EPISODE_FRAMES
    assert demo.main([*base, "--episode", str(tmp_path / "ep.mkv")]) == 0
    assert (tmp_path / "ep.mkv").read_bytes() == first  # the same bytes every time
