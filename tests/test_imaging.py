"""The MATLAB-style bicubic resize: its band gives the full matrix's bytes, and MATLAB's own files."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from remaster.data import imaging
from remaster.data.imaging import bicubic_upscale, downscale, imresize, modcrop

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SET5 = SHARED / "refs" / "benchmarks" / "Set5"

SCALES = [1 / 2, 1 / 3, 1 / 4, 2.0, 3.0, 4.0]
SHAPES = [(37, 53, 3), (53, 37), (31, 29, 1), (96, 80, 3)]  # odd sides, grey, one channel, RGB


def _full_matrix(in_len: int, out_len: int, scale: float) -> np.ndarray:
    """The (out, in) matrix built the dense way: every tap scattered into a zero matrix."""
    width = 4.0 / scale if scale < 1 else 4.0
    u = np.arange(1, out_len + 1, dtype=np.float64) / scale + 0.5 * (1.0 - 1.0 / scale)
    taps = np.floor(u - width / 2.0)[:, None] + np.arange(math.ceil(width) + 2)[None, :]
    w = (
        scale * imaging._cubic(scale * (u[:, None] - taps))
        if scale < 1
        else imaging._cubic(u[:, None] - taps)
    )
    w /= w.sum(axis=1, keepdims=True)
    src = np.mod(taps.astype(np.int64) - 1, 2 * in_len)
    src = np.where(src < in_len, src, 2 * in_len - 1 - src)  # symmetric padding
    mat = np.zeros((out_len, in_len))
    np.add.at(mat, (np.repeat(np.arange(out_len), taps.shape[1]), src.ravel()), w.ravel())
    return mat


def _full_resize(
    img: np.ndarray, scale: float, rounding: Callable[[np.ndarray], np.ndarray] = np.round
) -> np.ndarray:
    """imresize as the whole matrix times the image, pass by pass (the form the band replaced)."""
    quantise = img.dtype == np.uint8
    data = img.astype(np.float64)
    for axis in (0, 1):
        length = img.shape[axis]
        mat = _full_matrix(length, math.ceil(length * scale), scale)
        data = np.moveaxis(np.tensordot(mat, data, axes=(1, axis)), 0, axis)
        if quantise:
            data = np.clip(rounding(data), 0, 255)
    return data.astype(np.uint8) if quantise else data


def _cartoon(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Flat patches with hard edges, black and white among them: outputs land exactly on k + 0.5
    and overshoot past 0 and 255, where a careless sum would round or clip differently."""
    img = np.full(shape, rng.integers(0, 256), np.uint8)
    h, w = shape[:2]
    for _ in range(12):
        y, x = rng.integers(0, h), rng.integers(0, w)
        level = rng.choice([0, 255, int(rng.integers(0, 256))])
        img[y : y + rng.integers(1, h + 1), x : x + rng.integers(1, w + 1)] = level
    return img


def test_weights_are_the_dense_construction_bit_for_bit() -> None:
    for length in [*range(1, 24), 37, 480]:
        for scale in [*SCALES, 0.9, 1.5]:
            out_len = math.ceil(length * scale)
            got, want = imaging._weights(length, out_len, scale), _full_matrix(length, out_len, scale)
            assert got.tobytes() == want.tobytes(), (length, scale)


@pytest.mark.parametrize("scale", SCALES, ids=lambda s: f"x{s:.3g}")
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_banded_resize_is_the_full_product_byte_for_byte(shape: tuple[int, ...], scale: float) -> None:
    rng = np.random.default_rng([*shape, round(scale * 12)])
    for img in (rng.integers(0, 256, shape, dtype=np.uint8), _cartoon(rng, shape)):
        want = _full_resize(img, scale)
        got = imresize(img, scale)
        assert got.dtype == np.uint8 and got.shape == want.shape
        assert np.array_equal(got, want)
    view = rng.integers(0, 256, (shape[0] + 9, shape[1] + 7, 3), dtype=np.uint8)[
        5 : 5 + shape[0], 3 : 3 + shape[1]
    ]
    assert np.array_equal(imresize(view, scale), _full_resize(view, scale))  # a tile cut from a frame


@pytest.mark.parametrize("shape", [(40, 61), (40, 61, 1), (40, 61, 3)])
def test_a_tie_within_rounding_error_is_left_to_the_full_product(
    shape: tuple[int, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    # At x0.9 the weights are not dyadic, so the band's sums may differ from the full matrix's in
    # the last bit, and some rows are symmetric: a step of odd height lands on k + 0.5 exactly.
    img = np.zeros(shape, np.uint8)
    for x in range(shape[1]):
        img[:, x] = 100 if x % 7 < 3 else 133
    img[::5] = 17
    first = np.tensordot(_full_matrix(shape[0], 36, 0.9), img.astype(np.float64), axes=(1, 0))
    second = np.tensordot(_full_matrix(shape[1], 55, 0.9), np.clip(np.round(first), 0, 255), axes=(1, 1))
    assert np.any(np.abs(second - np.floor(second) - 0.5) < 1e-9), "the columns should meet a boundary"
    full_products = []
    weights = imaging._weights

    def counted(in_len: int, out_len: int, scale: float) -> np.ndarray:
        full_products.append((in_len, out_len))
        return weights(in_len, out_len, scale)

    monkeypatch.setattr(imaging, "_weights", counted)
    assert np.array_equal(imresize(img, 0.9), _full_resize(img, 0.9))
    assert full_products, "a near tie must be rounded from the full product"
    full_products.clear()
    assert np.array_equal(imresize(img, 1 / 3), _full_resize(img, 1 / 3))
    assert not full_products, "x3 outputs are never within 1/162 of a boundary: the band alone decides"


def test_float_input_gives_the_full_products_float64_bits() -> None:
    rng = np.random.default_rng(5)
    img = rng.random((45, 38, 3)) * 255
    for arr in (img, img.astype(np.float32), img[::-1, 3:]):
        for scale in (0.5, 1 / 3, 4.0):
            got, want = imresize(arr, scale), _full_resize(arr, scale)
            assert got.dtype == np.float64 and got.shape == want.shape
            assert got.tobytes() == want.tobytes(), scale


def test_public_helpers_keep_their_contracts() -> None:
    img = np.random.default_rng(1).integers(0, 256, (50, 44, 3), dtype=np.uint8)
    assert modcrop(img, 3).shape == (48, 42, 3) and np.array_equal(modcrop(img, 3), img[:48, :42])
    assert np.array_equal(downscale(modcrop(img, 4), 4), _full_resize(img[:48, :44], 0.25))
    assert np.array_equal(bicubic_upscale(img, 3), _full_resize(img, 3.0))
    with pytest.raises(ValueError, match="not divisible"):
        downscale(img, 3)
    with pytest.raises(ValueError, match="positive"):
        imresize(img, 0)


@pytest.fixture(scope="module")
def set5() -> list[tuple[str, np.ndarray]]:
    if not (SET5 / "HR").is_dir() or not (SET5 / "LR_bicubic").is_dir():
        pytest.skip(f"Set5 with MATLAB's LR_bicubic files not found under {SET5}")
    hrs = sorted((SET5 / "HR").glob("*.png"))
    assert len(hrs) == 5
    return [(p.stem, np.asarray(Image.open(p).convert("RGB"))) for p in hrs]


def _matlab_lr(name: str, scale: int) -> np.ndarray:
    return np.asarray(Image.open(SET5 / "LR_bicubic" / f"X{scale}" / f"{name}x{scale}.png").convert("RGB"))


# Measured over the five images (all channels): x3 matches MATLAB byte for byte; x2 has
# 2,889 of 425,592 values off (99.321% identical, baby.png has a few off by 2), x4 60 of
# 106,398 (99.944%), all off by 1.
@pytest.mark.parametrize(("scale", "identical", "max_diff"), [(2, 0.9932, 2), (3, 1.0, 0), (4, 0.9994, 1)])
def test_downscale_matches_matlabs_set5_files(
    set5: list[tuple[str, np.ndarray]], scale: int, identical: float, max_diff: int
) -> None:
    same = total = worst = 0
    for name, hr in set5:
        ours, theirs = downscale(modcrop(hr, scale), scale), _matlab_lr(name, scale)
        assert ours.shape == theirs.shape, name
        diff = np.abs(ours.astype(np.int16) - theirs.astype(np.int16))
        same += int((diff == 0).sum())
        total += diff.size
        worst = max(worst, int(diff.max()))
    assert worst <= max_diff
    assert same / total >= identical


def test_set5_differences_are_half_to_even_rounding_of_exact_ties(set5: list[tuple[str, np.ndarray]]) -> None:
    # np.round sends k + 0.5 to the even neighbour, MATLAB away from zero. With MATLAB's rounding
    # and our weights, every Set5 LR comes out byte for byte, so the weights are MATLAB's.
    for scale in (2, 3, 4):
        for name, hr in set5:
            ours = _full_resize(modcrop(hr, scale), 1 / scale, rounding=lambda v: np.floor(v + 0.5))
            assert np.array_equal(ours, _matlab_lr(name, scale)), (name, scale)
