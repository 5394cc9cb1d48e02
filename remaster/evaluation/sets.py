"""The images ``evaluate`` scores: packed val tiles, folders of HR images, folders of LR images.

Files are decoded as ingest decodes them (EXIF orientation applied, converted to 8-bit sRGB).
A file that cannot be scored raises ``Unreadable`` with the reason that goes under ``skipped``;
the callers record it and go on.
"""

from __future__ import annotations

import io
import logging
import zlib
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from remaster.data.degradations import Degradation, degrade
from remaster.data.imaging import EXTENSIONS, modcrop, to_rgb8
from remaster.files import display_path

log = logging.getLogger(__name__)


class EvaluateError(ValueError):
    """Nothing (or nothing usable) to evaluate; the message says what to fix."""


class Unreadable(Exception):
    """A file that cannot be scored; ``str()`` is the reason recorded under ``skipped``."""


def read_rgb(path: Path) -> np.ndarray:
    """Decode a whole image file to (H, W, 3) uint8 sRGB, as ingest does; raises ``Unreadable``."""
    if path.suffix.lower() not in EXTENSIONS:
        raise Unreadable("unsupported_extension")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise Unreadable(f"unreadable: {e.strerror or e}") from e
    if not data:
        raise Unreadable("zero_byte")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return np.array(to_rgb8(ImageOps.exif_transpose(img)))
    except UnidentifiedImageError as e:
        raise Unreadable("not_an_image") from e
    except Image.DecompressionBombError as e:
        raise Unreadable(f"too_large: {e}") from e
    except Exception as e:  # a broken file may fail inside any decoder
        text = str(e) or type(e).__name__
        kind = "truncated" if any(w in text.lower() for w in ("truncat", "broken", "eof")) else "corrupt"
        raise Unreadable(f"{kind}: {text}") from e


def list_files(folder: Path) -> list[Path]:
    """Every file below ``folder`` in path order; a missing or empty folder is an error."""
    if not folder.is_dir():
        raise EvaluateError(f"{folder} is not a folder")
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    if not files:
        raise EvaluateError(f"{folder} is empty: no images to evaluate")
    return files


def folder_images(folder: Path, skipped: list[dict[str, str]]) -> Iterator[tuple[str, np.ndarray]]:
    """(name, image) for each readable file, named by its path without the extension."""
    seen: set[str] = set()
    for path in list_files(folder):
        rel = path.relative_to(folder)
        name = display_path(rel.with_suffix(""))
        if name in seen:  # a.png beside a.jpg
            name = display_path(rel)
        seen.add(name)
        try:
            yield name, read_rgb(path)
        except Unreadable as e:
            log.warning("skipped %s: %s", display_path(path), e)
            skipped.append({"name": display_path(rel), "reason": str(e)})


def make_lr(hr: np.ndarray, scale: int, name: str, degradation: Degradation | None) -> np.ndarray:
    """The LR of ``hr``: the pack downsampler, or ``degradation`` (its noise seeded by the name)."""
    return degrade(hr, scale, degradation or Degradation(), seed=zlib.crc32(name.encode()))


def hr_folder_pairs(
    folder: Path, scale: int, skipped: list[dict[str, str]], degradation: Degradation | None = None
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(name, HR cropped to a multiple of ``scale``, LR) for every scoreable image in ``folder``."""
    smallest = 2 * scale + 11  # SSIM's 11x11 window must fit inside the border crop
    for name, img in folder_images(folder, skipped):
        hr = modcrop(img, scale)
        if min(hr.shape[:2]) < smallest:
            h, w = img.shape[:2]
            skipped.append({"name": name, "reason": f"too_small: {w}x{h}, needs {smallest} px a side"})
            continue
        yield name, hr, make_lr(hr, scale, name, degradation)


def packed_pairs(
    path: Path, scale: int, degradation: Degradation | None = None
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(name, HR, LR) for each tile of a packed file; LR from ``lr_x{scale}`` where it is stored,
    or made from the HR with ``degradation``."""
    with h5py.File(path, "r") as f:
        hr_ds, lr_ds = f["hr"], f.get(f"lr_x{scale}")
        if degradation is not None and not degradation.is_clean:
            lr_ds = None
        if lr_ds is None and degradation is None:
            log.info("%s has no lr_x%d: making LR with the pack downsampler", path, scale)
        names, xy = f.get("image"), f.get("xy")
        for i in range(hr_ds.shape[0]):
            name = f"tile{i:05d}"
            if names is not None and xy is not None:
                digest = names[i].decode() if isinstance(names[i], bytes) else str(names[i])
                name = f"{digest[:10]}@{int(xy[i][0])},{int(xy[i][1])}"
            hr = hr_ds[i] if lr_ds is not None else modcrop(hr_ds[i], scale)
            lr = lr_ds[i] if lr_ds is not None else make_lr(hr, scale, name, degradation)
            yield name, hr, lr
