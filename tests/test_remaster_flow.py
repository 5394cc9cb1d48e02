"""The remaster-episode flow end to end with a tiny model: in process, killed and resumed through
the CLI, and through ``remaster watch``. One Prefect test server serves the whole module."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import SHARED
from PIL import Image
from test_video import make_episode

from flows import episode, watch
from models.a2n import A2N, A2NConfig
from models.checkpoint import save_checkpoint
from remaster.cli.video import main as video_main
from remaster.cli.watch import main as watch_main
from remaster.commandline import LogProgress, progress_bar, run_main
from remaster.config import RemasterParams
from remaster.tracking import NullTracker
from remaster.video import probe

ROOT = Path(__file__).resolve().parents[1]


class RecordingTracker(NullTracker):
    """Keeps what the flow tracks, for the test to look at."""

    def __init__(self) -> None:
        self.runs: list[tuple[str, str]] = []
        self.params: dict[str, Any] = {}
        self.metrics: dict[str, float] = {}
        self.artifacts: dict[str, tuple[int, ...]] = {}
        self.dicts: dict[str, Any] = {}

    @contextlib.contextmanager
    def start_run(
        self, experiment: str, run_name: str, tags: Mapping[str, str] | None = None
    ) -> Iterator[None]:
        self.runs.append((experiment, run_name))
        self.run_id = "run-1"
        yield
        self.run_id = None

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.params.update(params)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.metrics.update(metrics)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.artifacts[path.name] = np.asarray(Image.open(path)).shape

    def log_dict(self, data: Mapping[str, Any], name: str) -> None:
        self.dicts[name] = json.loads(json.dumps(data, default=str))


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("assets")
    cfg = A2NConfig(scale=2, n_feat=8, n_up_feat=8, n_blocks=1)
    save_checkpoint(folder / "tiny_x2.pt", A2N(cfg), cfg)
    (folder / "none.yaml").write_text("{}\n")  # the built-in defaults
    return {"model": folder / "tiny_x2.pt", "episode": make_episode(folder), "none": folder / "none.yaml"}


def settings(assets: dict[str, Path], seconds: float = 0.5) -> RemasterParams:
    return RemasterParams(
        scale=2, model=str(assets["model"]), segment_seconds=seconds, preset="ultrafast", workers=1
    )


def cli_args(assets: dict[str, Path], seconds: float = 0.5) -> list[str]:
    flags = ["--scale", "2", "--model", str(assets["model"]), "--segment-seconds", str(seconds)]
    return [*flags, "--preset", "ultrafast", "--workers", "1", "--no-track", "--params", str(assets["none"])]


@pytest.fixture(scope="module")
def baseline(
    api_url: str, assets: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("baseline") / "episode_x2.mkv"
    tracker = RecordingTracker()
    p = settings(assets)
    summary = episode.with_workers(p)(str(assets["episode"]), str(out), p, tracker=tracker)
    return {"summary": summary, "tracker": tracker, "out": out}


def test_the_flow_remasters_an_episode_and_tracks_it(
    assets: dict[str, Path], baseline: dict[str, Any]
) -> None:
    summary, out = baseline["summary"], baseline["out"]
    assert out.exists() and not out.with_name(out.name + ".parts").exists()
    assert summary["frames"] == 48 and summary["segments"] == 4 and summary["run"]["segments_reused"] == 0
    assert all(check["ok"] for check in summary["verify"].values())
    assert summary["verify"]["size"]["actual"] == [192, 144]
    info = probe.probe(out)
    assert info.frames == 48 and info.streams[1:] == probe.probe(assets["episode"]).streams[1:]
    assert probe.stream_hashes(out, "a") == probe.stream_hashes(assets["episode"], "a")
    trk = baseline["tracker"]
    assert trk.runs == [("remaster", "episode-x2")]
    assert trk.params["model_sha256"] == summary["model"]["sha256"] and trk.params["remaster.scale"] == 2
    assert trk.metrics["frames"] == 48 and trk.metrics["fps"] > 0 and "seconds_upscale" in trk.metrics
    assert trk.artifacts["sample_bicubic_vs_a2n.png"] == (144, 2 * 192, 3)  # bicubic | A2N
    assert trk.dicts["summary.json"]["verify"]["frames"]["ok"]


@pytest.mark.parametrize(
    ("codec", "weights"),
    [("ffv1", "a2n_anime_x2"), ("libx264", "a2n_anime_video_x2"), ("mpeg2video", "a2n_anime_dvd_x2")],
)
def test_without_a_model_the_source_codec_chooses_the_weights(
    api_url: str, tmp_path: Path, codec: str, weights: str
) -> None:
    # a lossless capture has no codec damage to undo, and the video weights score lower on clean
    # input; a DVD's MPEG-2 is never clean, so it gets the unblended fine-tune; the rest, video
    src = tmp_path / f"{codec}.mkv"
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", "testsrc2=s=48x36:r=12:d=0.5",
         "-pix_fmt", "yuv420p", "-c:v", codec, str(src)],
        check=True,
    )  # fmt: skip
    assert probe.probe(src).codec == {"ffv1": "ffv1", "libx264": "h264", "mpeg2video": "mpeg2video"}[codec]
    p = RemasterParams(scale=2, model="", segment_seconds=1.0, preset="ultrafast", workers=1)
    summary = episode.with_workers(p)(str(src), str(tmp_path / "out.mkv"), p)
    assert Path(summary["model"]["path"]).name == f"{weights}.safetensors"
    assert summary["frames"] == 6 and all(check["ok"] for check in summary["verify"].values())


def test_a_dvd_program_stream_comes_through_with_its_audio(
    api_url: str, assets: dict[str, Path], tmp_path: Path
) -> None:
    # an MPEG program stream (a DVD's .vob or .mpg) leaves packets without a pts, which the split's
    # matroska muxer refused until the split generated them; and its GOPs are open (B-frames that
    # lean on the GOP before), so cutting at 0.5 s would lose frames: it is split as one segment
    src = tmp_path / "dvd.mpg"
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", "testsrc2=s=64x48:r=25:d=1.2",
         "-f", "lavfi", "-i", "sine=frequency=440:duration=1.2", "-c:v", "mpeg2video", "-q:v", "6",
         "-bf", "2", "-c:a", "mp2", str(src)],
        check=True,
    )  # fmt: skip
    summary = episode.with_workers(settings(assets))(str(src), str(tmp_path / "out.mkv"), settings(assets))
    assert summary["frames"] == 30 and summary["segments"] == 1
    assert all(check["ok"] for check in summary["verify"].values())
    assert probe.stream_hashes(tmp_path / "out.mkv", "a") == probe.stream_hashes(src, "a")


def test_the_shared_one_piece_clip_comes_through_whole(
    api_url: str, assets: dict[str, Path], tmp_path: Path
) -> None:
    # the done-when clip of the remaster issue: a real h264 + AAC encode, cut at its own keyframes
    # (the 1080p clip beside it costs 2 s a frame even with this tiny model, at 4K out: its probe
    # and split are tested in test_video instead)
    src = SHARED / "data/video/realesrgan_onepiece_demo.mp4"
    source = probe.probe(src)
    out = tmp_path / "onepiece_x2.mkv"
    p = dataclasses.replace(settings(assets, seconds=3.0), workers=2)  # its two segments at once
    summary = episode.with_workers(p)(str(src), str(out), p)
    assert summary["segments"] >= 2 and all(check["ok"] for check in summary["verify"].values())
    info = probe.probe(out)
    assert info.frames == source.frames == probe.count_packets(src) == 181
    assert (info.width, info.height) == (1280, 960)
    assert abs(info.duration - source.duration) < 1 / 23.976  # within one frame
    assert probe.stream_hashes(out, "a") == probe.stream_hashes(src, "a")  # the audio, byte for byte


def test_a_killed_run_resumes_with_its_finished_segments(
    api_url: str, assets: dict[str, Path], baseline: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "episode_x2.mkv"
    cmd = [sys.executable, "-m", "remaster.cli.video", str(assets["episode"]), "-o", str(out)]
    cmd += cli_args(assets)
    cmd += ["--summary", str(tmp_path / "summary.json"), "--metrics", str(tmp_path / "metrics.json")]
    env = {**os.environ, "PREFECT_API_URL": api_url}  # the module's test server, not a new one
    parts = out.with_name(out.name + ".parts")
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            deadline = time.monotonic() + 180
            while not list(parts.glob("*/out/seg_*.mkv")):
                assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "no segment finished in time"
                time.sleep(0.02)
        finally:
            os.killpg(first.pid, signal.SIGKILL)  # the run and its ffmpeg children, mid-segment
            first.wait()
    finished = sorted(parts.glob("*/out/seg_*.mkv"))
    assert 1 <= len(finished) < 4 and not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".mkv"] == []  # nothing looks finished
    second = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    logs = second.stdout + second.stderr
    assert second.returncode == 0, logs[-3000:]
    assert f"4 segments: {len(finished)} reused from an earlier run, {4 - len(finished)} to upscale" in logs
    assert out.exists() and not parts.exists()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert "run" not in summary and all(check["ok"] for check in summary["verify"].values())
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["verified"] is True and metrics["frames"] == 48 and metrics["max_drift_s"] <= 0.002
    assert probe.count_packets(out) == probe.count_packets(baseline["out"]) == 48
    assert probe.stream_hashes(out, "a") == probe.stream_hashes(baseline["out"], "a")


def test_watch_once_remasters_a_dropped_file_once(
    api_url: str, assets: dict[str, Path], tmp_path: Path
) -> None:
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    inbox.mkdir()
    shutil.copy(assets["episode"], inbox / "ep01.mkv")
    (inbox / "notes.txt").write_text("not a video: recorded as skipped, never run")
    argv = [
        str(inbox),
        "-o",
        str(out),
        "--once",
        "--interval",
        "0.05",
        "--settle",
        "2",
        *cli_args(assets, 0),
    ]
    assert watch_main(argv) == 0
    result = out / "ep01_x2.mkv"
    assert probe.count_packets(result) == 48
    state = json.loads((out / watch.STATE).read_text())
    assert sorted(state) == ["ep01.mkv", "notes.txt"] and state["ep01.mkv"]["status"] == "done"
    assert (
        state["notes.txt"]["status"] == "skipped" and state["notes.txt"]["error"] == "not a video file name"
    )
    made = result.stat().st_mtime_ns
    assert watch_main(argv) == 0  # a restart remembers what it did
    assert result.stat().st_mtime_ns == made


def test_bad_input_and_existing_output_fail_clearly(
    api_url: str, assets: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "notes.mp4").write_text("not a video\n")
    assert video_main([str(tmp_path / "notes.mp4"), "-o", str(tmp_path / "out.mkv"), *cli_args(assets)]) == 1
    assert "not a video file ffprobe can read" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.mp4"]  # nothing half-written
    (tmp_path / "out.mkv").write_bytes(b"precious")
    argv = [str(assets["episode"]), "-o", str(tmp_path / "out.mkv"), *cli_args(assets)]
    assert run_main(video_main, argv) == 2  # a user error, refused before the flow starts
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "out.mkv").read_bytes() == b"precious"


def test_progress_off_a_terminal_goes_to_the_log(caplog: pytest.LogCaptureFixture) -> None:
    assert isinstance(progress_bar(5), LogProgress)  # pytest's stderr is not a terminal
    log = logging.getLogger("remaster.test.progress")
    with (
        caplog.at_level(logging.INFO, logger=log.name),
        LogProgress(10, initial=4, unit="frame", log=log) as bar,
    ):
        bar.update(3)  # within the 30 s interval: silent
        bar.update(3)  # the last frame: always said
    lines = [r.getMessage() for r in caplog.records if r.name == log.name]
    assert len(lines) == 1 and lines[0].startswith("10/10 frames, ") and lines[0].endswith("00:00:00 left")
