"""Experiment tracking behind a small interface: MLflow, or nothing.

Stages take a ``Tracker`` argument instead of calling MLflow globals, so tests can pass a
``NullTracker`` (or a real MLflow store in a temporary folder) and flows decide once.
The embedded default is a SQLite store under ``.mlflow/`` in the project; the environment's
``MLFLOW_TRACKING_URI`` overrides it (for example an ``mlflow server``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

EXPERIMENTS = ("data", "training", "evaluation", "remaster")


class Tracker(Protocol):
    """What a stage may record. Every method is a no-op outside ``start_run``."""

    @property
    def run_id(self) -> str | None: ...

    def start_run(
        self, experiment: str, run_name: str, tags: Mapping[str, str] | None = None
    ) -> contextlib.AbstractContextManager[None]: ...

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None: ...

    def log_dict(self, data: Mapping[str, Any], name: str) -> None: ...

    def register_model(self, artifact_path: str, name: str, alias: str) -> str | None: ...


class NullTracker:
    """Records nothing. For tests and for ``tracking.enabled: false``."""

    run_id: str | None = None

    @contextlib.contextmanager
    def start_run(
        self, experiment: str, run_name: str, tags: Mapping[str, str] | None = None
    ) -> Iterator[None]:
        yield

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        pass

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        pass

    def log_dict(self, data: Mapping[str, Any], name: str) -> None:
        pass

    def register_model(self, artifact_path: str, name: str, alias: str) -> str | None:
        return None


def default_tracking_uri(root: Path | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else SQLite under ``<root>/.mlflow``."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    base = (root or Path.cwd()) / ".mlflow"
    base.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{base.resolve() / 'mlflow.db'}"


def run_tags() -> dict[str, str]:
    """The git commit and, under ``dvc exp run``, the DVC experiment name."""
    tags: dict[str, str] = {}
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        tags["mlflow.source.git.commit"] = sha
        tags["git_commit"] = sha
    except (OSError, subprocess.SubprocessError):
        pass
    exp = os.environ.get("DVC_EXP_NAME")
    if exp:
        tags["dvc_exp_name"] = exp
    return tags


class MlflowTracker:
    """Tracks to MLflow. Experiments get an artifact folder beside a local SQLite store."""

    def __init__(self, tracking_uri: str | None = None) -> None:
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        os.environ.setdefault("DO_NOT_TRACK", "true")
        import mlflow  # imported here: it takes seconds, and most tests never need it

        self._mlflow = mlflow
        self.tracking_uri = tracking_uri or default_tracking_uri()
        self.client = mlflow.MlflowClient(tracking_uri=self.tracking_uri)
        self._run_id: str | None = None

    @property
    def run_id(self) -> str | None:
        return self._run_id

    def _experiment_id(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return str(exp.experiment_id)
        location = None
        if self.tracking_uri.startswith("sqlite:///"):
            db = Path(self.tracking_uri.removeprefix("sqlite:///"))
            location = (db.parent / "artifacts" / name).resolve().as_uri()
        return str(self.client.create_experiment(name, artifact_location=location))

    @contextlib.contextmanager
    def start_run(
        self, experiment: str, run_name: str, tags: Mapping[str, str] | None = None
    ) -> Iterator[None]:
        all_tags = {**run_tags(), **(tags or {})}
        run = self.client.create_run(self._experiment_id(experiment), run_name=run_name, tags=all_tags)
        self._run_id = run.info.run_id
        status = "FAILED"
        try:
            yield
            status = "FINISHED"
        finally:
            self.client.set_terminated(self._run_id, status=status)
            self._run_id = None

    def log_params(self, params: Mapping[str, Any]) -> None:
        if self._run_id is None:
            return
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self._run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if self._run_id is None:
            return
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        self.client.log_batch(self._run_id, metrics=items)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if self._run_id is None:
            return
        self.client.log_artifact(self._run_id, str(path), artifact_path)

    def log_dict(self, data: Mapping[str, Any], name: str) -> None:
        if self._run_id is None:
            return
        with tempfile.TemporaryDirectory() as tmp:
            p = Path(tmp) / name
            p.write_text(json.dumps(data, indent=2, default=str))
            self.client.log_artifact(self._run_id, str(p))

    def register_model(self, artifact_path: str, name: str, alias: str) -> str | None:
        """Register the run's artifact folder as a new version of ``name`` and point ``alias`` at it."""
        if self._run_id is None:
            return None
        from mlflow.exceptions import MlflowException

        with contextlib.suppress(MlflowException):  # it exists already
            self.client.create_registered_model(name)
        run = self.client.get_run(self._run_id)
        source = f"{run.info.artifact_uri.rstrip('/')}/{artifact_path}"
        version = self.client.create_model_version(name, source, run_id=self._run_id)
        self.client.set_registered_model_alias(name, alias, version.version)
        log.info("registered %s version %s as @%s", name, version.version, alias)
        return str(version.version)


def make_tracker(enabled: bool) -> Tracker:
    return MlflowTracker() if enabled else NullTracker()
