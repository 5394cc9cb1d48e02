"""The ``train-pipeline`` flow: ingest -> tile -> pack -> train, as Prefect tasks.

Each task calls the same ``run()`` as the DVC stage of that name; the flow only wires paths.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from stages import ingest, pack, tile, train
from stages.common import quiet_environment, setup_logging
from stages.params import load_params
from stages.tracking import Tracker, make_tracker

# Trackers hold clients that cannot be hashed, so Prefect's input caching is off for these tasks.
ingest_task = task(name="ingest", cache_policy=NO_CACHE)(ingest.run)
tile_task = task(name="tile", cache_policy=NO_CACHE)(tile.run)
pack_task = task(name="pack", cache_policy=NO_CACHE)(pack.run)
train_task = task(name="train", cache_policy=NO_CACHE, tags=["gpu"])(train.run)


@flow(name="train-pipeline", log_prints=True)
def train_pipeline(
    params_path: str = "params.yaml",
    overrides: list[str] | None = None,
    source: str | None = None,
    data_dir: str = "data",
    runs_dir: str = "runs/train",
    tracker: Any = None,
) -> dict[str, Any]:
    """Run the data stages and training with the params in ``params_path``."""
    params = load_params(params_path, overrides or [])
    trk: Tracker = tracker if tracker is not None else make_tracker(params.tracking.enabled)
    data = Path(data_dir)
    src = Path(source or params.ingest.source_dir)
    summary: dict[str, Any] = {}
    summary["ingest"] = ingest_task(params.ingest, src, data / "ingested", trk)
    summary["tile"] = tile_task(params.tile, data / "ingested", data / "tiles", trk)
    summary["pack"] = pack_task(params.pack, data / "ingested", data / "tiles", data / "packed", trk)
    summary["train"] = train_task(
        params.train,
        data / "packed" / "train.h5",
        data / "packed" / "val.h5",
        Path(runs_dir),
        trk,
        metrics_path=Path("metrics/train.json"),
        plots_dir=Path("plots/train"),
    )
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run ingest -> tile -> pack -> train as a Prefect flow.")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--source", help="the scrape folder (default: ingest.source_dir)")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--runs-dir", default="runs/train")
    args = parser.parse_args(argv)
    setup_logging()
    quiet_environment()
    train_pipeline(args.params, args.overrides, args.source, args.data_dir, args.runs_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
