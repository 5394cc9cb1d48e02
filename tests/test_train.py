"""The train stage on a tiny packed HDF5, a tiny A2N and a real MLflow SQLite store."""
# ruff: noqa: E402  (the environment below must be set before torch is imported)

from __future__ import annotations

import os

# OpenMP threads that sleep rather than spin while they wait: on a shared, loaded 2-core
# machine, spinning threads make each step of the tiny model 30 to 60 times slower. OpenMP
# reads this when torch is first imported (so conftest.py is the surer place for it).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# For the subprocesses: quiet, and one thread (the stage reads OMP_NUM_THREADS at each run).
QUIET_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "OMP_WAIT_POLICY": "PASSIVE",
    "OMP_NUM_THREADS": "1",
}

import csv
import dataclasses
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch

from models.a2n import is_upsampler_key
from models.checkpoint import read_checkpoint
from remaster.config import ModelParams, TrainParams
from remaster.data.imaging import downscale
from remaster.tracking import MlflowTracker, NullTracker
from stages import train

ROOT = Path(__file__).resolve().parents[1]
TINY = ModelParams(n_feat=8, n_up_feat=8, n_blocks=2)
HASH = "0123abcd"


def _tile(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth random RGB pattern: a few sinusoids with random frequencies and phases."""
    y, x = np.mgrid[0:size, 0:size] / size
    out = np.zeros((size, size, 3))
    for c in range(3):
        for _ in range(3):
            fx, fy, ph = rng.uniform(1, 6), rng.uniform(1, 6), rng.uniform(0, 6.3)
            out[..., c] += np.sin(2 * np.pi * (fx * x + fy * y) + ph)
    out = (out - out.min()) / (np.ptp(out) + 1e-9)
    return np.round(out * 255).astype(np.uint8)


def _pack(path: Path, n: int, seed: int, size: int = 96, manifest_hash: str = HASH) -> Path:
    rng = np.random.default_rng(seed)
    hr = np.stack([_tile(rng, size) for _ in range(n)])
    with h5py.File(path, "w") as f:
        f.create_dataset("hr", data=hr, chunks=(1, size, size, 3))
        for s in (2, 4):
            f.create_dataset(f"lr_x{s}", data=np.stack([downscale(t, s) for t in hr]))
        f.attrs.update(
            manifest_hash=manifest_hash, scales=[2, 4], kernel="bicubic", tile_size=size, code_version="test"
        )
    return path


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Any:
    """The stage sets torch's thread count from OMP_NUM_THREADS; give the others theirs back."""
    threads, env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    yield
    torch.set_num_threads(threads)
    if env is None:
        os.environ.pop("OMP_NUM_THREADS")
    else:
        os.environ["OMP_NUM_THREADS"] = env


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("packed")
    return _pack(d / "train.h5", 6, seed=1), _pack(d / "val.h5", 2, seed=2)


def _params(**kw: Any) -> TrainParams:
    base = dict(scale=2, iterations=12, batch_size=4, hr_crop=32, lr=2e-3, val_every=4, seed=0, model=TINY)
    return TrainParams(**{**base, **kw})  # type: ignore[arg-type]


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def tracked(data: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One tracked 40-step x2 run that the next tests inspect."""
    tmp = tmp_path_factory.mktemp("tracked")
    tracker = MlflowTracker(f"sqlite:///{tmp}/mlflow.db")
    p = _params(iterations=40, val_every=10)
    summary = train.run(
        p,
        *data,
        tmp / "runs",
        tracker,
        metrics_path=tmp / "metrics.json",
        plots_dir=tmp / "plots",
        progress=False,
    )
    return {"tmp": tmp, "tracker": tracker, "summary": summary, "params": p}


def test_short_run_lowers_loss_and_writes_outputs(tracked: dict[str, Any]) -> None:
    tmp, s = tracked["tmp"], tracked["summary"]
    assert s["step"] == 40 and s["resumed_from"] is None
    loss = _rows(tmp / "plots" / "loss.csv")
    assert [int(r["step"]) for r in loss] == list(range(1, 41))
    first, last = (np.mean([float(r["loss"]) for r in rows]) for rows in (loss[:5], loss[-5:]))
    assert last < 0.8 * first
    val = _rows(tmp / "plots" / "val.csv")
    assert [int(r["step"]) for r in val] == [10, 20, 30, 40]
    assert set(val[0]) == {"step", "psnr_y", "ssim_y", "bicubic_psnr_y", "bicubic_ssim_y"}
    assert len({r["bicubic_psnr_y"] for r in val}) == 1  # computed once
    metrics = json.loads((tmp / "metrics.json").read_text())
    assert metrics["step"] == 40 and metrics["samples_per_s"] > 0
    assert metrics["best_psnr_y"] == s["best_psnr_y"]
    assert metrics["best_psnr_y"] == pytest.approx(max(float(r["psnr_y"]) for r in val), abs=1e-4)
    for name in ("loss.png", "psnr.png", "sample.png"):
        assert (tmp / "plots" / name).stat().st_size > 0
    last_ckpt = read_checkpoint(tmp / "runs" / "last.pt")
    assert last_ckpt["step"] == 40 and last_ckpt["data_hash"] == HASH
    assert last_ckpt["optimizer"]["state"] and last_ckpt["scheduler"]["last_epoch"] == 40
    assert last_ckpt["extra"]["loss"].shape == (40, 2)
    best = read_checkpoint(tmp / "runs" / "best.pt")
    assert best["step"] == metrics["best_step"] and best["optimizer"] is None


def test_mlflow_run_artifacts_and_registered_model(tracked: dict[str, Any]) -> None:
    client = tracked["tracker"].client
    run_id = tracked["summary"]["run_id"]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "train-x2"
    assert run.data.params["train.model.n_feat"] == "8" and run.data.params["train.lr"] == "0.002"
    assert run.data.tags["data_hash"] == HASH
    losses = client.get_metric_history(run_id, "loss")
    assert sorted(m.step for m in losses) == list(range(1, 41))
    assert [m.step for m in client.get_metric_history(run_id, "val_psnr_y")] == [10, 20, 30, 40]
    names = {a.path for a in client.list_artifacts(run_id, "model")}
    assert names == {"model/best.pt", "model/config.json"}
    plots = {a.path for a in client.list_artifacts(run_id, "plots")}
    assert {"plots/sample.png", "plots/loss.csv", "plots/loss.png"} <= plots
    version = client.get_model_version_by_alias("a2n-x2", "candidate")
    assert version.run_id == run_id and version.source.endswith("/model")


def test_resumed_run_matches_uninterrupted(
    data: tuple[Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    p = _params(iterations=6, val_every=3)
    train.run(p, *data, tmp_path / "full", NullTracker(), progress=False)
    # A step-schedule run may be extended: stopping at 3 is what a kill after step 3 leaves.
    train.run(dataclasses.replace(p, iterations=3), *data, tmp_path / "split", NullTracker(), progress=False)
    with caplog.at_level("INFO"):
        s = train.run(
            p, *data, tmp_path / "split", NullTracker(), metrics_path=tmp_path / "m.json", progress=False
        )
    assert s["resumed_from"] == 3 and "resuming from step 3" in caplog.text
    full, split = (read_checkpoint(tmp_path / d / "last.pt") for d in ("full", "split"))
    for k, v in full["model"].items():
        assert torch.equal(v, split["model"][k]), k
    assert torch.equal(full["extra"]["loss"], split["extra"]["loss"])
    # A finished run trains no more, but writes every output again (DVC deletes them first).
    (tmp_path / "m.json").unlink()
    plots = tmp_path / "plots"
    again = train.run(
        p,
        *data,
        tmp_path / "split",
        NullTracker(),
        metrics_path=tmp_path / "m.json",
        plots_dir=plots,
        progress=False,
    )
    assert again["step"] == 6 and json.loads((tmp_path / "m.json").read_text())["step"] == 6
    assert read_checkpoint(tmp_path / "split" / "last.pt")["step"] == 6
    written = {f.name for f in plots.iterdir()}
    assert written == {"loss.csv", "val.csv", "loss.png", "psnr.png", "sample.png"}


def test_changed_hparams_or_data_start_fresh(
    data: tuple[Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    p = _params(iterations=2, val_every=2)
    train.run(p, *data, tmp_path, NullTracker(), progress=False)
    with caplog.at_level("INFO"):
        s = train.run(
            dataclasses.replace(p, iterations=4, lr=1e-3), *data, tmp_path, NullTracker(), progress=False
        )
    assert s["resumed_from"] is None and "hparams (lr)" in caplog.text
    other = _pack(tmp_path / "other.h5", 6, seed=1, manifest_hash="fedcba98")
    caplog.clear()
    with caplog.at_level("INFO"):
        s = train.run(
            dataclasses.replace(p, iterations=4, lr=1e-3),
            other,
            data[1],
            tmp_path,
            NullTracker(),
            progress=False,
        )
    assert s["resumed_from"] is None and "data hash" in caplog.text


def test_kill_and_resume_cli(data: tuple[Path, Path], tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text(
        "train:\n  scale: 2\n  iterations: 60\n  batch_size: 2\n  hr_crop: 32\n"
        "  val_every: 5\n  model: {n_feat: 8, n_up_feat: 8, n_blocks: 2}\n"
    )
    cmd = [
        sys.executable,
        "-m",
        "stages.train",
        "--params",
        str(tmp_path / "params.yaml"),
        "--train",
        str(data[0]),
        "--val",
        str(data[1]),
        "-o",
        str(tmp_path / "out"),
        "--metrics",
        str(tmp_path / "metrics.json"),
        "--plots",
        str(tmp_path / "plots"),
        "--no-track",
        "-S",
        "train.lr=0.001",
    ]
    env = {**os.environ, **QUIET_ENV, "PYTHONPATH": str(ROOT)}
    last = tmp_path / "out" / "last.pt"
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    saved = read_checkpoint(last)["step"]
    assert 0 < saved < 60, "the first run finished before it could be killed"
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"resuming from step {saved}" in done.stderr
    assert read_checkpoint(last)["step"] == 60
    assert [int(r["step"]) for r in _rows(tmp_path / "plots" / "loss.csv")] == list(range(1, 61))
    assert json.loads((tmp_path / "metrics.json").read_text())["step"] == 60


def test_sigterm_saves_the_step_and_the_same_command_resumes(data: tuple[Path, Path], tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text(
        "train:\n  scale: 2\n  iterations: 900\n  batch_size: 2\n  hr_crop: 32\n"
        "  val_every: 1000\n  model: {n_feat: 8, n_up_feat: 8, n_blocks: 2}\ntracking: {enabled: false}\n"
    )
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "stages.train", "--params", str(tmp_path / "params.yaml"), "--train",
           str(data[0]), "--val", str(data[1]), "-o", str(out), "--metrics", str(tmp_path / "m.json"),
           "--plots", str(tmp_path / "plots")]  # fmt: skip
    env = {**os.environ, **QUIET_ENV, "PYTHONPATH": str(ROOT)}
    with open(tmp_path / "log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=log)
        deadline = time.monotonic() + 120
        while "training x2, steps 0 to 900" not in (tmp_path / "log").read_text():
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "log").read_text()
            time.sleep(0.05)
        time.sleep(1.0)  # some steps (900 take 9 s or more on 2 cores)
        assert proc.poll() is None, (tmp_path / "log").read_text()
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=30)
    took = time.monotonic() - sent
    text = (tmp_path / "log").read_text()
    assert rc == 143 and took < 10, text[-2000:]
    assert f"remaster train: stopped by SIGTERM; {out}/last.pt holds the last step" in text
    saved = read_checkpoint(out / "last.pt")["step"]
    assert 0 < saved < 900 and f"stopped at step {saved}" in text
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resuming from step {saved}" in done.stderr
    assert [int(r["step"]) for r in _rows(tmp_path / "plots" / "loss.csv")] == list(range(1, 901))


@pytest.mark.slow
def test_ddp_under_torchrun(data: tuple[Path, Path], tmp_path: Path) -> None:
    """Two processes over gloo: rank 0 alone validates, saves and writes the history."""
    (tmp_path / "params.yaml").write_text(
        "train:\n  scale: 2\n  iterations: 4\n  batch_size: 2\n  hr_crop: 32\n"
        "  val_every: 2\n  model: {n_feat: 8, n_up_feat: 8, n_blocks: 1}\n"
    )
    torchrun = Path(sys.executable).parent / "torchrun"
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "stages.train"]
    cmd += ["--params", str(tmp_path / "params.yaml"), "--train", str(data[0]), "--val", str(data[1])]
    cmd += [
        "-o",
        str(tmp_path / "out"),
        "--metrics",
        str(tmp_path / "m.json"),
        "--plots",
        str(tmp_path / "p"),
    ]
    env = {**os.environ, **QUIET_ENV, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [*cmd, "--no-track"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ckpt = read_checkpoint(tmp_path / "out" / "last.pt")
    assert ckpt["step"] == 4
    assert not any(k.startswith("module.") for k in ckpt["model"])
    assert [int(r["step"]) for r in _rows(tmp_path / "p" / "loss.csv")] == [1, 2, 3, 4]
    assert json.loads((tmp_path / "m.json").read_text())["step"] == 4


def test_init_across_scales_loads_body(
    tracked: dict[str, Any], data: tuple[Path, Path], tmp_path: Path
) -> None:
    src = read_checkpoint(tracked["tmp"] / "runs" / "best.pt")["model"]
    # lr 0: Adam leaves the weights as they were loaded.
    p = _params(
        scale=4, hr_crop=32, iterations=1, val_every=1, lr=0.0, init=str(tracked["tmp"] / "runs" / "best.pt")
    )
    train.run(p, *data, tmp_path, NullTracker(), progress=False)
    got = read_checkpoint(tmp_path / "last.pt")["model"]
    body = [k for k in src if not is_upsampler_key(k)]
    assert body and all(torch.equal(src[k], got[k]) for k in body)
    assert "upconv2.weight" in got and not torch.equal(src["upconv1.weight"], got["upconv1.weight"])


def test_cpu_bf16_on_request(
    data: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("REMASTER_CPU_BF16", "1")
    with caplog.at_level("INFO"):
        s = train.run(_params(iterations=2, val_every=2), *data, tmp_path, NullTracker(), progress=False)
    assert s["step"] == 2 and np.isfinite(s["psnr_y"])
    assert "bf16 autocast channels_last" in caplog.text


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_trains_in_bf16_channels_last(
    data: tuple[Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("INFO"):
        s = train.run(_params(iterations=4, val_every=2), *data, tmp_path, NullTracker(), progress=False)
    assert "cuda:0 (bf16 autocast channels_last)" in caplog.text
    assert s["step"] == 4 and np.isfinite(s["best_psnr_y"])
    state = read_checkpoint(tmp_path / "last.pt")["model"]
    assert all(v.device.type == "cpu" and torch.isfinite(v).all() for v in state.values())


def test_heartbeat_logs_progress_without_a_terminal(caplog: pytest.LogCaptureFixture) -> None:
    from remaster.training.loop import Heartbeat

    beat = Heartbeat(total=10, start=4, enabled=True, every=0.0)
    with caplog.at_level("INFO", logger="remaster.training.loop"):
        beat.tick(5, 0.5)
        beat.tick(6, 0.25)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert lines[0].startswith("step 5/10  loss 0.50000") and "it/s" in lines[0] and "ETA" in lines[0]
    quiet = Heartbeat(total=10, start=0, enabled=False, every=0.0)
    caplog.clear()
    quiet.tick(1, 1.0)
    assert not caplog.records


def test_history_round_trips_through_last_pt_and_reads_older_checkpoints() -> None:
    from remaster.training.loop import History, Score

    hist = History(
        step=2, loss=[(0.5, 1e-3), (0.4, 1e-3)], val=[Score(2, 30.5, 0.91)], best=Score(2, 30.5, 0.91)
    )
    again = History.from_extra(hist.to_extra())
    assert again == hist and again.best.psnr_y == 30.5 and again.summary(4)["best_step"] == 2
    older = {**hist.to_extra(), "val": [[2, 30.5, 0.91]], "best": [2, 30.5, 0.91]}  # lists, before Score
    assert History.from_extra(older) == hist
