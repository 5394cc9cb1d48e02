"""Stage ``pack``: cut the planned tiles, make their LR twins and store both in HDF5.

One file per split (``train.h5``, ``val.h5``) holds ``hr`` (N, T, T, 3) uint8 and, per scale,
``lr_x{s}`` (N, T/s, T/s, 3) uint8, uncompressed and chunked one tile per chunk: compression
barely shrinks image data and slows random crops by 7 to 30x. LR tiles come from the
MATLAB-style anti-aliased bicubic in ``remaster.data.imaging``. With ``pack.degradation: realistic``
each file also holds ``lr_x{s}_real``: the same tiles degraded like a real old episode
(``remaster.data.degradations``: kernel, blur, noise, 4:2:0 and a real codec), with each tile's chain
in ``degradation_x{s}`` and the settings and ffmpeg build in the attributes. Every draw is seeded
from the tile itself, so ``dvc repro`` rebuilds the same bits. Images are read a few at a time, so
memory stays bounded whatever the number of tiles. Each file is written under a temporary name
and renamed when complete: a killed run never leaves a file that a later stage would read.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from functools import partial
from itertools import groupby
from pathlib import Path

import h5py
import numpy as np
from PIL import Image

from remaster.commandline import prepare, progress_enabled, run_main, stage_parser
from remaster.config import PackParams, RealisticParams, as_dict, flatten
from remaster.data.degradations import DegradationError, degrade_batch, ffmpeg_version, tile_degradation
from remaster.data.imaging import KERNEL, downscale
from remaster.files import atomic_path, write_json
from remaster.parallel import Mapper, SerialMapper, windows
from remaster.tracking import Tracker
from remaster.version import code_version

log = logging.getLogger(__name__)

SPLITS = ("train", "val")


def data_hash(tiles_csv: Path, scales: tuple[int, ...], realistic: RealisticParams | None = None) -> str:
    """What determines the packed pixels: the tile index (image content hashes, positions,
    splits), the scales, the kernel and, for a realistic pack, its settings."""
    h = hashlib.sha256(tiles_csv.read_bytes())
    h.update(f"|{sorted(scales)}|{KERNEL}".encode())
    if realistic is not None:
        h.update(json.dumps(as_dict(realistic), sort_keys=True).encode())
    return h.hexdigest()[:20]


@dataclass
class CutTile:
    hr: np.ndarray  # (T, T, 3) uint8
    lr: dict[int, np.ndarray]  # scale -> (T/s, T/s, 3) uint8, clean bicubic
    real: dict[int, tuple[np.ndarray, str]] = field(default_factory=dict)  # scale -> (LR, chain spec)


def _cut_image(
    group: tuple[str, list[tuple[int, int]], int],
    ingested: Path,
    size: int,
    scales: tuple[int, ...],
    realistic: RealisticParams | None = None,
) -> list[CutTile]:
    """One image's tiles at ``(x, y)``: the HR crop, its clean LR twin per scale and, with
    ``realistic``, a degraded twin per scale (all of the image's tiles in one encode)."""
    digest, places, first = group
    with Image.open(ingested / "images" / f"{digest}.png") as im:
        rgb = np.asarray(im.convert("RGB"))
    out = []
    for x, y in places:
        hr = rgb[y : y + size, x : x + size]
        if hr.shape != (size, size, 3):
            raise ValueError(f"tile {digest}@{x},{y} is outside its {rgb.shape[1]}x{rgb.shape[0]} image")
        out.append(CutTile(np.ascontiguousarray(hr), {s: downscale(hr, s) for s in scales}))
    if realistic is not None:
        # every scale's tiles in one call, so that their codec batches run at once
        at = [(s, tile, xy) for s in scales for tile, xy in zip(out, places, strict=True)]
        drawn = [tile_degradation(realistic, digest, s, *xy) for s, _, xy in at]
        hrs, per_tile = [tile.hr for _, tile, _ in at], [s for s, _, _ in at]
        try:
            lrs = degrade_batch(hrs, per_tile, [d for d, _ in drawn], [seed for _, seed in drawn])
        except DegradationError as e:  # e begins "at x{scale}: "
            last = first + len(places) - 1
            raise DegradationError(f"tiles {first}..{last} (image {digest[:12]}) {e}") from e
        for (s, tile, _), lr, (deg, _) in zip(at, lrs, drawn, strict=True):
            tile.real[s] = (lr, deg.spec)
    return out


def _pack_split(
    rows: list[dict[str, str]],
    ingested: Path,
    target: Path,
    size: int,
    scales: tuple[int, ...],
    attrs: dict,
    progress: bool,
    mapper: Mapper,
    realistic: RealisticParams | None = None,
) -> None:
    from tqdm import tqdm

    n = len(rows)
    groups: list[tuple[str, list[tuple[int, int]], int]] = []  # (image, tile places, index of its first tile)
    start = 0
    for digest, group in groupby(rows, key=lambda r: r["image"]):
        places = [(int(r["x"]), int(r["y"])) for r in group]
        groups.append((digest, places, start))
        start += len(places)
    cut = partial(_cut_image, ingested=ingested, size=size, scales=scales, realistic=realistic)
    with atomic_path(target) as tmp, h5py.File(tmp, "w") as f:
        hr_ds = f.create_dataset("hr", (n, size, size, 3), np.uint8, chunks=(1, size, size, 3) if n else None)
        lr_ds = {
            s: f.create_dataset(
                f"lr_x{s}",
                (n, size // s, size // s, 3),
                np.uint8,
                chunks=(1, size // s, size // s, 3) if n else None,
            )
            for s in scales
        }
        real_ds, spec_ds = {}, {}
        if realistic is not None:
            for s in scales:
                shape = (n, size // s, size // s, 3)
                chunks = (1, size // s, size // s, 3) if n else None
                real_ds[s] = f.create_dataset(f"lr_x{s}_real", shape, np.uint8, chunks=chunks)
                spec_ds[s] = f.create_dataset(f"degradation_x{s}", (n,), h5py.string_dtype())
        image_ds = f.create_dataset("image", (n,), h5py.string_dtype())
        xy_ds = f.create_dataset("xy", (n, 2), np.int32)
        i = 0
        bar = tqdm(total=n, unit="tile", desc=target.stem, disable=not progress)
        # A few images per worker at a time: the cluster stays busy and memory stays bounded.
        for window in windows(groups, 2 * mapper.width):
            try:
                results = mapper(cut, window)
            except DegradationError as e:
                raise DegradationError(f"{target.name}: {e}") from e
            for (digest, places, _), tiles in zip(window, results, strict=True):
                for (x, y), tile in zip(places, tiles, strict=True):
                    hr_ds[i] = tile.hr
                    for s in scales:
                        lr_ds[s][i] = tile.lr[s]
                    for s, (lr, spec) in tile.real.items():
                        real_ds[s][i] = lr
                        spec_ds[s][i] = spec
                    image_ds[i] = digest
                    xy_ds[i] = (x, y)
                    i += 1
                    bar.update()
        bar.close()
        f.attrs.update(attrs)


def run(
    params: PackParams,
    ingested: Path,
    tiles_dir: Path,
    out_dir: Path,
    tracker: Tracker | None = None,
    progress: bool | None = None,
    mapper: Mapper | None = None,
) -> dict:
    """Write ``out_dir/{train,val}.h5`` from the tile index in ``tiles_dir``.

    Images are cut and downscaled through ``mapper`` (default: one by one here) and written
    here in order, so the files are the same whichever mapper ran.
    """
    started = time.perf_counter()
    scales = tuple(sorted(set(params.scales)))
    tiles_csv = tiles_dir / "tiles.csv"
    with open(tiles_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    size = int(json.loads((tiles_dir / "summary.json").read_text())["tile_size"])
    for s in scales:
        if size % s:
            raise ValueError(f"tile size {size} is not divisible by the scale {s}")
    realistic = params.realistic if params.degradation == "realistic" else None
    attrs = {
        "scales": list(scales),
        "kernel": KERNEL,
        "tile_size": size,
        "degradation": params.degradation,
        "manifest_hash": data_hash(tiles_csv, scales, realistic),
        "code_version": code_version("stages.pack", "remaster.data.imaging", "remaster.data.degradations"),
    }
    if realistic is not None:
        # what rebuilds these bits: the settings, and the ffmpeg build that coded them
        attrs["realistic"] = json.dumps(as_dict(realistic), sort_keys=True)
        attrs["ffmpeg"] = ffmpeg_version()
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split in SPLITS:
        part = [r for r in rows if r["split"] == split]
        attrs_split = {**attrs, "split": split}
        target = out_dir / f"{split}.h5"
        show = progress_enabled(progress)
        _pack_split(
            part, ingested, target, size, scales, attrs_split, show, mapper or SerialMapper(), realistic
        )
        counts[split] = len(part)
    summary = {
        "tiles_train": counts["train"],
        "tiles_val": counts["val"],
        "scales": list(scales),
        "degradation": params.degradation,
        "manifest_hash": attrs["manifest_hash"],
        "seconds": round(time.perf_counter() - started, 3),
    }
    # Only what depends on the data goes into the output, so an unchanged result hashes the same
    # for DVC and the next stage is skipped; timings go to the log and MLflow.
    write_json(out_dir / "summary.json", {k: v for k, v in summary.items() if k not in ("seconds",)})
    log.info("pack: %s", summary)
    if tracker is not None:
        with tracker.start_run("data", "pack", tags={"data_hash": str(attrs["manifest_hash"])}):
            logged = {"pack.scales": list(scales), "pack.kernel": KERNEL, "tile_size": size}
            logged["pack.degradation"] = params.degradation
            if realistic is not None:
                logged |= flatten(as_dict(realistic), "pack.realistic.")
            tracker.log_params(logged)
            tracker.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float))})
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = stage_parser("Pack HR tiles and their bicubic LR twins into HDF5.")
    parser.add_argument("--ingested", default="data/ingested", help="ingest output (default: %(default)s)")
    parser.add_argument("--tiles", default="data/tiles", help="tile output (default: %(default)s)")
    parser.add_argument("-o", "--output", default="data/packed", help="output folder (default: %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    params, tracker = prepare(args)
    run(params.pack, Path(args.ingested), Path(args.tiles), Path(args.output), tracker)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
