"""Stage ``ingest``: validate, normalise and deduplicate a folder of scraped images.

Every file found is one manifest row with a status and a reason:

- ``ok``: decoded in full, normalised to 8-bit sRGB RGB and written as ``images/<hash>.png``;
  the reason notes what normalisation did (``from CMYK``, ``exif rotated`` ...);
- ``rejected``: ``zero_byte``, ``not_an_image``, ``truncated``, ``corrupt``, ``unreadable``,
  ``too_small`` or ``too_large``;
- ``duplicate`` / ``near_duplicate``: same pixels as, or a perceptual hash within
  ``near_dup_distance`` of, an image earlier in path order;
- ``skipped``: ``unsupported_extension``.

The source folder is only ever read. Results are cached by (path, size, mtime) so a rerun on
an unchanged folder decodes nothing, and a new file costs one decode.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import logging
import os
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, fields, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from remaster.commandline import prepare, run_main, stage_parser
from remaster.config import IngestParams, as_dict
from remaster.data.imaging import EXTENSIONS, to_rgb8
from remaster.files import atomic_path, display_path, write_json
from remaster.parallel import Mapper, SerialMapper
from remaster.tracking import Tracker

log = logging.getLogger(__name__)

STATE_VERSION = 1
VALID = ("ok", "duplicate", "near_duplicate")  # decoded fine; the dedup pass decides which


@dataclass(frozen=True)
class Record:
    source: str  # relative to the source folder; invalid UTF-8 bytes shown as \xNN
    hash: str = ""  # sha256 of the normalised pixels (with the size), first 20 hex digits
    width: int = 0
    height: int = 0
    status: str = ""
    reason: str = ""
    phash: str = ""  # 64-bit DCT perceptual hash, hex
    size: int = 0
    mtime_ns: int = 0


COLUMNS = [f.name for f in fields(Record)]


def phash(img: Image.Image) -> int:
    """DCT perceptual hash: the signs of the 8x8 lowest frequencies of a 32x32 thumbnail."""
    grey = np.asarray(img.convert("L").resize((32, 32), Image.Resampling.LANCZOS), np.float64)
    n = np.arange(32)
    dct = np.cos(np.pi * (2 * n[None, :] + 1) * n[:, None] / 64.0)  # (k, n)
    low = (dct @ grey @ dct.T)[:8, :8].ravel()
    bits = low > np.median(low[1:])
    return int("".join("1" if b else "0" for b in bits), 2)


def _classify_load_error(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, EOFError) or any(w in text.lower() for w in ("truncat", "broken", "eof")):
        return f"truncated: {text}"
    return f"corrupt: {text}"


def examine(path: Path, rel: str, params: IngestParams, images_dir: Path) -> Record:
    """Decode one file fully and, if it passes, write its normalised PNG. Never raises."""
    try:
        st = path.stat()
    except OSError as exc:
        return Record(rel, status="rejected", reason=f"unreadable: {exc.strerror or exc}")
    base = Record(rel, size=st.st_size, mtime_ns=st.st_mtime_ns)
    if st.st_size == 0:
        return replace(base, status="rejected", reason="zero_byte")
    try:
        data = path.read_bytes()
    except OSError as exc:
        return replace(base, status="rejected", reason=f"unreadable: {exc.strerror or exc}")
    notes: list[str] = []
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        return replace(base, status="rejected", reason="not_an_image")
    except Image.DecompressionBombError as exc:
        return replace(base, status="rejected", reason=f"too_large: {exc}")
    except Exception as exc:  # noqa: BLE001 - a scraped file may break a decoder in any way
        return replace(base, status="rejected", reason=_classify_load_error(exc))
    expected = EXTENSIONS.get(path.suffix.lower())
    if img.format and expected and img.format != expected:
        notes.append(f"wrong_extension: {path.suffix} holds {img.format}")
    w, h = img.size
    if w * h > params.max_pixels:
        return replace(
            base,
            width=w,
            height=h,
            status="rejected",
            reason=f"too_large: {w}x{h} is over {params.max_pixels} pixels",
        )
    frames = getattr(img, "n_frames", 1)
    if frames > 1:
        notes.append(f"animated: first of {frames} frames")
    try:
        img.seek(0)
        img.load()
        oriented = ImageOps.exif_transpose(img)
    except Exception as exc:  # noqa: BLE001
        return replace(base, width=w, height=h, status="rejected", reason=_classify_load_error(exc))
    if oriented.size != img.size or img.getexif().get(0x0112, 1) not in (1, None):
        notes.append("exif rotated")
    if img.mode != "RGB":
        notes.append(f"from {img.mode}")
    rgb = to_rgb8(oriented, params.background)
    w, h = rgb.size
    if min(w, h) < params.min_side:
        return replace(
            base,
            width=w,
            height=h,
            status="rejected",
            reason=f"too_small: short side {min(w, h)} < {params.min_side}",
        )
    digest = hashlib.sha256(f"{w}x{h}:".encode() + rgb.tobytes()).hexdigest()[:20]
    out = images_dir / f"{digest}.png"
    if not out.exists():
        with atomic_path(out) as tmp:
            rgb.save(tmp, format="PNG", compress_level=1)
    return replace(
        base, hash=digest, width=w, height=h, status="ok", reason="; ".join(notes), phash=f"{phash(rgb):016x}"
    )


def _walk(source: Path) -> list[Path]:
    """Every file below ``source``, in path order (which decides who is the duplicate)."""
    found = [Path(root) / name for root, _, files in os.walk(source) for name in files]
    return sorted(found, key=lambda p: os.fsencode(p.relative_to(source)))


def _read_manifest(path: Path) -> dict[str, Record]:
    if not path.exists():
        return {}
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    ints = {"width", "height", "size", "mtime_ns"}
    parsed: list[dict[str, Any]] = [{k: int(v) if k in ints else v for k, v in r.items()} for r in rows]
    return {r["source"]: Record(**r) for r in parsed}


def _deduplicate(records: list[Record], max_distance: int) -> list[Record]:
    """Re-decide duplicates over every valid record, in path order: the first one stays."""
    first_by_hash: dict[str, str] = {}
    kept_hashes: list[int] = []
    kept_sources: list[str] = []
    out: list[Record] = []
    for r in records:
        if r.status not in VALID:
            out.append(r)
            continue
        notes = [n for n in r.reason.split("; ") if n and "duplicate of" not in n]
        if r.hash in first_by_hash:
            out.append(
                replace(
                    r, status="duplicate", reason="; ".join([f"duplicate of {first_by_hash[r.hash]}", *notes])
                )
            )
            continue
        ph = np.uint64(int(r.phash, 16))
        if kept_hashes:
            dist = np.bitwise_count(np.array(kept_hashes, dtype=np.uint64) ^ ph)
            j = int(np.argmin(dist))
            if int(dist[j]) <= max_distance:
                reason = f"near_duplicate of {kept_sources[j]} (distance {int(dist[j])})"
                out.append(replace(r, status="near_duplicate", reason="; ".join([reason, *notes])))
                continue
        first_by_hash[r.hash] = r.source
        kept_hashes.append(int(ph))
        kept_sources.append(r.source)
        out.append(replace(r, status="ok", reason="; ".join(notes)))
    return out


def _examine_item(item: tuple[Path, str], params: IngestParams, images_dir: Path) -> Record:
    return examine(item[0], item[1], params, images_dir)


def run(
    params: IngestParams,
    source: Path,
    out_dir: Path,
    tracker: Tracker | None = None,
    mapper: Mapper | None = None,
) -> dict:
    """Ingest ``source`` into ``out_dir`` (``images/``, ``manifest.csv``, ``summary.json``).

    The files that need decoding go through ``mapper`` (default: one by one here); on a cluster,
    every worker must see ``source`` and ``out_dir`` at the same paths.
    """
    started = time.perf_counter()
    if not source.is_dir():
        raise FileNotFoundError(f"source folder {source} does not exist or is not a folder")
    images_dir = out_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    manifest_path, state_path = out_dir / "manifest.csv", out_dir / "state.json"
    fingerprint = {"version": STATE_VERSION, "params": as_dict(params)}
    cache: dict[str, Record] = {}
    if state_path.exists() and json.loads(state_path.read_text() or "null") == fingerprint:
        cache = _read_manifest(manifest_path)
    found: list[Record | None] = []
    todo: list[tuple[Path, str]] = []
    for path in _walk(source):
        rel = display_path(path.relative_to(source))
        if path.suffix.lower() not in EXTENSIONS:
            found.append(Record(rel, status="skipped", reason="unsupported_extension"))
            continue
        old = cache.get(rel)
        try:
            st = path.stat()
            same = old is not None and (old.size, old.mtime_ns) == (st.st_size, st.st_mtime_ns)
        except OSError:
            same = False
        if same and old is not None and old.status != "skipped":
            found.append(old)
        else:
            found.append(None)  # filled in path order from the mapper's results
            todo.append((path, rel))
    examine_one = partial(_examine_item, params=params, images_dir=images_dir)
    results = iter((mapper or SerialMapper())(examine_one, todo))
    records = [r if r is not None else next(results) for r in found]
    decoded = len(todo)
    records = _deduplicate(records, params.near_dup_distance)
    # A kept image whose PNG is gone (its twin used to be the one kept) is decoded again.
    for i, r in enumerate(records):
        if r.status == "ok" and not (images_dir / f"{r.hash}.png").exists():
            fresh = examine(source / r.source, r.source, params, images_dir)
            records[i] = replace(fresh, status=r.status, reason=r.reason)
            decoded += 1
    keep = {f"{r.hash}.png" for r in records if r.status == "ok"}
    for png in images_dir.iterdir():
        if png.name not in keep:
            if png.is_dir():
                shutil.rmtree(png)
            else:
                png.unlink()
    with atomic_path(manifest_path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(asdict(r) for r in records)
    write_json(state_path, fingerprint)
    statuses = Counter(r.status for r in records)
    reasons = Counter(r.reason.split(":")[0] for r in records if r.status in ("rejected", "skipped"))
    summary = {
        "files": len(records),
        "ok": statuses["ok"],
        "rejected": statuses["rejected"],
        "duplicate": statuses["duplicate"],
        "near_duplicate": statuses["near_duplicate"],
        "skipped": statuses["skipped"],
        "reasons": dict(sorted(reasons.items())),
        "decoded": decoded,
        "seconds": round(time.perf_counter() - started, 3),
    }
    # Only what depends on the data goes into the output, so an unchanged result hashes the same
    # for DVC and the next stage is skipped; timings go to the log and MLflow.
    write_json(
        out_dir / "summary.json", {k: v for k, v in summary.items() if k not in ("seconds", "decoded")}
    )
    log.info("ingest: %s", summary)
    if tracker is not None:
        with tracker.start_run("data", "ingest"):
            tracker.log_params({f"ingest.{k}": v for k, v in as_dict(params).items()})
            metrics = {k: v for k, v in summary.items() if isinstance(v, (int, float))}
            metrics.update({f"rejected.{k}": v for k, v in reasons.items()})
            tracker.log_metrics(metrics)
            tracker.log_artifact(manifest_path)
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = stage_parser("Validate, normalise and deduplicate a folder of images.")
    parser.add_argument("--source", help="the scrape folder (default: ingest.source_dir)")
    parser.add_argument(
        "-o", "--output", default="data/ingested", help="output folder (default: %(default)s)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    params, tracker = prepare(args)
    source = Path(args.source or params.ingest.source_dir)
    run(params.ingest, source, Path(args.output), tracker)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
