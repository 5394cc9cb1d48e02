"""The ``train-pipeline`` flow: ingest -> tile -> pack -> train -> evaluate, as Prefect tasks.

Each task calls the same ``run()`` as the DVC stage of that name; the flow only wires paths.
Tasks are cached on their params and the state of their input and output paths, so a rerun
with unchanged data skips the finished steps, as ``dvc repro`` does.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import is_dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from prefect import flow, get_client, task
from prefect.context import TaskRunContext

from flows.runners import flow_mapper
from remaster.config import as_dict, load_params
from remaster.tracking import Tracker, make_tracker
from remaster.version import code_version
from stages import evaluate, ingest, pack, tile, train

log = logging.getLogger(__name__)

SMALL_FILE = 4 << 20
UNHASHED = ("tracker", "mapper")  # how a step runs, not what it makes
GPU_TAG = "gpu"  # tasks that hold the accelerator; a tag concurrency limit lets one run at a time


def fingerprint(path: Path) -> str:
    """The state of a file or folder: small files by content, large ones by size and mtime.

    Small files (manifests, indexes, summaries) are rewritten by every run with the same bytes,
    so their content is what counts; images and HDF5 files are only ever replaced whole.
    """
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in files:
        if not p.exists():
            h.update(f"{p}|<missing>".encode())
            continue
        st = p.stat()
        h.update(f"{p.relative_to(path) if p != path else p.name}|{st.st_size}|".encode())
        if st.st_size < SMALL_FILE:
            h.update(hashlib.sha256(p.read_bytes()).digest())
        else:
            h.update(str(st.st_mtime_ns).encode())
    return h.hexdigest()


def inputs_key(stage: str, paths: tuple[str, ...]) -> Callable[[TaskRunContext, dict[str, Any]], str]:
    """A cache key over the stage's code, its params and the state of its inputs.

    The tracker and the mapper are left out: they cannot be hashed and do not change the result.
    Missing outputs are handled by the flow, which refreshes the cache for such a step.
    """

    def key(_: TaskRunContext, parameters: dict[str, Any]) -> str:
        h = hashlib.sha256(stage.encode())
        h.update(code_version(f"stages.{stage}").encode())
        for name, value in sorted(parameters.items()):
            if name in UNHASHED:
                continue
            plain = as_dict(value) if is_dataclass(value) else value
            h.update(f"|{name}={json.dumps(plain, sort_keys=True, default=str)}".encode())
        for name in paths:
            value = parameters.get(name)
            for item in value if isinstance(value, (list, tuple)) else [value]:
                if item is not None:
                    h.update(f"|{name}:{fingerprint(Path(item))}".encode())
        return h.hexdigest()

    return key


def _stage_task(name: str, paths: tuple[str, ...], tags: tuple[str, ...] = ()) -> Any:
    return task(
        name=name,
        tags=list(tags),
        cache_key_fn=inputs_key(name, paths),
        persist_result=True,
        cache_expiration=timedelta(days=30),
    )


ingest_task = _stage_task("ingest", ("source",))(ingest.run)
tile_task = _stage_task("tile", ("ingested",))(tile.run)
pack_task = _stage_task("pack", ("ingested", "tiles_dir"))(pack.run)
train_task = _stage_task("train", ("train_h5", "val_h5"), tags=(GPU_TAG,))(train.run)
evaluate_task = _stage_task("evaluate", ("model", "val_h5", "hr_dirs"), tags=(GPU_TAG,))(evaluate.run)


def _call(step: Any, outputs: list[Path], *args: Any, **kwargs: Any) -> Any:
    """Run a cached step, refreshing its cache when any of its outputs has gone."""
    if not all(p.exists() for p in outputs):
        step = step.with_options(refresh_cache=True)
    return step(*args, **kwargs)


def ensure_gpu_limit(slots: int = 1) -> None:
    """Create the tag concurrency limit once: one GPU job at a time across all flows."""
    with get_client(sync_client=True) as client:
        try:
            client.read_concurrency_limit_by_tag(GPU_TAG)
        except Exception:  # noqa: BLE001 - Prefect raises ObjectNotFound (a private type) here
            client.create_concurrency_limit(tag=GPU_TAG, concurrency_limit=slots)
            log.info("created the concurrency limit %r = %d", GPU_TAG, slots)


@flow(name="train-pipeline", log_prints=True)
def train_pipeline(
    params_path: str | None = None,
    overrides: list[str] | None = None,
    source: str | None = None,
    data_dir: str = "data",
    runs_dir: str = "runs/train",
    tracker: Any = None,
    reports_dir: str = "reports/eval",
) -> dict[str, Any]:
    """Run the data stages, training and evaluation with the params in ``params_path`` (None:
    ./params.yaml where there is one, else the defaults)."""
    params = load_params(params_path, overrides or [])
    ensure_gpu_limit()
    trk: Tracker = tracker if tracker is not None else make_tracker(params.tracking.enabled)
    data = Path(data_dir)
    src = Path(source or params.ingest.source_dir)
    summary: dict[str, Any] = {}
    ing, tiles, packed = data / "ingested", data / "tiles", data / "packed"
    runs = Path(runs_dir)
    mapper = flow_mapper()  # per-image work on the flow's Dask cluster, when it has one
    summary["ingest"] = _call(
        ingest_task, [ing / "manifest.csv"], params.ingest, src, ing, trk, mapper=mapper
    )
    summary["tile"] = _call(tile_task, [tiles / "tiles.csv"], params.tile, ing, tiles, trk)
    summary["pack"] = _call(
        pack_task,
        [packed / "train.h5", packed / "val.h5"],
        params.pack,
        ing,
        tiles,
        packed,
        trk,
        mapper=mapper,
    )
    summary["train"] = _call(
        train_task,
        [runs / "last.pt", runs / "best.pt"],
        params.train,
        packed / "train.h5",
        packed / "val.h5",
        runs,
        trk,
        metrics_path=Path("metrics/train.json"),
        plots_dir=Path("plots/train"),
    )
    reports = Path(reports_dir)
    summary["evaluate"] = _call(
        evaluate_task,
        [reports / "metrics.json", reports / "report.html"],
        params.evaluate,
        params.train.scale,
        reports,
        trk,
        model=params.evaluate.model or str(runs / "best.pt"),
        val_h5=packed / "val.h5",
        hr_dirs=[Path(d) for d in params.evaluate.hr_dirs],
        metrics_path=Path("metrics/eval.json"),
    )
    return summary
