"""The flows as Prefect deployments, run by this process (``remaster serve``).

    remaster serve                         # against PREFECT_API_URL, or a local server
    prefect deployment run 'remaster-episode/remaster' \\
        --params '{"input_path": "in.mkv", "output_path": "out.mkv"}'

Each run starts in a subprocess of this one, with its working folder and environment.
"""

from __future__ import annotations

import logging
from typing import cast

from prefect import serve
from prefect.deployments.runner import RunnerDeployment

from flows.episode import remaster_episode
from flows.pipeline import train_pipeline

log = logging.getLogger(__name__)


def serve_flows(name: str = "remaster", limit: int = 1) -> None:
    """Register both flows as deployments called ``name`` and run their flow runs here, ``limit``
    at a time, until stopped."""
    # to_deployment returns the deployment itself when called outside an event loop
    deployments = [
        cast(RunnerDeployment, remaster_episode.to_deployment(name=name, tags=["remaster"])),
        cast(RunnerDeployment, train_pipeline.to_deployment(name=name, tags=["training"])),
    ]
    log.info("serving remaster-episode/%s and train-pipeline/%s", name, name)
    serve(*deployments, limit=limit)
