"""Reading and writing pictures with their channels, depth and colour profile kept.

Pillow keeps only 8 bits of a 16-bit colour PNG, so those are read through ffmpeg and written
by ``write_png16``; everything else goes through Pillow. A ``Picture`` is (H, W, C) uint8 or
uint16 pixels with C = 1 grey, 2 grey+alpha, 3 RGB or 4 RGBA, its ICC profile, and notes on
what reading it changed (EXIF orientation applied, a palette expanded, ...).
"""

from __future__ import annotations

import contextlib
import shutil
import struct
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG16 = {0: ("gray16be", 1), 4: ("ya16be", 2), 2: ("rgb48be", 3), 6: ("rgba64be", 4)}  # colour type


@dataclass(frozen=True)
class Picture:
    pixels: np.ndarray  # (H, W, C) uint8 or uint16; C = 1 grey, 2 grey+alpha, 3 RGB, 4 RGBA
    icc: bytes | None = None
    notes: tuple[str, ...] = ()


def _png_info(path: Path) -> tuple[int, int, int, int, bytes | None] | None:
    """(width, height, bit depth, colour type, ICC profile) of a PNG; None for anything else."""
    with path.open("rb") as f:
        if f.read(8) != PNG_SIGNATURE:
            return None
        head, icc = None, None
        while len(chunk := f.read(8)) == 8:
            size, kind = struct.unpack(">I4s", chunk)
            if kind == b"IDAT":
                break
            data = f.read(size)
            f.seek(4, 1)  # CRC
            if kind == b"IHDR":
                head = struct.unpack(">IIBB", data[:10])
            elif kind == b"iCCP":
                with contextlib.suppress(ValueError, zlib.error):  # a bad profile is just dropped
                    icc = zlib.decompress(data[data.index(b"\0") + 2 :])
    return None if head is None else (*head, icc)


def _read_png16(path: Path, w: int, h: int, ctype: int, icc: bytes | None) -> Picture:
    """A 16-bit PNG through ffmpeg, which, unlike Pillow, keeps all 16 bits of colour."""
    if ctype not in PNG16 or not shutil.which("ffmpeg"):
        raise ValueError(f"16-bit PNG of colour type {ctype} needs ffmpeg, which cannot read it here")
    pix_fmt, c = PNG16[ctype]
    cmd = ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-i", str(path)]
    res = subprocess.run(
        [*cmd, "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", pix_fmt, "-"], capture_output=True
    )
    if res.returncode != 0 or len(res.stdout) != w * h * c * 2:
        raise ValueError(f"unreadable 16-bit PNG: {res.stderr.decode(errors='replace').strip()[-200:]}")
    return Picture(np.frombuffer(res.stdout, ">u2").reshape(h, w, c).astype(np.uint16), icc)


def read_picture(path: Path) -> Picture:
    """Decode ``path`` fully into 8 or 16 bits a channel, EXIF orientation applied."""
    png = _png_info(path)
    if png is not None and png[2] == 16:
        return _read_png16(path, png[0], png[1], png[3], png[4])
    notes: list[str] = []
    with Image.open(path) as opened:
        frames = int(getattr(opened, "n_frames", 1))
        if frames > 1:
            notes.append(f"animated: first of {frames} frames")
        icc = opened.info.get("icc_profile")
        img = ImageOps.exif_transpose(opened)
        img.load()
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if mode == "F":
            arr = arr * 65535.0
        elif mode == "I" and arr.max() <= 255:
            return Picture(arr.clip(0, 255).astype(np.uint8)[..., None], icc, tuple(notes))
        return Picture(np.round(arr.clip(0, 65535)).astype(np.uint16)[..., None], icc, tuple(notes))
    if mode in ("P", "PA"):
        mode = "RGBA" if mode == "PA" or "transparency" in img.info else "RGB"
    target = {"1": "L", "L": "L", "LA": "LA", "La": "LA", "RGB": "RGB", "RGBA": "RGBA", "RGBa": "RGBA"}
    want = target.get(mode, "RGBA" if "A" in mode else "RGB")
    arr = np.asarray(img.convert(want) if want != img.mode else img)
    return Picture(arr.reshape(*arr.shape[:2], -1), icc, tuple(notes))


def write_png16(path: Path, px: np.ndarray, icc: bytes | None = None) -> None:
    """Write (H, W, C) uint16 as a 16-bit PNG (Pillow writes 16 bits for greyscale only)."""
    h, w, c = px.shape
    rows = px.astype(">u2").reshape(h, w * c).view(np.uint8)  # (H, W*C*2) big-endian bytes
    up = rows.copy()
    up[1:] -= rows[:-1]  # the "Up" filter, modulo 256
    filt = np.concatenate([np.full((h, 1), 2, np.uint8), up], axis=1)
    filt[0, 0] = 0  # the first row has no row above: "None"

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ctype = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    parts = [PNG_SIGNATURE, chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, ctype, 0, 0, 0))]
    if icc:
        parts.append(chunk(b"iCCP", b"icc\0\0" + zlib.compress(icc)))
    parts += [chunk(b"IDAT", zlib.compress(filt.tobytes(), 6)), chunk(b"IEND", b"")]
    path.write_bytes(b"".join(parts))


def save_picture(pic: Picture, path: Path, fmt: str, quality: int) -> list[str]:
    """Write ``pic`` as ``fmt``; returns notes on what the format could not hold."""
    notes: list[str] = []
    px = pic.pixels
    if fmt == "png" and px.dtype == np.uint16:
        write_png16(path, px, pic.icc)
        return notes
    if px.dtype == np.uint16:
        px = np.round(px / 257.0).astype(np.uint8)
        notes.append(f"16-bit written as 8-bit {fmt}")
    img = Image.fromarray(
        px[..., 0] if px.shape[2] == 1 else px, {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[px.shape[2]]
    )
    if fmt == "jpg" and img.mode in ("LA", "RGBA"):
        base = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(base, img.convert("RGBA")).convert("RGB" if px.shape[2] == 4 else "L")
        notes.append("jpg has no alpha: composited over white")
    if fmt == "webp" and img.mode in ("L", "LA"):
        img = img.convert("RGBA" if img.mode == "LA" else "RGB")
    opts: dict[str, object] = {"icc_profile": pic.icc} if pic.icc else {}
    if fmt == "jpg":
        opts.update(quality=quality, subsampling=0 if quality >= 90 else 2)
    elif fmt == "webp":
        opts.update(quality=quality, lossless=quality >= 100, method=4)
    img.save(path, format={"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}[fmt], **opts)
    return notes
