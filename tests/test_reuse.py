"""Held frames reuse the model's output: exact counts on a clip with holds, a pan and a cut, and
never across a segment start or a scene cut."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flows import episode  # Prefect sets up its logging on import: before caplog's handler, not after
from remaster.cli.main import main as cli
from remaster.video import ffmpeg, probe
from remaster.video.reuse import HeldFrames, ReuseRule

W, H = 64, 48


def drawing(seed: int, shift: int = 0) -> np.ndarray:
    """Flat colour with a few hard-edged boxes, as cel animation looks: (H, W, 3) uint8."""
    rng = np.random.default_rng(seed)
    img = np.full((H, W, 3), rng.integers(40, 200, 3), np.uint8)
    for _ in range(4):
        x, y = rng.integers(0, W - 16), rng.integers(0, H - 16)
        img[y : y + 12, x : x + 12] = rng.integers(0, 255, 3)
    return np.roll(img, shift, axis=1)


# frame -> picture: A held 6 frames, a pan of A over 3 frames, a cut to B held 3, then (after the
# keyframe that starts the second segment at frame 12) B held 4 more.
PLAN = [("A", 0)] * 6 + [("A", 1), ("A", 2), ("A", 3)] + [("B", 0)] * 7
# computed: frame 0, the pan's 3, the cut's first B, and frame 12, where the second segment starts
COMPUTED = [0, 6, 7, 8, 9, 12]


def write_clip(path: Path, pictures: list[np.ndarray], gop: int = 12) -> Path:
    """Losslessly coded (x264 -qp 0, 4:4:4), so held frames decode byte-identical."""
    cmd = ["ffmpeg", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{W}x{H}", "-r", "25"]
    cmd += ["-i", "-", "-c:v", "libx264", "-qp", "0", "-preset", "ultrafast", "-pix_fmt", "yuv444p"]
    cmd += ["-g", str(gop), "-keyint_min", str(gop), "-sc_threshold", "0", str(path)]
    subprocess.run(cmd, input=b"".join(p.tobytes() for p in pictures), check=True)
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pics = {"A": 1, "B": 2}
    frames = [drawing(pics[name], shift) for name, shift in PLAN]
    return write_clip(tmp_path_factory.mktemp("reuse") / "held.mkv", frames)


def counting_nearest(seen: list[np.ndarray]):  # type: ignore[no-untyped-def]
    def up(frames: np.ndarray) -> np.ndarray:
        seen.extend(frames.copy())
        return frames.repeat(2, axis=1).repeat(2, axis=2)

    return up


@pytest.mark.parametrize("mode", ["exact", "near"])
def test_reuse_computes_exactly_the_new_drawings_per_segment(clip: Path, tmp_path: Path, mode: str) -> None:
    info = probe.probe(clip)
    segments = ffmpeg.split(info, tmp_path / "src", 0.48)
    assert [s.frames for s in segments] == [12, 4]
    seen: list[np.ndarray] = []
    results = []
    for seg in segments:
        results.append(
            ffmpeg.upscale_segment(
                seg, tmp_path / f"out{seg.index}.mkv", info, counting_nearest(seen), 2,
                ffmpeg.Encode(preset="ultrafast"), batch=2, keep_frames=tmp_path / "frames",
                reuse=ReuseRule(mode),
            )
        )  # fmt: skip
    assert [(r.frames, r.computed) for r in results] == [(12, 5), (4, 1)]
    drawn = [drawing({"A": 1, "B": 2}[name], shift).astype(int) for name, shift in PLAN]
    assert len(seen) == len(COMPUTED)
    for frame, i in zip(seen, COMPUTED, strict=True):  # (YCbCr rounding moves a level at most)
        assert np.abs(frame.astype(int) - drawn[i]).max() <= 1, i
    # a held frame is written as the output of the last computed frame: its own drawing
    outputs = [np.asarray(Image.open(tmp_path / "frames" / f"{i:06d}.png")) for i in range(len(PLAN))]
    for i, out in enumerate(outputs):
        ref = max(c for c in COMPUTED if c <= i)
        assert np.array_equal(out, outputs[ref]), i
        assert np.abs(out[::2, ::2].astype(int) - drawn[i]).max() <= 1, i
    off = ffmpeg.upscale_segment(
        segments[0], tmp_path / "off.mkv", info, counting_nearest([]), 2, ffmpeg.Encode(preset="ultrafast")
    )
    assert (off.frames, off.computed) == (12, 12)
    assert ffmpeg.count_held(info, segments, ReuseRule(mode)) == (16, 6)


def test_near_catches_a_small_local_change_and_a_slow_fade() -> None:
    base = drawing(3)
    held = HeldFrames(ReuseRule("near", 1.5))
    assert not held.repeats(base)
    held.computed(base)
    noisy = np.clip(base.astype(int) + np.random.default_rng(0).integers(-2, 3, base.shape), 0, 255)
    assert held.repeats(noisy.astype(np.uint8))  # codec noise on a held drawing
    blink = base.copy()
    blink[20:24, 30:34] = 255 - blink[20:24, 30:34]  # a 4x4 eye closes
    assert not held.repeats(blink)
    # a fade: each frame 1 level darker than the last; the reference is the last computed frame,
    # so the difference cannot creep past the tolerance along the fade
    computed = []
    for k in range(1, 9):
        frame = np.clip(base.astype(int) - k, 0, 255).astype(np.uint8)
        if not held.repeats(frame):
            held.computed(frame)
            computed.append(k)
    assert computed == [2, 4, 6, 8]
    with pytest.raises(ValueError, match="reuse must be one of off, exact, near, got 'some'"):
        ReuseRule("some")


def test_a_long_hold_is_one_model_call_and_bounded(tmp_path: Path) -> None:
    still = write_clip(tmp_path / "still.mkv", [drawing(5)] * 120, gop=1000)
    info = probe.probe(still)
    seg = ffmpeg.split(info, tmp_path / "src", 0)[0]
    sizes: list[int] = []

    def up(frames: np.ndarray) -> np.ndarray:
        sizes.append(len(frames))
        return frames.repeat(2, axis=1).repeat(2, axis=2)

    result = ffmpeg.upscale_segment(seg, tmp_path / "o.mkv", info, up, 2, ffmpeg.Encode(preset="ultrafast"),
                                   batch=4, reuse=ReuseRule("near"))  # fmt: skip
    assert (result.frames, result.computed, sizes) == (120, 1, [1])
    assert probe.count_packets(tmp_path / "o.mkv") == 120


def test_dry_run_prints_what_reuse_saves_and_upscales_nothing(clip: Path, tmp_path: Path, capsys) -> None:
    assert cli(["video", str(clip), "--dry-run-reuse", "--segment-seconds", "0.48", "--no-track"]) == 0
    out = capsys.readouterr().out
    assert "16 frames in 2 segments" in out
    assert "| exact | 6 | 10 | 2.67x |" in out and "| near (tolerance 1.5) | 6 | 10 | 2.67x |" in out
    assert not list(tmp_path.iterdir())


def test_the_flow_reports_computed_and_reused_frames_and_verifies(
    api_url: str, clip: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from models.a2n import A2N, A2NConfig
    from models.checkpoint import save_checkpoint
    from remaster.config import RemasterParams

    cfg = A2NConfig(scale=2, n_feat=8, n_up_feat=8, n_blocks=1)
    save_checkpoint(tmp_path / "tiny.pt", A2N(cfg), cfg)
    summaries = {}
    for mode in ("off", "near"):
        p = RemasterParams(scale=2, model=str(tmp_path / "tiny.pt"), segment_seconds=0.48, preset="ultrafast",
                           workers=1, reuse=mode)  # fmt: skip
        out = tmp_path / f"{mode}.mkv"
        with caplog.at_level(logging.INFO):
            summaries[mode] = episode.with_workers(p)(str(clip), str(out), p)
        assert all(check["ok"] for check in summaries[mode]["verify"].values()), mode
        assert probe.count_packets(out) == 16
    off, near = summaries["off"]["run"], summaries["near"]["run"]
    assert (off["frames_computed"], off["frames_reused"]) == (16, 0)
    assert (near["frames_computed"], near["frames_reused"]) == (6, 10)
    assert "16/16 frames" in caplog.text and "6 computed, 10 reused" in caplog.text
    assert (
        "16 frames upscaled: 6 computed by the model, 10 reused held frames (2.67x fewer calls)"
        in caplog.text
    )
    assert summaries["off"]["verify"] == summaries["near"]["verify"]


_MEMORY = """
import json, sys, tracemalloc
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from test_reuse import counting_nearest, drawing, write_clip
from remaster.video import ffmpeg, probe
from remaster.video.reuse import ReuseRule
tmp, peaks = Path(sys.argv[1]), {}
for n in (300, 1500):
    clip = write_clip(tmp / f"still{n}.mkv", [drawing(6)] * n, gop=100000)
    info = probe.probe(clip)
    seg = ffmpeg.split(info, tmp / f"src{n}", 0)[0]
    tracemalloc.start()
    result = ffmpeg.upscale_segment(seg, tmp / f"o{n}.mkv", info, counting_nearest([]), 2,
                                    ffmpeg.Encode(preset="ultrafast"), batch=4, reuse=ReuseRule("near"))
    peaks[n] = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert (result.frames, result.computed) == (n, 1), result
print(json.dumps(peaks))
"""


def test_a_long_hold_uses_constant_memory(tmp_path: Path) -> None:
    """Peak Python memory of a 1500-frame still is that of a 300-frame one: nothing grows with
    the length of a hold. Measured in a fresh interpreter, where no other thread allocates (a
    Prefect run earlier in this process leaves its log and event workers behind)."""
    import json
    import sys

    tests = Path(__file__).resolve().parent
    out = subprocess.run([sys.executable, "-c", _MEMORY, str(tmp_path), str(tests)], capture_output=True,
                         text=True, timeout=300, cwd=tests.parent)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    peaks = {int(k): v for k, v in json.loads(out.stdout.strip().splitlines()[-1]).items()}
    assert peaks[1500] < 1.2 * peaks[300] + 100_000, peaks
