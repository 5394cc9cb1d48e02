"""Where a flow's tasks run, and what a task loads once per worker process.

``threads`` is Prefect's thread pool in the flow's own process. ``dask`` sends tasks to Dask
worker processes: a cluster already running at an address (``dask scheduler`` plus ``dask
worker`` on each GPU machine), or a local one made for the flow run and closed after it.

Tasks on Dask workers receive their arguments pickled, so a loaded model cannot travel with
them. They get a ``ModelSpec`` instead, and ``upscaler(spec)`` loads the model once per process
and keeps it. Under the thread pool the flow's own process holds it already: no segment loads
it again.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect.context import FlowRunContext
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from remaster.config import RUNNERS
from remaster.engine.cpu import cpu_cores
from remaster.engine.upscaler import Upscaler
from remaster.files import sha256_file
from remaster.parallel import Mapper

log = logging.getLogger(__name__)

MAX_CACHED = 2  # models kept per process: a GPU worker serving x2 and x4 jobs keeps both


def make_task_runner(kind: str, address: str | None = None, workers: int = 1) -> TaskRunner:
    """A task runner of ``kind``: a pool of ``workers`` threads, or Dask at ``address``, or a
    local Dask cluster of ``workers`` single-threaded processes when no address is given."""
    if kind not in RUNNERS:
        raise ValueError(f"runner must be one of {RUNNERS}, got {kind!r}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if kind == "threads":
        if address:
            raise ValueError(f"a Dask address ({address}) needs the dask runner, not threads")
        return ThreadPoolTaskRunner(max_workers=workers)
    import dask.config  # dask and distributed take a second to import: only when asked for
    from prefect_dask import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    cluster_kwargs: dict[str, Any] = {
        "n_workers": workers,
        "threads_per_worker": 1,
        "processes": True,
        "dashboard_address": None,  # not port 8787 on every machine that runs a flow
        # Dask sets OMP_NUM_THREADS=1 in its workers; the machine's cores are shared out instead
        "env": {"OMP_NUM_THREADS": str(max(1, cpu_cores() // workers))},
    }
    if dask.config.get("temporary-directory", None) is None:  # DASK_TEMPORARY_DIRECTORY wins
        # not the shared /tmp/dask-scratch-space, which another user's run may own
        scratch = Path(tempfile.gettempdir()) / f"remaster-dask-{os.getuid()}"
        cluster_kwargs["local_directory"] = str(scratch)  # the workers'
        cluster_kwargs["scheduler_kwargs"] = {"local_directory": str(scratch)}  # and the scheduler's
    return DaskTaskRunner(cluster_class=local_cluster, cluster_kwargs=cluster_kwargs)


def local_cluster(**kwargs: Any) -> Any:
    """A ``distributed.LocalCluster`` that leaves this process's environment as it found it.

    Dask's nanny writes its workers' variables (``OMP_NUM_THREADS=1`` among them) into the
    parent's ``os.environ`` before it spawns them; every model later loaded in this process
    would then run on one thread (``remaster.engine.cpu.cpu_cores`` reads it)."""
    from distributed import LocalCluster

    environ = dict(os.environ)
    try:
        return LocalCluster(**kwargs)
    finally:
        os.environ.clear()
        os.environ.update(environ)


class DaskMapper:
    """A stage's per-image work (``remaster.parallel.Mapper``) on the Dask cluster of the running
    flow, through the client of its prefect-dask task runner: the flow's tasks and the stages'
    items share one cluster. Every worker must see the stage's folders at the same paths."""

    def __init__(self, runner: Any) -> None:
        self.client = runner.client  # prefect-dask connects (or makes the local cluster) here
        workers = self.client.scheduler_info()["workers"].values()
        self.width = max(1, sum(int(w.get("nthreads", 1)) for w in workers))

    def __call__(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        if not items:
            return []
        futures = self.client.map(fn, list(items), pure=False)
        return list(self.client.gather(futures))


def flow_mapper() -> Mapper | None:
    """``DaskMapper`` when the running flow's tasks go to Dask, else None (the stage's own)."""
    ctx = FlowRunContext.get()
    if ctx is None or runs_in_process(ctx.task_runner):
        return None
    return DaskMapper(ctx.task_runner)


def runs_in_process(runner: TaskRunner | None) -> bool:
    """Whether tasks share the flow's memory (so a callback such as a progress bar works)."""
    return runner is None or isinstance(runner, ThreadPoolTaskRunner)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class ModelSpec:
    """What a process needs to load the flow's model itself; picklable, unlike the model."""

    path: str  # every worker must see this file at this path (a shared folder)
    sha256: str  # checked on load: another file at the same path is an error, not another model
    scale: int
    precision: str = "auto"  # resolved by each worker for its own device
    tile: int | None = None  # None: sized to each worker's device memory
    device: str = "auto"
    cuda_graphs: bool = False


_UPSCALERS: OrderedDict[ModelSpec, Upscaler] = OrderedDict()
_LOCK = threading.Lock()  # one load per process even when several threads ask at once


def upscaler(spec: ModelSpec) -> Upscaler:
    """The model ``spec`` names, loaded once in this process and kept (the last few)."""
    with _LOCK:
        if spec in _UPSCALERS:
            _UPSCALERS.move_to_end(spec)
            return _UPSCALERS[spec]
        path = Path(spec.path)
        if not path.exists():
            raise FileNotFoundError(f"model {path} is not visible on {worker_name()}")
        if (sha := sha256_file(path)) != spec.sha256:
            raise RuntimeError(
                f"{path} on {worker_name()} has sha256 {sha[:12]}, not the {spec.sha256[:12]} the flow "
                "hashed: every worker must see the same model file"
            )
        up = Upscaler.load(
            spec.path,
            spec.scale,
            device=spec.device,
            precision=spec.precision,
            tile=spec.tile,
            cuda_graphs=spec.cuda_graphs,
        )
        log.info("loaded %s on %s (%s, %s)", path.name, worker_name(), up.device, up.precision)
        _UPSCALERS[spec] = up
        while len(_UPSCALERS) > MAX_CACHED:
            _UPSCALERS.popitem(last=False)
        return up
