"""The flows as Prefect deployments, run by this process (``remaster serve``).

    remaster serve                         # against PREFECT_API_URL, or a local server
    prefect deployment run 'remaster-episode/remaster' \\
        --params '{"input_path": "in.mkv", "output_path": "out.mkv"}'

Each run starts in a subprocess of this one, with its working folder and environment.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any, cast

from prefect.deployments.runner import RunnerDeployment
from prefect.exceptions import TerminationSignal
from prefect.runner import Runner

from flows.episode import remaster_episode
from flows.pipeline import train_pipeline

log = logging.getLogger(__name__)


class _Runner(Runner):
    """Prefect's runner, noting the signal that stopped it (its own SIGTERM handler pauses the
    deployments and cancels the runs in flight; Ctrl-C ends its loop with KeyboardInterrupt)."""

    stopped_by: signal.Signals | None = None

    def handle_sigterm(self, *args: Any, **kwargs: Any) -> None:
        self.stopped_by = signal.SIGTERM
        super().handle_sigterm(*args, **kwargs)


def serve_flows(name: str = "remaster", limit: int = 1) -> signal.Signals | None:
    """Register both flows as deployments called ``name`` and run their flow runs here, ``limit``
    at a time, until stopped; returns the signal that stopped it (None: it ended by itself)."""
    # to_deployment returns the deployment itself when called outside an event loop
    runner = _Runner(limit=limit, pause_on_shutdown=True)
    for flow, tag in ((remaster_episode, "remaster"), (train_pipeline, "training")):
        runner.add_deployment(cast(RunnerDeployment, flow.to_deployment(name=name, tags=[tag])))
    log.info("serving remaster-episode/%s and train-pipeline/%s", name, name)
    try:
        asyncio.run(runner.start())
    except KeyboardInterrupt:
        return signal.SIGINT
    except TerminationSignal:
        return signal.SIGTERM
    return runner.stopped_by
