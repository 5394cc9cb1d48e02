"""The embedded defaults swapped for real servers on 127.0.0.1, as a team would run them."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from remaster.config import ModelParams, TrainParams
from remaster.data.imaging import downscale
from remaster.tracking import MlflowTracker
from stages import train

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def _post(url: str, body: dict[str, Any]) -> Any:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(1)
    pytest.fail(f"server not healthy after {timeout} s:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """The server was started in its own session: stop its whole process group."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):  # the group may have ended already
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    log = root / "server.log"
    cmd = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    cmd += ["--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}"]
    cmd += ["--artifacts-destination", (root / "artifacts").as_uri()]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(f"{url}/health", proc, log)
        yield url
    finally:
        _stop(proc)


def _tiny_pack(path: Path, n: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:64, 0:64] / 64.0
    tiles = []
    for _ in range(n):
        img = np.stack(
            [np.sin(2 * np.pi * (rng.uniform(1, 5) * x + rng.uniform(1, 5) * y)) for _ in range(3)], -1
        )
        tiles.append(np.round((img + 1) * 127.5).astype(np.uint8))
    hr = np.stack(tiles)
    with h5py.File(path, "w") as f:
        f.create_dataset("hr", data=hr)
        f.create_dataset("lr_x2", data=np.stack([downscale(t, 2) for t in hr]))
        f.attrs.update(manifest_hash=f"tiny{seed}", scales=[2], kernel="matlab-bicubic-aa", tile_size=64)
    return path


@pytest.mark.slow
def test_training_against_a_real_mlflow_server(mlflow_server: str, tmp_path: Path) -> None:
    params = TrainParams(
        scale=2, iterations=6, batch_size=2, hr_crop=32, val_every=3, model=ModelParams(8, 8, 1, False)
    )
    tracker = MlflowTracker(mlflow_server)
    summary = train.run(
        params,
        _tiny_pack(tmp_path / "train.h5", 6, 0),
        _tiny_pack(tmp_path / "val.h5", 2, 1),
        tmp_path / "out",
        tracker,
        metrics_path=tmp_path / "metrics.json",
        plots_dir=tmp_path / "plots",
        progress=False,
    )
    run_id = summary["run_id"]
    api = f"{mlflow_server}/api/2.0/mlflow"
    run = _get(f"{api}/runs/get?run_id={run_id}")["run"]
    assert run["info"]["status"] == "FINISHED"
    got = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert got["train.scale"] == "2" and got["train.iterations"] == "6" and got["train.model.n_feat"] == "8"
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["data_hash"] == "tiny0"
    loss = _get(f"{api}/metrics/get-history?run_id={run_id}&metric_key=loss")["metrics"]
    assert sorted(m["step"] for m in loss) == [1, 2, 3, 4, 5, 6]
    val = _get(f"{api}/metrics/get-history?run_id={run_id}&metric_key=val_psnr_y")["metrics"]
    assert sorted(m["step"] for m in val) == [3, 6]
    listed = _get(f"{api}/artifacts/list?run_id={run_id}&path=model")["files"]
    assert {Path(f["path"]).name for f in listed} >= {"best.pt", "config.json"}
    version = _get(f"{api}/registered-models/alias?name=a2n-x2&alias=candidate")["model_version"]
    assert version["run_id"] == run_id
    found = _post(f"{api}/runs/search", {"experiment_ids": [run["info"]["experiment_id"]]})["runs"]
    assert run_id in {r["info"]["run_id"] for r in found}


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    root = tmp_path_factory.mktemp("prefect-server")
    port = _free_port()
    env = {**os.environ, "PREFECT_HOME": str(root / "home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    log = root / "server.log"
    cmd = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    api = f"http://127.0.0.1:{port}/api"
    try:
        _wait_healthy(f"{api}/health", proc, log)
        yield {**env, "PREFECT_API_URL": api}
    finally:
        _stop(proc)


def _episode_job(tmp_path: Path, server_env: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """A 0.4 s clip and a tiny x2 model: the parameters of a remaster-episode run on them, and
    the environment to run it in."""
    from models.a2n import A2N, A2NConfig
    from models.checkpoint import save_checkpoint
    from stages.demo import write_clip

    cfg = A2NConfig(scale=2, n_feat=8, n_up_feat=8, n_blocks=1)
    save_checkpoint(tmp_path / "tiny.pt", A2N(cfg), cfg)
    clip = write_clip(tmp_path / "episode.mp4", seconds=0.4, width=96, height=72)
    params = {
        "input_path": str(clip),
        "output_path": str(tmp_path / "episode_x2.mkv"),
        "params": {
            "scale": 2,
            "model": str(tmp_path / "tiny.pt"),
            "segment_seconds": 0,
            "preset": "ultrafast",
        },
    }
    env = {**server_env, "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'ml.db'}"}
    return params, env


def _assert_remastered(params: dict[str, Any]) -> None:
    from remaster.video.probe import probe

    got, src = probe(params["output_path"]), probe(params["input_path"])
    assert (got.width, got.height) == (2 * src.width, 2 * src.height)
    assert got.frames == src.frames


@pytest.mark.slow
def test_remaster_deployment_on_a_real_prefect_server(prefect_server: dict[str, str], tmp_path: Path) -> None:
    params, env = _episode_job(tmp_path, prefect_server)
    log = tmp_path / "serve.log"
    root = Path(__file__).resolve().parents[1]
    with open(log, "wb") as f:
        serve = subprocess.Popen(
            [sys.executable, "-m", "remaster.cli.main", "serve", "--name", "test"],
            cwd=root, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        names: set[str] = set()
        while time.monotonic() < deadline and "test" not in names:
            if serve.poll() is not None:
                pytest.fail(f"remaster serve exited:\n{log.read_text()[-3000:]}")
            names = {d["name"] for d in _post(f"{env['PREFECT_API_URL']}/deployments/filter", {})}
            time.sleep(1)
        assert "test" in names, log.read_text()[-3000:]
        cmd = [str(BIN / "prefect"), "deployment", "run", "remaster-episode/test"]
        cmd += ["--params", json.dumps(params), "--watch", "--watch-timeout", "240"]
        run = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:] + log.read_text()[-3000:]
        assert "Completed" in run.stdout
        _assert_remastered(params)
        _cancel_a_busy_run(tmp_path, env, serve.pid)
        _sigterm_a_busy_serve(tmp_path, env, serve)
    finally:
        _stop(serve)


def _busy_run(
    tmp_path: Path, env: dict[str, str], serve_pid: int, name: str, deployment: str = "remaster-episode/test"
) -> tuple[str, list[int], Path]:
    """Start a remaster-episode run that takes a while; once it upscales: (run id, its ffmpeg pids,
    its output path)."""
    from models.a2n import A2N, A2NConfig
    from models.checkpoint import save_checkpoint
    from remaster.stopping import descendants
    from stages.demo import write_clip

    cfg = A2NConfig(scale=2, n_feat=16, n_up_feat=16, n_blocks=4)
    save_checkpoint(tmp_path / "slow.pt", A2N(cfg), cfg)
    clip = write_clip(tmp_path / f"{name}.mp4", seconds=4.0, width=320, height=240)
    settings = {"scale": 2, "model": str(tmp_path / "slow.pt"), "segment_seconds": 0, "preset": "ultrafast"}
    out = tmp_path / f"{name}_x2.mkv"
    params = {"input_path": str(clip), "output_path": str(out), "params": settings}
    root = Path(__file__).resolve().parents[1]
    cmd = [str(BIN / "prefect"), "deployment", "run", deployment, "--params", json.dumps(params)]
    started = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=120)
    run_id = re.search(r"UUID: ([0-9a-f-]{36})", started.stdout)
    assert run_id, started.stdout + started.stderr
    deadline = time.monotonic() + 180
    ffmpegs: list[int] = []
    while not ffmpegs:  # busy: its decoder and encoder run
        assert time.monotonic() < deadline, "the run never started upscaling"
        ffmpegs = [p for p in descendants(serve_pid) if b"ffmpeg" in _cmdline(p)]
        time.sleep(0.2)
    time.sleep(1.0)
    return run_id.group(1), ffmpegs, out


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _running(pids: list[int]) -> list[int]:
    """The pids still running (zombies do not count)."""
    alive = []
    for p in pids:
        try:
            if Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                alive.append(p)
        except (OSError, IndexError):
            pass
    return alive


def _cancel_a_busy_run(
    tmp_path: Path, env: dict[str, str], serve_pid: int, deployment: str = "remaster-episode/test"
) -> None:
    """A run cancelled through the API while it upscales ends Cancelled, with no ffmpeg left."""
    run_id, ffmpegs, out = _busy_run(tmp_path, env, serve_pid, f"cancelled-{serve_pid}", deployment)
    root = Path(__file__).resolve().parents[1]
    cancel = subprocess.run([str(BIN / "prefect"), "flow-run", "cancel", run_id], cwd=root, env=env,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert cancel.returncode == 0, cancel.stdout + cancel.stderr
    state = ""
    deadline = time.monotonic() + 60
    while state != "CANCELLED":
        assert time.monotonic() < deadline, f"still {state} a minute after the cancel"
        state = _get(f"{env['PREFECT_API_URL']}/flow_runs/{run_id}")["state"]["type"]
        time.sleep(0.5)
    time.sleep(1.0)
    assert not _running(ffmpegs), "an ffmpeg outlived the cancelled run"
    assert not out.exists()


def _sigterm_a_busy_serve(tmp_path: Path, env: dict[str, str], serve: subprocess.Popen[bytes]) -> None:
    """SIGTERM to `remaster serve` while a run upscales: it ends within 10 s, and its run's
    ffmpeg children with it."""
    _, ffmpegs, out = _busy_run(tmp_path, env, serve.pid, "terminated")
    sent = time.monotonic()
    serve.send_signal(signal.SIGTERM)
    rc = serve.wait(timeout=30)
    took = time.monotonic() - sent
    time.sleep(1.0)
    assert took < 10, f"remaster serve took {took:.1f} s to stop"
    assert rc == 143
    assert (
        "remaster serve: stopped by SIGTERM; the deployments are paused"
        in (tmp_path / "serve.log").read_text()
    )
    assert not _running(ffmpegs), "an ffmpeg outlived remaster serve"
    assert not out.exists()


def test_ctrl_c_stops_remaster_serve_with_130(prefect_server: dict[str, str], tmp_path: Path) -> None:
    env = {**prefect_server, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    log = tmp_path / "serve.log"
    with open(log, "wb") as f:
        cmd = [sys.executable, "-m", "remaster.cli.main", "serve", "--name", "ctrl-c"]
        serve = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while "serving remaster-episode/ctrl-c" not in log.read_text():
            assert serve.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        time.sleep(2.0)
        sent = time.monotonic()
        serve.send_signal(signal.SIGINT)
        rc = serve.wait(timeout=30)
        assert rc == 130 and time.monotonic() - sent < 10, log.read_text()[-3000:]
        assert "remaster serve: stopped by SIGINT" in log.read_text()
        assert "Traceback" not in log.read_text()
    finally:
        _stop(serve)


@pytest.mark.slow
def test_deployment_on_a_work_pool_runs_on_a_worker(prefect_server: dict[str, str], tmp_path: Path) -> None:
    params, env = _episode_job(tmp_path, prefect_server)
    api = env["PREFECT_API_URL"]

    dep = subprocess.run(
        [sys.executable, "-m", "remaster.cli.main", "deploy", "--pool", "test-pool", "--name", "pooled"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert dep.returncode == 0, dep.stderr[-3000:]
    pools = {p["name"]: p["type"] for p in _post(f"{api}/work_pools/filter", {})}
    assert pools.get("test-pool") == "process"
    deployments = {d["name"]: d for d in _post(f"{api}/deployments/filter", {}) if d["name"] == "pooled"}
    assert len(_post(f"{api}/deployments/filter", {"deployments": {"name": {"any_": ["pooled"]}}})) == 2
    assert deployments["pooled"]["work_pool_name"] == "test-pool"

    cmd = [str(BIN / "prefect"), "deployment", "run", "remaster-episode/pooled"]
    cmd += ["--params", json.dumps(params)]
    run = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert not Path(params["output_path"]).exists()  # scheduled, but no worker has taken it yet

    # one poll of the pool: the worker takes the run, runs it in a subprocess and returns
    log = tmp_path / "worker.log"
    with open(log, "wb") as f:
        worker = subprocess.run(
            [str(BIN / "prefect"), "worker", "start", "--pool", "test-pool", "--run-once"],
            cwd=tmp_path, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=400,
        )  # fmt: skip
    assert worker.returncode == 0, log.read_text()[-3000:]
    runs = _post(f"{api}/flow_runs/filter", {"deployments": {"name": {"any_": ["pooled"]}}})
    assert [r["state_type"] for r in runs] == ["COMPLETED"], log.read_text()[-3000:]
    _assert_remastered(params)

    # a worker that keeps polling: a run it took, cancelled through the API, stops with its ffmpegs
    with open(tmp_path / "worker2.log", "wb") as f:
        worker2 = subprocess.Popen(
            [str(BIN / "prefect"), "worker", "start", "--pool", "test-pool"],
            cwd=tmp_path, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        _cancel_a_busy_run(tmp_path, env, worker2.pid, "remaster-episode/pooled")
    finally:
        _stop(worker2)
