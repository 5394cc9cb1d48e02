"""``remaster serve``: the flows as Prefect deployments, run by this process.

    remaster serve                         # against PREFECT_API_URL, or a local server
    prefect deployment run 'remaster-episode/remaster' \\
        --params '{"input_path": "in.mkv", "output_path": "out.mkv"}'

Each run starts in a subprocess of this one, with its working folder and environment.
"""

from __future__ import annotations

import argparse
import logging
from typing import cast

from prefect import serve
from prefect.deployments.runner import RunnerDeployment

from flows.episode import remaster_episode
from flows.pipeline import train_pipeline
from remaster.commandline import quiet_environment, setup_logging

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="remaster serve", description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="remaster", help="deployment name (default: %(default)s)")
    parser.add_argument("--limit", type=int, default=1, help="flow runs at once (default: %(default)s)")
    args = parser.parse_args(argv)
    setup_logging()
    quiet_environment()
    # to_deployment returns the deployment itself when called outside an event loop
    deployments = [
        cast(RunnerDeployment, remaster_episode.to_deployment(name=args.name, tags=["remaster"])),
        cast(RunnerDeployment, train_pipeline.to_deployment(name=args.name, tags=["training"])),
    ]
    log.info("serving remaster-episode/%s and train-pipeline/%s", args.name, args.name)
    serve(*deployments, limit=args.limit)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
