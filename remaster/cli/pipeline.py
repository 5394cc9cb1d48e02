"""``remaster pipeline``: ingest -> tile -> pack -> train -> evaluate as one Prefect flow run
(``flows.pipeline``), the same stages ``dvc repro`` runs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from remaster import stopping
from remaster.commandline import UserError, load_params_or_exit, run_main, stage_parser
from remaster.config import RUNNERS


def build_parser() -> argparse.ArgumentParser:
    parser = stage_parser("Run ingest -> tile -> pack -> train -> evaluate as a Prefect flow.")
    parser.add_argument("--source", type=Path, help="the scrape folder (default: ingest.source_dir)")
    parser.add_argument(
        "--data-dir", default="data", help="where each stage's outputs go (default: %(default)s)"
    )
    parser.add_argument("--runs-dir", default="runs/train", help="checkpoints (default: %(default)s)")
    parser.add_argument(
        "--runner",
        choices=RUNNERS,
        default="threads",
        help="dask: ingest's decodes and pack's resizes go to Dask workers (default: %(default)s)",
    )
    parser.add_argument("--dask-address", help="a running scheduler, tcp://HOST:PORT (default: a local one)")
    parser.add_argument("--workers", type=int, default=2, help="local Dask processes (default: %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    params = load_params_or_exit(args.params, args.overrides)  # a bad value: exit 2 before Prefect starts
    source = args.source or Path(params.ingest.source_dir)
    if not source.is_dir():
        raise UserError(f"source folder {source} does not exist or is not a folder")
    from flows.pipeline import train_pipeline  # Prefect, torch: only for real work
    from flows.runners import make_task_runner
    from remaster.commandline import quiet_environment, setup_logging

    setup_logging(args.verbose)
    quiet_environment()
    pipeline = train_pipeline
    if args.runner == "dask":
        runner: Any = make_task_runner("dask", args.dask_address, args.workers)
        pipeline = train_pipeline.with_options(task_runner=runner)
    resume = (
        f"each finished stage's outputs stay and training resumes from {args.runs_dir}/last.pt; run it again"
    )
    try:
        with stopping.stop_on_signals("remaster pipeline", resume):
            pipeline(
                args.params, args.overrides, args.source and str(args.source), args.data_dir, args.runs_dir
            )
    except BaseException as e:  # Stopped, or Prefect's own exception for the signal
        if (code := stopping.stopped(e)) is not None:
            return code
        raise
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
