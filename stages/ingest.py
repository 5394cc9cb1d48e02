"""Stage ``ingest``: validate, normalise and deduplicate a folder of scraped images, and mine the
best frames out of the videos in it.

Every file found is one manifest row with a status and a reason:

- ``ok``: decoded in full, normalised to 8-bit sRGB RGB and written as ``images/<hash>.png``;
  the reason notes what normalisation did (``from CMYK``, ``exif rotated`` ...);
- ``video``: a video file (``remaster.data.mining.VIDEO_EXTENSIONS``) that frames were mined from
  (``ingest.video`` in params.yaml); the reason sums up the mining. Each mined frame follows it as a
  row of its own, ``<video>#pts=<pts>``, which goes through the same dedup as any image, with its
  ``video``, ``time`` (s), ``pts``, ``frame_type``, ``packet_size``, ``crop`` (w:h:x:y of the
  picture kept), ``deinterlaced`` and ``sar`` (the sample aspect ratio made square);
- ``rejected``: ``zero_byte``, ``not_an_image``, ``truncated``, ``corrupt``, ``unreadable``,
  ``too_small`` or ``too_large``; for a video also ``no_video_stream``, ``too_short`` or
  ``no_usable_frames``;
- ``duplicate`` / ``near_duplicate``: same pixels as, or a perceptual hash within
  ``near_dup_distance`` of, an image earlier in path order;
- ``skipped``: ``unsupported_extension``.

The source folder is only ever read. Results are cached by (path, size, mtime) so a rerun on
an unchanged folder decodes nothing, and a new file costs one decode (one mining for a video).
Images keep their cache when only ``ingest.video`` changes.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import itertools
import json
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from remaster import stopping
from remaster.commandline import prepare, progress_enabled, run_main, stage_parser
from remaster.config import IngestParams, as_dict
from remaster.data import mining
from remaster.data.imaging import EXTENSIONS, to_rgb8
from remaster.files import atomic_path, display_path, write_json
from remaster.parallel import Mapper, SerialMapper, windows
from remaster.tracking import Tracker

log = logging.getLogger(__name__)

STATE_VERSION = 2
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
    size: int = 0  # of the file (a mined frame: of its video)
    mtime_ns: int = 0
    # a mined frame: where it came from and what was done to it (empty for an image)
    video: str = ""  # the video it came from, relative to the source folder
    time: float | None = None  # s from the start of the video, as a player shows it
    pts: int | None = None  # presentation timestamp, in the video stream's time base
    frame_type: str = ""  # I, P or B, as the decoder reports it
    packet_size: int | None = None  # bytes of its coded picture
    crop: str = ""  # w:h:x:y of the picture kept inside letterbox/pillarbox bars; "" = uncropped
    deinterlaced: bool | None = None
    sar: str = ""  # the non-square sample aspect ratio it was scaled from to square pixels


COLUMNS = [f.name for f in fields(Record)]
_PARSE: dict[str, Any] = {
    "width": int,
    "height": int,
    "size": int,
    "mtime_ns": int,
    "time": float,
    "pts": int,
    "packet_size": int,
    "deinterlaced": lambda v: v == "True",
}


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
    return _store(rgb, replace(base, reason="; ".join(notes)), images_dir)


def _store(rgb: Image.Image, base: Record, images_dir: Path) -> Record:
    """Write a normalised RGB picture as ``images/<hash>.png`` (once) and fill in its record."""
    w, h = rgb.size
    digest = hashlib.sha256(f"{w}x{h}:".encode() + rgb.tobytes()).hexdigest()[:20]
    out = images_dir / f"{digest}.png"
    if not out.exists():
        with atomic_path(out) as tmp:
            rgb.save(tmp, format="PNG", compress_level=1)
    return replace(base, hash=digest, width=w, height=h, status="ok", phash=f"{phash(rgb):016x}")


def mine_video(path: Path, rel: str, params: IngestParams, images_dir: Path) -> list[Record]:
    """A video's own row and one row per mined frame (each written as a PNG). A video that gives
    nothing is one ``rejected`` row with the reason; only a stop (or no ffmpeg) raises."""
    try:
        st = path.stat()
    except OSError as exc:
        return [Record(rel, status="rejected", reason=f"unreadable: {exc.strerror or exc}")]
    base = Record(rel, size=st.st_size, mtime_ns=st.st_mtime_ns)
    if st.st_size == 0:
        return [replace(base, status="rejected", reason="zero_byte")]
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        return [replace(base, status="rejected", reason=f"unreadable: {exc.strerror or exc}")]
    try:
        mined = mining.mine(path, params.video, mining.Limits(params.min_side, params.max_pixels))
        plan, sar = mined.plan, mined.source.sar
        done = replace(
            base,
            width=plan.width,
            height=plan.height,
            crop=plan.crop_text,
            deinterlaced=plan.deinterlace,
            sar=f"{sar.numerator}:{sar.denominator}" if plan.square else "",
        )
        rows = [replace(done, status="video", reason=mined.describe())]
        for frame, pixels in mining.mined_frames(path, mined):
            row = replace(
                done,
                source=f"{rel}#pts={frame.pts}",
                video=rel,
                time=round(float(frame.time), 6),
                pts=frame.pts,
                frame_type=frame.frame_type,
                packet_size=frame.packet_size,
            )
            rows.append(_store(Image.fromarray(pixels), row, images_dir))
        return rows
    except mining.Rejected as exc:
        return [replace(base, status="rejected", reason=str(exc))]


def _walk(source: Path) -> list[Path]:
    """Every file below ``source``, in path order (which decides who is the duplicate)."""
    found = [Path(root) / name for root, _, files in os.walk(source) for name in files]
    return sorted(found, key=lambda p: os.fsencode(p.relative_to(source)))


def _read_manifest(path: Path) -> dict[str, Record]:
    if not path.exists():
        return {}
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or set(rows[0]) != set(COLUMNS):
        return {}  # written by an older version: no cache
    parsed: list[dict[str, Any]] = [
        {k: (_PARSE[k](v) if v != "" else None) if k in _PARSE else v for k, v in r.items()} for r in rows
    ]
    return {r["source"]: Record(**r) for r in parsed}


class NearDuplicates:
    """The kept perceptual hashes, searchable for the nearest within ``max_distance`` bits with a
    few dictionary lookups per query, whatever the number kept. The 64 bits are cut into
    ``max_distance + 2`` blocks; two hashes at most ``max_distance`` bits apart differ in at most
    that many blocks, so they agree on at least two whole blocks (pigeonhole). One table per pair of
    blocks, keyed on both, gives every candidate; only those are compared."""

    def __init__(self, max_distance: int) -> None:
        self.max_distance = max_distance
        n = min(max(max_distance, 0) + 2, 64)
        edges = [round(64 * i / n) for i in range(n + 1)]
        blocks = [(lo, (1 << (hi - lo)) - 1) for lo, hi in itertools.pairwise(edges)]
        self.pairs = list(itertools.combinations(blocks, 2))
        self.tables: list[dict[tuple[int, int], list[int]]] = [{} for _ in self.pairs]
        self.hashes: list[int] = []

    def _keys(self, h: int) -> Iterator[tuple[int, int]]:
        for (lo1, mask1), (lo2, mask2) in self.pairs:
            yield (h >> lo1) & mask1, (h >> lo2) & mask2

    def nearest(self, h: int) -> tuple[int, int] | None:
        """(index, distance) of the closest kept hash within ``max_distance``, the earliest on a tie."""
        found: set[int] = set()
        for key, table in zip(self._keys(h), self.tables, strict=True):
            found.update(table.get(key, ()))
        best: tuple[int, int] | None = None
        for i in sorted(found):
            dist = (h ^ self.hashes[i]).bit_count()
            if dist <= self.max_distance and (best is None or dist < best[1]):
                best = (i, dist)
        return best

    def add(self, h: int) -> None:
        for key, table in zip(self._keys(h), self.tables, strict=True):
            table.setdefault(key, []).append(len(self.hashes))
        self.hashes.append(h)


def _deduplicate(records: list[Record], max_distance: int) -> list[Record]:
    """Re-decide duplicates over every valid record, in path order: the first one stays."""
    first_by_hash: dict[str, str] = {}
    kept = NearDuplicates(max_distance)
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
        ph = int(r.phash, 16)
        if (near := kept.nearest(ph)) is not None:
            reason = f"near_duplicate of {kept_sources[near[0]]} (distance {near[1]})"
            out.append(replace(r, status="near_duplicate", reason="; ".join([reason, *notes])))
            continue
        first_by_hash[r.hash] = r.source
        kept.add(ph)
        kept_sources.append(r.source)
        out.append(replace(r, status="ok", reason="; ".join(notes)))
    return out


def is_video(path: Path) -> bool:
    return path.suffix.lower() in mining.VIDEO_EXTENSIONS


def _examine_item(item: tuple[Path, str], params: IngestParams, images_dir: Path) -> list[Record]:
    """One file's rows: an image's one, or a video's own and its mined frames'."""
    path, rel = item
    if is_video(path):
        return mine_video(path, rel, params, images_dir)
    return [examine(path, rel, params, images_dir)]


def _fingerprint(params: IngestParams) -> dict[str, Any]:
    """What the cache depends on: images on every param but ``video``, videos on all of them."""
    images = {k: v for k, v in as_dict(params).items() if k != "video"}
    return {"version": STATE_VERSION, "params": images, "video": as_dict(params.video)}


def run(
    params: IngestParams,
    source: Path,
    out_dir: Path,
    tracker: Tracker | None = None,
    mapper: Mapper | None = None,
    progress: bool | None = None,
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
    fingerprint = _fingerprint(params)
    state = json.loads(state_path.read_text() or "null") if state_path.exists() else None
    state = state if isinstance(state, dict) else {}
    same_images = all(state.get(k) == fingerprint[k] for k in ("version", "params"))
    same_videos = same_images and state.get("video") == fingerprint["video"]
    cache = _read_manifest(manifest_path) if same_images else {}
    frames_of: dict[str, list[Record]] = {}
    for r in cache.values():
        if r.video:
            frames_of.setdefault(r.video, []).append(r)
    found: list[list[Record] | None] = []
    todo: list[tuple[Path, str]] = []
    for path in _walk(source):
        rel = display_path(path.relative_to(source))
        video = is_video(path)
        if path.suffix.lower() not in EXTENSIONS and not video:
            found.append([Record(rel, status="skipped", reason="unsupported_extension")])
            continue
        old = cache.get(rel)
        try:
            st = path.stat()
            same = old is not None and (old.size, old.mtime_ns) == (st.st_size, st.st_mtime_ns)
        except OSError:
            same = False
        if same and old is not None and old.status != "skipped" and (same_videos or not video):
            found.append([old, *frames_of.get(rel, [])] if video else [old])
        else:
            found.append(None)  # filled in path order from the mapper's results
            todo.append((path, rel))
    examine_one = partial(_examine_item, params=params, images_dir=images_dir)
    mapper = mapper or SerialMapper()
    done: list[list[Record]] = []
    with tqdm(total=len(todo), unit="file", desc="ingest", disable=not progress_enabled(progress)) as bar:
        for chunk in windows(todo, 4 * mapper.width):  # a few per worker at a time, for the bar
            done += mapper(examine_one, chunk)
            bar.update(len(chunk))
    results = iter(done)
    records = [r for rows in found for r in (rows if rows is not None else next(results))]
    decoded = len(todo)
    records = _deduplicate(records, params.near_dup_distance)
    # A kept image whose PNG is gone (its twin used to be the one kept) is decoded again; a kept
    # frame's video is mined again, which gives the same frames.
    remined: set[str] = set()
    for i, r in enumerate(records):
        if r.status != "ok" or (images_dir / f"{r.hash}.png").exists():
            continue
        if not r.video:
            fresh = examine(source / r.source, r.source, params, images_dir)
            records[i] = replace(fresh, status=r.status, reason=r.reason)
            decoded += 1
        elif r.video not in remined:
            remined.add(r.video)
            mine_video(source / r.video, r.video, params, images_dir)
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
        "files": sum(1 for r in records if not r.video),
        "videos": statuses["video"],
        "frames": sum(1 for r in records if r.video),
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
    parser = stage_parser("Validate, normalise and deduplicate a folder of images; mine frames from videos.")
    parser.add_argument("--source", help="the scrape folder (default: ingest.source_dir)")
    parser.add_argument(
        "-o", "--output", default="data/ingested", help="output folder (default: %(default)s)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    params, tracker = prepare(args)
    source = Path(args.source or params.ingest.source_dir)
    with stopping.stop_on_signals("remaster ingest", "run the same command again"):
        run(params.ingest, source, Path(args.output), tracker)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
