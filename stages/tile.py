"""Stage ``tile``: plan the HR crops of every ingested image and split them by source image.

Tiles are not written as images: the stage writes an index (``tiles.csv``: image, x, y, split)
that ``pack`` reads, so the pixels are stored once, in the HDF5 files. Positions step by
``stride``; when the last step does not reach the right or bottom edge, one more tile is
aligned to it. Near-flat tiles can be skipped. The split is by source: an image, or the video
that ingest mined frames from (all of a video's frames go to one side, so no scene feeds both
train and val). It is stable: adding a source does not move the others.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import logging
import math
import time
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from remaster.commandline import prepare, progress_enabled, run_main, stage_parser
from remaster.config import TileParams, as_dict
from remaster.files import atomic_path, write_json
from remaster.tracking import Tracker

log = logging.getLogger(__name__)

COLUMNS = ["image", "x", "y", "split"]


def positions(length: int, size: int, stride: int) -> list[int]:
    """Tile origins along one axis: every ``stride``, plus one flush with the far edge."""
    if length < size:
        return []
    pos = list(range(0, length - size + 1, stride))
    if pos[-1] != length - size:
        pos.append(length - size)
    return pos


def tile_count(width: int, height: int, size: int, stride: int) -> int:
    """How many tiles an image gives before flat ones are skipped."""
    return len(positions(width, size, stride)) * len(positions(height, size, stride))


def split_images(hashes: list[str], val_fraction: float, seed: int) -> set[str]:
    """The images held out for validation: the lowest ranks under a seeded hash.

    Ranking each image by its own hash keeps the split stable as images are added. With two
    or more images and a non-zero fraction, at least one image goes to val.
    """
    if val_fraction <= 0 or len(hashes) < 2:
        return set()
    n_val = min(len(hashes) - 1, max(1, round(val_fraction * len(hashes))))
    ranked = sorted(hashes, key=lambda h: hashlib.sha256(f"{seed}:{h}".encode()).hexdigest())
    return set(ranked[:n_val])


def is_flat(tile: np.ndarray, threshold: float) -> bool:
    """True when the tile's luma barely varies (std under ``threshold`` on 0..255)."""
    luma = tile[..., 0] * 0.299 + tile[..., 1] * 0.587 + tile[..., 2] * 0.114
    return float(luma.std()) < threshold


def kept_images(ingested: Path) -> list[tuple[str, str]]:
    """(content hash, source group) of each image ingest kept, in manifest order. The group is
    ``video:<path>`` for a frame mined from a video, else the image's own hash."""
    with open(ingested / "manifest.csv", newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["status"] == "ok"]
    return [(r["hash"], f"video:{r['video']}" if r.get("video") else r["hash"]) for r in rows]


def ok_images(ingested: Path) -> list[str]:
    """Content hashes of the images that ingest kept, in manifest order."""
    return [digest for digest, _ in kept_images(ingested)]


def run(
    params: TileParams,
    ingested: Path,
    out_dir: Path,
    tracker: Tracker | None = None,
    progress: bool | None = None,
) -> dict:
    """Write ``out_dir/tiles.csv`` and ``out_dir/summary.json`` for the images in ``ingested``."""
    started = time.perf_counter()
    if params.stride <= 0 or params.size <= 0:
        raise ValueError("tile.size and tile.stride must be positive")
    kept = kept_images(ingested)
    images = [digest for digest, _ in kept]
    groups = list(dict.fromkeys(group for _, group in kept))
    val_groups = split_images(groups, params.val_fraction, params.seed)
    val = {digest for digest, group in kept if group in val_groups}
    counts = {"train": 0, "val": 0, "flat_skipped": 0, "too_small": 0}
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "tiles.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for digest in tqdm(images, unit="image", desc="tile", disable=not progress_enabled(progress)):
            with Image.open(ingested / "images" / f"{digest}.png") as im:
                rgb = np.asarray(im.convert("RGB"))
            h, w = rgb.shape[:2]
            xs, ys = positions(w, params.size, params.stride), positions(h, params.size, params.stride)
            if not xs or not ys:
                counts["too_small"] += 1
                continue
            split = "val" if digest in val else "train"
            for y in ys:
                for x in xs:
                    tile = rgb[y : y + params.size, x : x + params.size]
                    if params.skip_flat and is_flat(tile, params.flat_std):
                        counts["flat_skipped"] += 1
                        continue
                    writer.writerow([digest, x, y, split])
                    counts[split] += 1
    summary = {
        "images": len(images),
        "tile_size": params.size,
        "stride": params.stride,
        "val_images": len(val),
        "groups": len(groups),
        "val_groups": len(val_groups),
        "tiles_train": counts["train"],
        "tiles_val": counts["val"],
        "tiles_flat_skipped": counts["flat_skipped"],
        "images_smaller_than_a_tile": counts["too_small"],
        "seconds": round(time.perf_counter() - started, 3),
    }
    # Only what depends on the data goes into the output, so an unchanged result hashes the same
    # for DVC and the next stage is skipped; timings go to the log and MLflow.
    write_json(out_dir / "summary.json", {k: v for k, v in summary.items() if k not in ("seconds",)})
    log.info("tile: %s", summary)
    if tracker is not None:
        with tracker.start_run("data", "tile"):
            tracker.log_params({f"tile.{k}": v for k, v in as_dict(params).items()})
            tracker.log_metrics({k: v for k, v in summary.items() if not math.isnan(v)})
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = stage_parser("Plan 480x480 HR tiles for every ingested image and split train/val.")
    parser.add_argument("--ingested", default="data/ingested", help="ingest output (default: %(default)s)")
    parser.add_argument("-o", "--output", default="data/tiles", help="output folder (default: %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    params, tracker = prepare(args)
    run(params.tile, Path(args.ingested), Path(args.output), tracker)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
