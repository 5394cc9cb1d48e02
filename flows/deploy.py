"""The flows as deployments on a Prefect work pool, run by workers (``remaster deploy``).

    remaster deploy --pool remaster            # once, against PREFECT_API_URL
    prefect worker start --pool remaster       # on each machine that should run flows
    prefect deployment run 'remaster-episode/remaster' \\
        --params '{"input_path": "/shared/ep01.mkv", "output_path": "/shared/ep01_x4.mkv"}'

Unlike ``remaster serve`` (one process that registers the flows and runs them itself), the
deployments live on the server and any worker of the pool picks up a run, in a subprocess of
its own. The flows' code is this project folder: each worker machine needs the project
installed at the same path (or on a shared filesystem), and runs the worker from its virtual
environment. The pool is created, of type ``process``, if it does not exist.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, cast

from prefect import Flow, get_client
from prefect.client.schemas.actions import WorkPoolCreate

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
# entry point (relative to the project) -> tags of its deployment
FLOWS = {
    "flows/episode.py:remaster_episode": ["remaster"],
    "flows/pipeline.py:train_pipeline": ["training"],
}


def ensure_pool(name: str) -> bool:
    """Create the work pool ``name`` (type process) unless it exists; True if it was created."""
    with get_client(sync_client=True) as client:
        if any(pool.name == name for pool in client.read_work_pools()):
            return False
        client.create_work_pool(WorkPoolCreate(name=name, type="process"))
    log.info("created the work pool %r (process)", name)
    return True


def deploy(pool: str, name: str) -> list[str]:
    """Register every flow of ``FLOWS`` as ``<flow>/<name>`` on ``pool``; returns the deployment ids."""
    ensure_pool(pool)
    ids = []
    for entrypoint, tags in FLOWS.items():
        # from_source and deploy return the values themselves when called outside an event loop
        loaded = cast(Flow[..., Any], Flow.from_source(source=str(ROOT), entrypoint=entrypoint))
        deployment_id = loaded.deploy(
            name=name, work_pool_name=pool, tags=tags, build=False, push=False, print_next_steps=False
        )
        log.info("deployed %s/%s on the pool %r", loaded.name, name, pool)
        ids.append(str(deployment_id))
    return ids
