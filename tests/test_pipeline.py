"""The pipeline's three faces on tiny data: the CLI, `dvc repro`, and the Prefect flow."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest
import torch
import yaml
from conftest import write_tiny_params

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    return env


def test_cli_lists_the_stages() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "remaster.cli.main", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for name in ("demo", "ingest", "tile", "pack", "train", "pipeline"):
        assert f"  {name}" in out
    bad = subprocess.run(
        [sys.executable, "-m", "remaster.cli.main", "nope"], cwd=ROOT, capture_output=True, text=True
    )
    assert bad.returncode == 2 and "unknown command 'nope'" in bad.stderr


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A fresh copy of the project's tracked files in its own git repository."""
    files = (
        subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
        .stdout.decode()
        .split("\0")
    )
    dest = tmp_path / "project"
    for rel in filter(None, files):
        if (ROOT / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)
    write_tiny_params(dest / "params.yaml")
    ident = ["-c", "user.name=test", "-c", "user.email=test@localhost"]
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", *ident, "commit", "-qm", "init"]):
        subprocess.run(cmd, cwd=dest, check=True)
    return dest


@pytest.mark.slow
def test_dvc_repro_runs_the_demo_end_to_end_then_has_nothing_to_do(project: Path) -> None:
    def dvc(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "dvc"), *args], cwd=project, env=_env(), capture_output=True, text=True
        )

    # a source folder with images and a clip: the demo puts its episode in the scrape
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["demo"]["episode"] = True
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run = dvc("repro", "pack")
    assert run.returncode == 0, run.stdout + run.stderr
    for stage in ("demo", "ingest", "tile", "pack"):
        assert f"Running stage '{stage}'" in run.stdout
    assert "Running stage 'train'" not in run.stdout
    with open(project / "data/ingested/manifest.csv", newline="") as f:
        mined = [r for r in csv.DictReader(f) if r["video"]]
    assert [(r["video"], r["frame_type"]) for r in mined] == [("episode.mkv", "I")]
    with h5py.File(project / "data/packed/train.h5") as f:
        # 4 images of 560x520 (3 pages and 1 mined frame) -> 3 x 3 tiles of 240 each; one goes to val
        assert f["hr"].shape == (27, 240, 240, 3)
        assert f["lr_x4"].shape == (27, 60, 60, 3)
    run = dvc("repro")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Running stage 'train'" in run.stdout and "Running stage 'pack'" not in run.stdout
    for stage in ("evaluate", "remaster_demo"):
        assert f"Running stage '{stage}'" in run.stdout
    assert (project / "reports/eval/report.html").exists()
    assert (project / "data/remastered/clip_x4.mkv").exists()
    assert json.loads((project / "metrics/eval.json").read_text())["scale"] == 4
    again = dvc("repro")
    assert again.returncode == 0
    assert "Data and pipelines are up to date." in again.stdout
    metrics = dvc("metrics", "show")
    assert "psnr_y" in metrics.stdout and "bicubic_psnr_y" in metrics.stdout
    plots = dvc("plots", "show", "-o", "dvc_plots")
    assert plots.returncode == 0, plots.stderr
    html = (project / "dvc_plots" / "index.html").read_text()
    assert "Training loss" in html and "Validation Y-PSNR" in html


@pytest.mark.slow
def test_dvc_exp_run_is_found_in_mlflow_by_its_name(project: Path, tmp_path: Path) -> None:
    """`dvc exp run -S ...` trains with the override and its MLflow run carries the exp name; the
    experiment packs realistic LR, trains on it and evaluates under libx264, end to end."""
    import mlflow

    env = {**_env(), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'exp.db'}"}
    cmd = [
        str(BIN / "dvc"),
        "exp",
        "run",
        "-n",
        "lr-test",
        "-S",
        "train.lr=0.001",
        "-S",
        "tracking.enabled=true",
        *("-S", "pack.degradation=realistic", "-S", "train.degradation=realistic"),
        *("-S", "evaluate.degrade='x264:crf=23'"),  # Hydra's grammar: quote a value with '='
    ]
    run = subprocess.run([*cmd, "evaluate"], cwd=project, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    with h5py.File(project / "data/packed/train.h5") as f:
        assert f.attrs["degradation"] == "realistic" and f["lr_x4_real"].shape == (18, 60, 60, 3)
    scores = json.loads((project / "metrics/eval.json").read_text())
    assert scores["degradation"] == "x264:crf=23" and scores["val"]["n_images"] == 9
    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("training")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], "tags.dvc_exp_name = 'lr-test'")
    assert len(runs) == 1
    assert runs[0].data.params["train.lr"] == "0.001"
    assert runs[0].data.tags["git_commit"]
    shown = subprocess.run(
        [str(BIN / "dvc"), "exp", "show", "--csv"], cwd=project, env=env, capture_output=True, text=True
    )
    assert "lr-test" in shown.stdout


@pytest.mark.slow
def test_prefect_flow_runs_the_same_stages(
    api_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.pipeline import train_pipeline
    from stages.demo import write_images

    write_images(tmp_path / "scrape", 3, seed=1, width=560, height=520)
    params = tmp_path / "params.yaml"
    write_tiny_params(params)
    monkeypatch.chdir(tmp_path)
    args = (str(params), [], str(tmp_path / "scrape"), str(tmp_path / "data"), str(tmp_path / "runs"))
    outputs = [
        tmp_path / "data/ingested/manifest.csv",
        tmp_path / "data/packed/train.h5",
        tmp_path / "runs/last.pt",
    ]
    summary = train_pipeline(*args)
    assert summary["ingest"]["ok"] == 3
    assert summary["tile"]["tiles_train"] + summary["tile"]["tiles_val"] == 27
    assert summary["pack"]["tiles_train"] == 18
    assert summary["train"]["step"] == 4
    assert summary["evaluate"]["n_images"] == 9  # the val tiles
    assert (tmp_path / "reports/eval/report.html").exists()
    stamps = [p.stat().st_mtime_ns for p in outputs]
    # Unchanged inputs: every step comes from the cache and no output is rewritten.
    again = train_pipeline(*args)
    assert again == summary
    assert [p.stat().st_mtime_ns for p in outputs] == stamps
    # A removed checkpoint reruns training only.
    (tmp_path / "runs/last.pt").unlink()
    train_pipeline(*args)
    assert (tmp_path / "runs/last.pt").exists()
    assert [p.stat().st_mtime_ns for p in outputs[:2]] == stamps[:2]


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_the_pipeline_in_training_and_the_same_command_resumes(
    api_url: str, tmp_path: Path, sig: signal.Signals, code: int
) -> None:
    from stages.demo import write_images

    write_images(tmp_path / "scrape", 3, seed=1, width=560, height=520)
    params = write_tiny_params(tmp_path / "params.yaml")
    cmd = [sys.executable, "-m", "remaster.cli.pipeline", "--params", str(params), "--source",
           str(tmp_path / "scrape"), "--data-dir", str(tmp_path / "data"),
           "--runs-dir", str(tmp_path / "runs")]  # fmt: skip
    env = {**_env(), "PREFECT_API_URL": api_url, "PYTHONPATH": str(ROOT)}
    log = tmp_path / "log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [*cmd, "-S", "train.iterations=5000"], cwd=tmp_path, env=env, stdout=out, stderr=out
        )
        deadline = time.monotonic() + 240
        while "training x4, steps 0 to 5000" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
        time.sleep(2.0)  # some steps in
        sent = time.monotonic()
        proc.send_signal(sig)
        rc = proc.wait(timeout=60)
    took, text = time.monotonic() - sent, log.read_text()
    assert rc == code and took < 10, text[-3000:]
    assert f"remaster pipeline: stopped by {sig.name}" in text and "run it again" in text
    saved = torch.load(tmp_path / "runs" / "last.pt", weights_only=True)["step"]
    assert 0 < saved < 5000
    assert not any(p.name.startswith(".") and ".tmp-" in p.name for p in (tmp_path / "runs").iterdir())
    if sig is signal.SIGTERM:  # the same command, told to stop soon after, goes on from the step
        done = subprocess.run([*cmd, "-S", f"train.iterations={saved + 3}"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        assert f"resuming from step {saved}" in done.stderr + done.stdout
