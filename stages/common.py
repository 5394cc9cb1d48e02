"""What every stage's thin ``main()`` shares: the command line, params and the tracker."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from stages.params import Params, load_params
from stages.tracking import Tracker, make_tracker


def stage_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    parser.add_argument(
        "-S",
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a param, e.g. -S ingest.min_side=700 (repeatable)",
    )
    parser.add_argument("--no-track", action="store_true", help="do not record to MLflow")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def quiet_environment() -> None:
    """Telemetry off for every tool of the stack; the project never phones home."""
    for key, value in {
        "DO_NOT_TRACK": "true",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DVC_NO_ANALYTICS": "1",
    }.items():
        os.environ.setdefault(key, value)


def prepare(args: argparse.Namespace) -> tuple[Params, Tracker]:
    """Logging, quiet telemetry, params with overrides, and the tracker the params ask for."""
    setup_logging(args.verbose)
    quiet_environment()
    params = load_params(args.params, args.overrides)
    tracker = make_tracker(params.tracking.enabled and not args.no_track)
    return params, tracker


def progress_enabled(flag: bool | None = None) -> bool:
    """One progress bar per long loop, and none when stderr is not a terminal."""
    return sys.stderr.isatty() if flag is None else flag
