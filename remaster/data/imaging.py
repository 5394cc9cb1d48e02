"""Image helpers shared by the stages: MATLAB-style bicubic resize and colour normalisation.

The LR side of every training pair is made here, so the downsampler must match MATLAB's
``imresize`` (anti-aliased bicubic, a = -0.5, symmetric padding). OpenCV's INTER_CUBIC or
``torch.nn.functional.interpolate`` without antialias alias badly and cost several dB
downstream; Pillow quantises between its two passes and differs at edges by up to 15 levels.

Each pass of the resize is a matrix over one axis in which every output reads only a few
inputs (8 of 480 at x2, 16 at x4). uint8 images go through that band alone, in blocks of a few
output rows, which is many times faster than the full matrix and gives the same bytes: see
``_Axis`` for why. Other dtypes keep the full product, whose last bits belong to the BLAS.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import NamedTuple

import numpy as np
from PIL import Image

KERNEL = "matlab-bicubic-aa"


# The image files a scrape may hold, by suffix, with the format Pillow must find inside.
EXTENSIONS = {
    ".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".bmp": "BMP",
    ".tif": "TIFF", ".tiff": "TIFF", ".gif": "GIF",
}  # fmt: skip

# Weights that are multiples of 2**-_FRAC_BITS (x2 and x4, down and up) make every partial sum
# over uint8 values an integer times that step, exactly representable in float64.
_FRAC_BITS = 40
# OpenBLAS starts threads for products above 65536 * 4 multiply-adds (M * N * K); the band's
# products stay below it, where one thread beats two fighting over the cores with the stage's workers.
_BLOCK_MACS = 1 << 18


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5, as MATLAB uses."""
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    near = (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
    far = (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2))
    return near + far


class _Axis(NamedTuple):
    """How one axis is resized: output ``o`` is ``band[o, :span[o]]`` dotted with the inputs
    ``first[o] : first[o] + span[o]``, two taps mirrored onto one pixel summed into one weight.

    The full matrix multiplies the zeros too, but they add nothing: the band sums the same
    products. Not in the same roundings, though: the BLAS fuses each multiply-add, splits long
    sums (at input 240 of 480) and treats the last columns and some layouts apart, which no
    numpy sum retraces, so float output keeps the full product. A uint8 pass keeps only the
    rounded values, and those agree whenever the pass cannot round differently: with ``exact``
    weights (x2 and x4: multiples of 2**-40) every sum is exact in any order; otherwise both
    sums are within ``tol`` of each other, and a pass with an output within ``tol`` of a
    rounding boundary (k + 0.5) is redone with the full matrix. x3 never is: its weights are
    multiples of 1/81 (1/27 up), so an output is at least 1/162 from a boundary.
    """

    first: np.ndarray  # (out,) int64
    span: np.ndarray  # (out,) int64
    band: np.ndarray  # (out, max span) float64, zero past each row's span
    exact: bool
    tol: float


@lru_cache(maxsize=64)
def _axis(in_len: int, out_len: int, scale: float) -> _Axis:
    kernel_width = 4.0
    if scale < 1:  # anti-aliasing: stretch the kernel over the footprint of one output pixel
        kernel_width /= scale
    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1.0 - 1.0 / scale)  # 1-based input coordinate of each output pixel
    left = np.floor(u - kernel_width / 2.0)
    taps = math.ceil(kernel_width) + 2
    idx = left[:, None] + np.arange(taps)[None, :]  # (out, taps), 1-based
    dist = u[:, None] - idx
    w = scale * _cubic(scale * dist) if scale < 1 else _cubic(dist)
    w /= w.sum(axis=1, keepdims=True)
    # Symmetric padding: index 0 -> 1, -1 -> 2, in_len+1 -> in_len, ...
    mirror = np.concatenate([np.arange(in_len), np.arange(in_len - 1, -1, -1)])
    src = mirror[np.mod(idx.astype(np.int64) - 1, 2 * in_len)]  # 0-based; consecutive per row
    first = src.min(axis=1)
    span = src.max(axis=1) - first + 1
    band = np.zeros((out_len, int(span.max(initial=0))))
    rows = np.arange(out_len)
    for t in range(taps):  # tap by tap, so mirrored taps add up in the order the matrix sums them
        band[rows, src[:, t] - first] += w[:, t]
    steps = band * 2.0**_FRAC_BITS
    abs_sum = float(np.abs(band).sum(axis=1).max(initial=0.0))
    exact = bool(np.all(steps == np.trunc(steps))) and 255.0 * abs_sum * 2.0**_FRAC_BITS < 2.0**53
    # Either product rounds at most twice per tap (plus a few partial sums the BLAS may add),
    # each time by at most 2**-53 of the running sum of |weight * value| <= 255 * abs_sum;
    # tol is twice that bound (the two products may err either way), twice again for margin.
    roundings = 2 * band.shape[1] + 8
    tol = 4.0 * roundings * 2.0**-53 * 255.0 * abs_sum
    for a in (first, span, band):
        a.setflags(write=False)
    return _Axis(first, span, band, exact, tol)


@lru_cache(maxsize=64)
def _weights(in_len: int, out_len: int, scale: float) -> np.ndarray:
    """The (out_len, in_len) matrix that resizes one axis, boundary mirroring folded in."""
    ax = _axis(in_len, out_len, scale)
    mat = np.zeros((out_len, in_len), dtype=np.float64)
    inside = np.arange(ax.band.shape[1])[None, :] < ax.span[:, None]
    rows, cols = np.nonzero(inside)
    mat[rows, ax.first[rows] + cols] = ax.band[rows, cols]
    mat.setflags(write=False)
    return mat


@lru_cache(maxsize=256)
def _blocks(
    in_len: int, out_len: int, scale: float, rows: int, chans: int
) -> tuple[tuple[int, int, int, np.ndarray], ...]:
    """The band cut into dense blocks of ``rows`` outputs: (first output, first input, inputs,
    weights). With ``chans`` 0 a block is (outputs, inputs), to multiply an axis from the left;
    otherwise it is (inputs * chans, outputs * chans), to multiply from the right an axis whose
    values interleave ``chans`` channels, one channel never reaching into another."""
    ax = _axis(in_len, out_len, scale)
    out = []
    for o0 in range(0, out_len, rows):
        o1 = min(o0 + rows, out_len)
        lo = int(ax.first[o0:o1].min())
        hi = int((ax.first[o0:o1] + ax.span[o0:o1]).max())
        block: np.ndarray = np.zeros((o1 - o0, hi - lo))
        for o in range(o0, o1):
            f, s = int(ax.first[o]) - lo, int(ax.span[o])
            block[o - o0, f : f + s] = ax.band[o, :s]
        if chans:
            block = np.kron(block.T, np.eye(chans))
        block.setflags(write=False)
        out.append((o0, lo, hi - lo, block))
    return tuple(out)


def _block_rows(in_len: int, out_len: int, width: int, macs_per_pair: int) -> int:
    """The most outputs (up to 8) per block whose product stays within ``_BLOCK_MACS``, for a
    product that costs ``macs_per_pair`` multiply-adds per (output, input) pair of the block."""
    for rows in (8, 4, 2):
        if rows * (math.ceil((rows - 1) * in_len / out_len) + width) * macs_per_pair <= _BLOCK_MACS:
            return rows
    return 1


def _near_tie(out: np.ndarray, ax: _Axis) -> bool:
    """Whether the band's rounding of ``out`` could differ from the full matrix's."""
    return not ax.exact and bool(np.any(np.abs(out - np.floor(out) - 0.5) <= ax.tol))


def _band_rows(data: np.ndarray, out_len: int, scale: float) -> np.ndarray | None:
    """The full matrix times ``data`` (in_len, cols), whole values in [0, 255], from the band
    alone; None where an output is so near a rounding boundary that the full product must decide."""
    in_len, cols = data.shape
    ax = _axis(in_len, out_len, scale)
    out = np.empty((out_len, cols))
    per_block = _block_rows(in_len, out_len, ax.band.shape[1], cols)
    for o0, lo, n, block in _blocks(in_len, out_len, scale, per_block, 0):
        np.dot(block, data[lo : lo + n], out=out[o0 : o0 + block.shape[0]])
    return None if _near_tie(out, ax) else out


def _band_cols(data: np.ndarray, out_len: int, scale: float, chans: int) -> np.ndarray | None:
    """As ``_band_rows`` along the second axis of ``data`` (rows, in_len * chans), channels
    interleaved: (rows, out_len * chans), with no transpose of the image either way."""
    rows, cols = data.shape
    in_len = cols // chans
    ax = _axis(in_len, out_len, scale)
    per_block = _block_rows(in_len, out_len, ax.band.shape[1], rows * chans * chans)
    out = np.empty((rows, out_len * chans))
    for o0, lo, n, block in _blocks(in_len, out_len, scale, per_block, chans):
        o = o0 * chans
        np.matmul(data[:, lo * chans : (lo + n) * chans], block, out=out[:, o : o + block.shape[1]])
    return None if _near_tie(out, ax) else out


def imresize(img: np.ndarray, scale: float) -> np.ndarray:
    """Resize an (H, W, C) or (H, W) array like MATLAB's ``imresize(img, scale, 'bicubic')``.

    A uint8 input gives a uint8 output (rounded and clipped, as MATLAB does); any other
    dtype gives float64, unclipped.
    """
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    h, w = img.shape[:2]
    out_h, out_w = math.ceil(h * scale), math.ceil(w * scale)
    data = img.astype(np.float64)
    if img.dtype != np.uint8:
        for axis, length, out_len in ((0, h, out_h), (1, w, out_w)):
            data = _full_product(data, axis, length, out_len, scale)
        return data
    # Rows first, then columns; MATLAB rounds a uint8 image back to uint8 after each pass.
    # With it we match its Set5 files exactly at x3; at x2 and x4, where outputs can land on
    # k + 0.5, np.round's half-to-even leaves 0.7% and 0.06% of values off MATLAB's
    # half-away-from-zero (by one level, two at most).
    if img.size == 0:
        return np.zeros((out_h, out_w, *img.shape[2:]), np.uint8)
    chans = math.prod(img.shape[2:])
    band = _band_rows(np.ascontiguousarray(data).reshape(h, w * chans), out_h, scale)
    if band is None:
        band = np.round(_full_product(data, 0, h, out_h, scale)).reshape(out_h, w * chans)
    else:
        np.round(band, out=band)
    rows = np.clip(band, 0, 255, out=band)
    band = _band_cols(rows, out_w, scale, chans)
    if band is None:
        band = np.round(_full_product(rows.reshape((out_h, w, *img.shape[2:])), 1, w, out_w, scale))
    else:
        np.round(band, out=band)
    out = np.clip(band, 0, 255, out=band).astype(np.uint8, order="C")
    return out.reshape((out_h, out_w, *img.shape[2:]))


def _full_product(data: np.ndarray, axis: int, length: int, out_len: int, scale: float) -> np.ndarray:
    """One pass as the whole (out, in) matrix times ``data`` along ``axis``. Its last bits depend
    on the BLAS and on how ``data`` lies in memory, so a uint8 pass hands it the array laid out
    as it always was: the image as given, then the rounded first pass, C-contiguous."""
    mat = _weights(length, out_len, scale)
    return np.moveaxis(np.tensordot(mat, data, axes=(1, axis)), 0, axis)


def bicubic_upscale(img: np.ndarray, scale: int) -> np.ndarray:
    """The baseline every score is set beside: MATLAB-style bicubic, (H, W, 3) uint8 -> x``scale``."""
    return imresize(img, float(scale))


def downscale(hr: np.ndarray, factor: int) -> np.ndarray:
    """The LR counterpart of an HR uint8 image whose sides are divisible by ``factor``."""
    h, w = hr.shape[:2]
    if h % factor or w % factor:
        raise ValueError(f"{w}x{h} is not divisible by the scale {factor}")
    return imresize(hr, 1.0 / factor)


def modcrop(img: np.ndarray, factor: int) -> np.ndarray:
    """Crop the bottom/right so both sides are multiples of ``factor`` (the benchmark rule)."""
    h, w = img.shape[:2]
    return img[: h - h % factor, : w - w % factor]


def to_rgb8(img: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Normalise any Pillow image to 8-bit RGB.

    Alpha (RGBA, LA, palette transparency) is composited over ``background``; CMYK goes
    through Pillow's conversion; 16-bit and 32-bit greyscale are scaled to 8 bits rather than
    clipped, which would turn most 16-bit images white.
    """
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(np.round(arr * 255.0 / top), 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(np.round(arr * 255.0), 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        base = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(base, rgba).convert("RGB")
    if img.mode != "RGB":
        img = img.convert("RGB")
    return img
