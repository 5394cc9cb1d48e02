"""Experiment tracking behind a small interface: MLflow, or nothing.

Stages take a ``Tracker`` argument instead of calling MLflow globals, so tests can pass a
``NullTracker`` (or a real MLflow store in a temporary folder) and flows decide once.
The embedded default is the SQLite store ``mlflow.db`` in the project folder, with artifacts under
``mlruns/``, where MLflow 3 looks by default; the environment's ``MLFLOW_TRACKING_URI`` overrides it
(for example an ``mlflow server``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from remaster.files import sha256_file

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


STORE = "mlflow.db"  # where MLflow 3 itself looks: `mlflow ui` and MlflowClient() find it unset
OLD_STORE = Path(".mlflow") / "mlflow.db"  # where earlier versions of remaster kept it


def default_tracking_uri(root: Path | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<root>/mlflow.db``, MLflow's own default, so
    that ``mlflow ui`` and ``MlflowClient()`` with no settings, in the project folder, show every run.
    A store left at the old ``.mlflow/mlflow.db`` is moved there (its artifacts stay where they are:
    the store names them by absolute path)."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    base = (root or Path.cwd()).resolve()
    store, old = base / STORE, base / OLD_STORE
    if old.exists():
        if store.exists():
            log.warning("%s is an older MLflow store, not shown beside %s; merge or remove it", old, store)
        else:
            os.replace(old, store)
            log.warning("moved the MLflow store from %s to %s, where MLflow looks by default", old, store)
    return f"sqlite:///{store}"


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
        self.tracking_uri = tracking_uri or default_tracking_uri()
        self._run_id: str | None = None

    @functools.cached_property
    def client(self) -> Any:
        """The MLflow client, made on first use: a command that fails on its input never starts
        MLflow (whose first touch of a SQLite store creates its tables)."""
        import mlflow  # imported here: it takes seconds, and most tests never need it

        return mlflow.MlflowClient(tracking_uri=self.tracking_uri)

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
            location = (db.parent / "mlruns" / name).resolve().as_uri()
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


class Registry:
    """The MLflow calls the ``Tracker`` protocol lacks: find the candidate's training run, write
    to that finished run, and move the ``champion`` alias."""

    def __init__(self, tracker: MlflowTracker) -> None:
        self.client = tracker.client
        self.tracking_uri = tracker.tracking_uri

    def candidate(self, name: str, sha256: str | None) -> Any:
        """The ``name@candidate`` model version if its files include the evaluated model, else None."""
        import mlflow
        from mlflow.exceptions import MlflowException

        try:
            version = self.client.get_model_version_by_alias(name, "candidate")
        except MlflowException:
            log.info("no %s@candidate is registered: no training run to update", name)
            return None
        if version.run_id and sha256:
            with tempfile.TemporaryDirectory() as tmp:
                local = Path(
                    mlflow.artifacts.download_artifacts(
                        artifact_uri=version.source, dst_path=tmp, tracking_uri=self.tracking_uri
                    )
                )
                files = [local] if local.is_file() else sorted(local.rglob("*"))
                if any(f.suffix in (".pt", ".safetensors") and sha256_file(f) == sha256 for f in files):
                    return version
        log.warning("the evaluated model is not %s@candidate (version %s): the training run and the "
                    "champion alias are left alone", name, version.version)  # fmt: skip
        return None

    def log_to_run(self, run_id: str, metrics: dict[str, float], files: Sequence[Path]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()])
        for f in files:
            self.client.log_artifact(run_id, str(f), "evaluation")

    def promote(self, name: str, candidate: Any, value: float, key: str) -> dict[str, Any]:
        """Give ``candidate`` the ``champion`` alias if its ``key`` beats the champion's (or there
        is none). A champion whose run lacks ``key`` was never scored here and is replaced."""
        from mlflow.exceptions import MlflowException

        try:
            champion = self.client.get_model_version_by_alias(name, "champion")
        except MlflowException:
            champion = None
        outcome: dict[str, Any] = {"candidate": str(candidate.version), "value": value, "moved": False}
        if champion is not None:
            best = self.client.get_run(champion.run_id).data.metrics.get(key) if champion.run_id else None
            outcome |= {"previous": str(champion.version), "previous_value": best}
            if champion.version == candidate.version:
                return outcome
            if best is not None and value <= best:
                log.info("%s@champion stays version %s: %s %.3f, candidate version %s %.3f", name,
                         champion.version, key, best, candidate.version, value)  # fmt: skip
                return outcome
        self.client.set_registered_model_alias(name, "champion", str(candidate.version))
        log.info("%s@champion -> version %s (%s %.3f)", name, candidate.version, key, value)
        return outcome | {"moved": True}
