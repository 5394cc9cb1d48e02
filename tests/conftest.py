"""Shared test set-up: every tool offline and quiet, and run state kept in temporary folders."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"

os.environ.update(
    {
        "DO_NOT_TRACK": "true",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DVC_NO_ANALYTICS": "1",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
        "GIT_PYTHON_REFRESH": "quiet",
        # torch's OpenMP threads spin while they wait; on a loaded 2-core machine that costs 40x
        "OMP_WAIT_POLICY": "PASSIVE",
    }
)


@pytest.fixture(scope="session", autouse=True)
def _isolated_state(tmp_path_factory: pytest.TempPathFactory) -> None:
    """MLflow and Prefect write under a session temp folder, never into the checkout."""
    state = tmp_path_factory.mktemp("state")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{state / 'mlflow.db'}"
    os.environ["PREFECT_HOME"] = str(state / "prefect")


@pytest.fixture(scope="session")
def api_url() -> Iterator[str]:
    """A temporary Prefect API shared by the whole run (starting one takes 10 to 15 s)."""
    import prefect
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield str(prefect.settings.PREFECT_API_URL.value())


@pytest.fixture(scope="session")
def shared() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"the shared material is expected beside the checkout at {SHARED}")
    return SHARED


# The whole pipeline in seconds: three small images, 240 px tiles and a one-block A2N.
TINY = {
    "demo": {"n_images": 3, "width": 560, "height": 520, "seed": 1, "clip_seconds": 0.4},
    "ingest": {"min_side": 500},
    "tile": {"size": 240, "stride": 160, "val_fraction": 0.34},
    "train": {
        "iterations": 4,
        "batch_size": 2,
        "hr_crop": 64,
        "val_every": 2,
        "model": {"n_feat": 8, "n_up_feat": 8, "n_blocks": 1},
    },
    "tracking": {"enabled": False},
}


def write_tiny_params(path: Path) -> Path:
    """The project's params.yaml with the ``TINY`` values put in, written to ``path``."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in TINY.items():
        params[section].update(values)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


@pytest.fixture
def tiny_params(tmp_path: Path) -> Path:
    """A params file for the whole pipeline on tiny data, in the test's temp folder."""
    return write_tiny_params(tmp_path / "params.yaml")
