"""Stage ``pack``: cut the planned tiles, make their LR twins and store both in HDF5.

One file per split (``train.h5``, ``val.h5``) holds ``hr`` (N, T, T, 3) uint8 and, per scale,
``lr_x{s}`` (N, T/s, T/s, 3) uint8, uncompressed and chunked one tile per chunk: compression
barely shrinks image data and slows random crops by 7 to 30x. LR tiles come from the
MATLAB-style anti-aliased bicubic in ``stages.imaging``. Images are read a few at a time, so
memory stays bounded whatever the number of tiles. Each file is written under a temporary name
and renamed when complete: a killed run never leaves a file that a later stage would read.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import time
from functools import partial
from itertools import groupby
from pathlib import Path

import h5py
import numpy as np
from PIL import Image

from stages.common import prepare, progress_enabled, stage_parser
from stages.fsutil import atomic_path, write_json
from stages.imaging import KERNEL, downscale
from stages.parallel import Mapper, SerialMapper, windows
from stages.params import PackParams
from stages.tracking import Tracker
from stages.version import code_version

log = logging.getLogger(__name__)

SPLITS = ("train", "val")


def data_hash(tiles_csv: Path, scales: tuple[int, ...]) -> str:
    """What determines the packed pixels: the tile index (image content hashes, positions,
    splits), the scales and the kernel."""
    h = hashlib.sha256(tiles_csv.read_bytes())
    h.update(f"|{sorted(scales)}|{KERNEL}".encode())
    return h.hexdigest()[:20]


def _cut_image(
    group: tuple[str, list[tuple[int, int]]], ingested: Path, size: int, scales: tuple[int, ...]
) -> list[tuple[np.ndarray, dict[int, np.ndarray]]]:
    """One image's tiles at ``(x, y)``: the HR crop and its LR twin per scale."""
    digest, places = group
    with Image.open(ingested / "images" / f"{digest}.png") as im:
        rgb = np.asarray(im.convert("RGB"))
    out = []
    for x, y in places:
        hr = rgb[y : y + size, x : x + size]
        if hr.shape != (size, size, 3):
            raise ValueError(f"tile {digest}@{x},{y} is outside its {rgb.shape[1]}x{rgb.shape[0]} image")
        out.append((np.ascontiguousarray(hr), {s: downscale(hr, s) for s in scales}))
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
) -> None:
    from tqdm import tqdm

    n = len(rows)
    groups = [
        (digest, [(int(r["x"]), int(r["y"])) for r in group])
        for digest, group in groupby(rows, key=lambda r: r["image"])
    ]
    cut = partial(_cut_image, ingested=ingested, size=size, scales=scales)
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
        image_ds = f.create_dataset("image", (n,), h5py.string_dtype())
        xy_ds = f.create_dataset("xy", (n, 2), np.int32)
        i = 0
        bar = tqdm(total=n, unit="tile", desc=target.stem, disable=not progress)
        # A few images per worker at a time: the cluster stays busy and memory stays bounded.
        for window in windows(groups, 2 * mapper.width):
            for (digest, places), tiles in zip(window, mapper(cut, window), strict=True):
                for (x, y), (hr, lrs) in zip(places, tiles, strict=True):
                    hr_ds[i] = hr
                    for s in scales:
                        lr_ds[s][i] = lrs[s]
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
    attrs = {
        "scales": list(scales),
        "kernel": KERNEL,
        "tile_size": size,
        "manifest_hash": data_hash(tiles_csv, scales),
        "code_version": code_version("stages.pack", "stages.imaging"),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split in SPLITS:
        part = [r for r in rows if r["split"] == split]
        attrs_split = {**attrs, "split": split}
        target = out_dir / f"{split}.h5"
        show = progress_enabled(progress)
        _pack_split(part, ingested, target, size, scales, attrs_split, show, mapper or SerialMapper())
        counts[split] = len(part)
    summary = {
        "tiles_train": counts["train"],
        "tiles_val": counts["val"],
        "scales": list(scales),
        "manifest_hash": attrs["manifest_hash"],
        "seconds": round(time.perf_counter() - started, 3),
    }
    # Only what depends on the data goes into the output, so an unchanged result hashes the same
    # for DVC and the next stage is skipped; timings go to the log and MLflow.
    write_json(out_dir / "summary.json", {k: v for k, v in summary.items() if k not in ("seconds",)})
    log.info("pack: %s", summary)
    if tracker is not None:
        with tracker.start_run("data", "pack", tags={"data_hash": str(attrs["manifest_hash"])}):
            tracker.log_params({"pack.scales": list(scales), "pack.kernel": KERNEL, "tile_size": size})
            tracker.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float))})
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser("Pack HR tiles and their bicubic LR twins into HDF5.")
    parser.add_argument("--ingested", default="data/ingested", help="ingest output (default: %(default)s)")
    parser.add_argument("--tiles", default="data/tiles", help="tile output (default: %(default)s)")
    parser.add_argument("--out", default="data/packed", help="output folder (default: %(default)s)")
    args = parser.parse_args(argv)
    params, tracker = prepare(args)
    run(params.pack, Path(args.ingested), Path(args.tiles), Path(args.out), tracker)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
