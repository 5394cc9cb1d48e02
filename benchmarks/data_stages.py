"""Throughput and memory of ingest, tile and pack on generated 1920x1080 images.

    python benchmarks/data_stages.py --n 400        # the issue's scale; about 20 min on 2 cores
    python benchmarks/data_stages.py --n 40         # a quick look

Prints one table: seconds, images/s and tiles/s per stage, and the peak RSS of the process
(which runs all the stages, so the peak bounds each of them). ``pack realistic`` packs the
same tiles with ``pack.degradation: realistic`` (the clean LR plus LR through kernels, blur,
noise and real x264 / MPEG-2 / JPEG codecs), so its ratio to ``pack`` is what degradation costs.
``pack dense resize`` packs them once more with the resize as it was before the band (the whole
matrix times the image, kept below and swapped in), and checks that both packs hold the same bytes.
Then a video row: ingest mining the shared 1080p clip looped to ``--video-minutes`` (1).
"""

from __future__ import annotations

import argparse
import math
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from remaster.config import IngestParams, PackParams, TileParams
from remaster.data import imaging
from remaster.engine.cpu import cpu_line
from stages import ingest, pack, tile
from stages.demo import write_images


def dense_imresize(img: np.ndarray, scale: float) -> np.ndarray:
    """``imaging.imresize`` before the band: each pass multiplies the whole (out, in) matrix."""
    quantise = img.dtype == np.uint8
    data = img.astype(np.float64)
    for axis in (0, 1):
        length = img.shape[axis]
        mat = imaging._weights(length, math.ceil(length * scale), scale)
        data = np.moveaxis(np.tensordot(mat, data, axes=(1, axis)), 0, axis)
        if quantise:
            data = np.clip(np.round(data), 0, 255)
    return data.astype(np.uint8) if quantise else data


@contextmanager
def resize_with(fn: Callable[[np.ndarray, float], np.ndarray]) -> Iterator[None]:
    """Swap ``imaging.imresize`` (which ``downscale`` calls) for ``fn`` inside the block."""
    saved = imaging.imresize
    setattr(imaging, "imresize", fn)  # noqa: B010
    try:
        yield
    finally:
        setattr(imaging, "imresize", saved)  # noqa: B010


def same_packs(a: Path, b: Path, chunk: int = 64) -> bool:
    """Whether two packs hold the same datasets, compared a few tiles at a time."""
    for split in pack.SPLITS:
        with h5py.File(a / f"{split}.h5", "r") as fa, h5py.File(b / f"{split}.h5", "r") as fb:
            if set(fa) != set(fb):
                return False
            for key in fa:
                da, db = fa[key], fb[key]
                if da.shape != db.shape:
                    return False
                for i in range(0, da.shape[0], chunk):
                    if not np.array_equal(da[i : i + chunk], db[i : i + chunk]):
                        return False
    return True


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=400, help="images (default: %(default)s)")
    ap.add_argument("--width", type=int, default=1920)
    ap.add_argument("--height", type=int, default=1080)
    ap.add_argument("--workdir", type=Path, help="keep the files here instead of a temp folder")
    ap.add_argument("--video-minutes", type=float, default=1.0, help="video row's source length (0: none)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.workdir or Path(tmp)
        t0 = time.perf_counter()
        write_images(root / "scrape", args.n, seed=100, width=args.width, height=args.height)
        gen_s = time.perf_counter() - t0
        rss_after_gen = peak_rss_mib()
        rows = []
        t = time.perf_counter()
        s = ingest.run(IngestParams(near_dup_distance=0), root / "scrape", root / "ingested")
        rows.append(("ingest", time.perf_counter() - t, s["ok"], None))
        t = time.perf_counter()
        s = tile.run(TileParams(), root / "ingested", root / "tiles")
        n_tiles = s["tiles_train"] + s["tiles_val"]
        rows.append(("tile", time.perf_counter() - t, s["images"], n_tiles))
        t = time.perf_counter()
        with resize_with(dense_imresize):
            s = pack.run(
                PackParams(), root / "ingested", root / "tiles", root / "packed_dense", progress=False
            )
        rows.append(("pack dense resize", time.perf_counter() - t, None, s["tiles_train"] + s["tiles_val"]))
        t = time.perf_counter()
        s = pack.run(PackParams(), root / "ingested", root / "tiles", root / "packed", progress=False)
        rows.append(("pack", time.perf_counter() - t, None, s["tiles_train"] + s["tiles_val"]))
        identical = same_packs(root / "packed", root / "packed_dense")
        t = time.perf_counter()
        real = PackParams(degradation="realistic")
        s = pack.run(real, root / "ingested", root / "tiles", root / "packed_real", progress=False)
        rows.append(("pack realistic", time.perf_counter() - t, None, s["tiles_train"] + s["tiles_val"]))
    print(f"machine: {cpu_line()}, python {platform.python_version()}")
    print(f"{args.n} generated {args.width}x{args.height} images ({gen_s:.1f} s to generate)\n")
    print("| stage             | seconds | images/s | tiles/s |")
    print("| ---               | ---:    | ---:     | ---:    |")
    for name, secs, imgs, tiles in rows:
        ips = f"{imgs / secs:.2f}" if imgs else "-"
        tps = f"{tiles / secs:.1f}" if tiles else "-"
        print(f"| {name:<17} | {secs:7.1f} | {ips:>8} | {tps:>7} |")
    took = {name: s for name, s, _, _ in rows}
    print(f"\nrealistic pack / clean pack: {took['pack realistic'] / took['pack']:.2f}x")
    print(
        f"pack with the banded resize: {took['pack dense resize'] / took['pack']:.2f}x the dense one's speed"
    )
    print(f"packed bytes identical with either resize: {'yes' if identical else 'NO'}")
    print(f"\npeak RSS: {peak_rss_mib():.0f} MiB (after generating the images: {rss_after_gen:.0f} MiB)")
    if args.video_minutes > 0:
        video_row(args.video_minutes)
    return 0


def video_row(minutes: float) -> None:
    """Ingest on a video: the shared 1080p clip looped to ``minutes`` (``benchmarks/mining.py``
    has the long runs and their memory)."""
    from benchmarks.mining import CLIP, DEFAULT_SET, looped, one

    if not CLIP.exists():
        print(f"\nvideo row skipped: {CLIP} is not there")
        return
    with tempfile.TemporaryDirectory(prefix="mining-src-") as tmp:
        r = one(looped(CLIP, minutes, Path(tmp) / "loop.mp4"), DEFAULT_SET)
    print(f"\ningest on a video ({CLIP.name} looped; {', '.join(DEFAULT_SET)}):\n")
    print("| source min | frames kept | frames/s decoded | s per source min |")
    print("| ---: | ---: | ---: | ---: |")
    cells = [f"{r['minutes']:.1f}", str(r["kept"]), f"{r['decoded'] / r['seconds']:.0f}"]
    print("| " + " | ".join([*cells, f"{r['seconds'] / r['minutes']:.1f}"]) + " |")


if __name__ == "__main__":
    raise SystemExit(main())
