"""Screenshots for the README: the MLflow UI over the project's runs, and the evaluation report.

    python docs/screenshots.py                # after `dvc repro` (and a `dvc exp run` or two)

Starts `mlflow ui` on the project's store on 127.0.0.1, takes the pictures with headless
Chromium (Debian's `chromium` package), and stops the server. Writes docs/img/*.png.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _api(url: str, body: dict[str, Any] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def shoot(url: str, out: Path, width: int = 1500, height: int = 950, wait_ms: int = 20000) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("chromium not found: apt-get install -y chromium")
    with tempfile.TemporaryDirectory() as profile:
        cmd = [
            browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--hide-scrollbars", f"--user-data-dir={profile}", f"--window-size={width},{height}",
            f"--virtual-time-budget={wait_ms}", f"--screenshot={out}", url,
        ]  # fmt: skip
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    print(f"wrote {out.relative_to(ROOT)}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path, default=ROOT / "mlflow.db")
    ap.add_argument("--report", type=Path, default=ROOT / "reports" / "eval" / "report.html")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    port = _port()
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    cmd = [str(BIN / "mlflow"), "ui", "--backend-store-uri", f"sqlite:///{args.store.resolve()}"]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    server = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{base}/health", timeout=2)
                break
            except OSError:
                time.sleep(1)
        exp = _api(f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=training")["experiment"]
        eid = exp["experiment_id"]
        runs = _api(f"{base}/api/2.0/mlflow/runs/search", {"experiment_ids": [eid], "max_results": 10})[
            "runs"
        ]
        ids = [r["info"]["run_id"] for r in runs]
        shoot(f"{base}/#/experiments/{eid}/runs", args.out / "mlflow_runs.png")
        if len(ids) >= 2:
            q = urllib.parse.quote(json.dumps(ids[:2]))
            shoot(f"{base}/#/compare-runs?runs={q}&experiments={urllib.parse.quote(json.dumps([eid]))}",
                  args.out / "mlflow_compare.png", height=1300)  # fmt: skip
        shoot(f"{base}/#/experiments/{eid}/runs/{ids[0]}/model-metrics", args.out / "mlflow_curves.png")
        shoot(f"{base}/#/models/a2n-x4", args.out / "mlflow_model.png", height=700)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    if args.report.exists():
        shoot(args.report.resolve().as_uri(), args.out / "eval_report.png", height=1400, wait_ms=3000)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
