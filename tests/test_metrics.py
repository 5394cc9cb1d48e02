"""Y-PSNR / SSIM in the benchmark convention; numpy and torch versions agree."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from remaster.evaluation.metrics import (
    psnr_rgb,
    psnr_y,
    psnr_y_torch,
    rgb_to_y,
    ssim_y,
    ssim_y_torch,
)

C1 = (0.01 * 255) ** 2


def _rand_pair(seed: int, h: int = 40, w: int = 48, noise: float = 6.0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(h // 4, w // 4, 3)).astype(np.float64)
    hr = np.clip(np.kron(base, np.ones((4, 4, 1))) + rng.normal(0, 10, (h, w, 3)), 0, 255)
    hr8 = np.round(hr).astype(np.uint8)
    sr = np.clip(hr + rng.normal(0, noise, hr.shape), 0, 255)
    return hr8, np.round(sr).astype(np.uint8)


def _to_torch(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img).permute(2, 0, 1).double() / 255.0  # (3, H, W)


def test_rgb_to_y_range_and_dtypes() -> None:
    black = np.zeros((2, 2, 3), np.uint8)
    white = np.full((2, 2, 3), 255, np.uint8)
    assert np.allclose(rgb_to_y(black), 16.0)
    assert np.allclose(rgb_to_y(white), 235.0)
    img = _rand_pair(0)[0]
    assert np.allclose(rgb_to_y(img), rgb_to_y(img / 255.0))
    red = np.zeros((1, 1, 3), np.uint8)
    red[..., 0] = 255
    assert rgb_to_y(red)[0, 0] == pytest.approx(16 + 65.481)


def test_identical_images() -> None:
    hr, _ = _rand_pair(1)
    assert psnr_y(hr, hr, 2) == math.inf
    assert psnr_rgb(hr, hr, 2) == math.inf
    assert ssim_y(hr, hr, 2) == pytest.approx(1.0, abs=1e-12)
    t = _to_torch(hr)[None]
    assert torch.isinf(psnr_y_torch(t, t, 2)).all()
    assert ssim_y_torch(t, t, 2).item() == pytest.approx(1.0, abs=1e-12)


def test_known_psnr_for_a_known_error() -> None:
    hr = np.full((16, 16, 3), 100, np.uint8)
    sr = hr + 1  # every channel one level up
    assert psnr_rgb(sr, hr, 0) == pytest.approx(20 * math.log10(255.0))  # 48.13 dB
    dy = (65.481 + 128.553 + 24.966) / 255.0  # = 219/255 levels of Y
    assert psnr_y(sr, hr, 0) == pytest.approx(20 * math.log10(255.0 / dy))
    sr2 = hr.copy()
    sr2[..., 1] += 10  # green only: MSE over RGB is 100 / 3
    assert psnr_rgb(sr2, hr, 0) == pytest.approx(10 * math.log10(255.0**2 / (100 / 3)))


def test_ssim_of_flat_images_has_closed_form() -> None:
    a, b = 80, 120  # on flat images the variances vanish: SSIM = luminance term
    sr = np.full((20, 20, 3), a, np.uint8)
    hr = np.full((20, 20, 3), b, np.uint8)
    ya, yb = rgb_to_y(sr)[0, 0], rgb_to_y(hr)[0, 0]
    expected = (2 * ya * yb + C1) / (ya**2 + yb**2 + C1)
    assert ssim_y(sr, hr, 1) == pytest.approx(expected, rel=1e-9)


def test_ssim_falls_with_noise_and_is_symmetric() -> None:
    hr, sr_small = _rand_pair(2, noise=2.0)
    _, sr_big = _rand_pair(2, noise=20.0)
    assert 1.0 > ssim_y(sr_small, hr, 2) > ssim_y(sr_big, hr, 2) > 0.0
    assert ssim_y(sr_big, hr, 2) == pytest.approx(ssim_y(hr, sr_big, 2), abs=1e-12)


def test_crop_removes_the_border() -> None:
    hr, _ = _rand_pair(3)
    sr = hr.copy()
    sr[:2] = 255 - sr[:2]  # damage two rows at the top only
    assert psnr_y(sr, hr, 2) == math.inf
    assert psnr_y(sr, hr, 1) < 30.0
    assert ssim_y(sr, hr, 2) == pytest.approx(1.0)
    assert ssim_y(sr, hr, 1) < 1.0
    t_sr, t_hr = _to_torch(sr)[None], _to_torch(hr)[None]
    assert torch.isinf(psnr_y_torch(t_sr, t_hr, 2)).all()
    assert torch.isfinite(psnr_y_torch(t_sr, t_hr, 1)).all()
    with pytest.raises(ValueError, match="crop"):
        psnr_y(sr, hr, 20)
    with pytest.raises(ValueError, match="SSIM"):
        ssim_y(sr, hr, 15)


def test_input_checks() -> None:
    hr, sr = _rand_pair(4)
    with pytest.raises(TypeError, match="uint8"):
        psnr_y(sr / 255.0, hr, 2)
    with pytest.raises(ValueError, match="shape"):
        psnr_y(sr[:-1], hr, 2)
    with pytest.raises(ValueError, match="shape"):
        psnr_y_torch(_to_torch(sr)[None], _to_torch(hr)[None, :, :-1], 2)


def test_numpy_and_torch_agree() -> None:
    rng = np.random.default_rng(5)
    hrs, srs_float = [], []
    for seed in range(3):
        hr, _ = _rand_pair(10 + seed)
        hrs.append(hr)
        # a float prediction, partly outside [0, 1], as a network emits it
        srs_float.append(hr / 255.0 + rng.normal(0, 0.03, hr.shape))
    sr_t = torch.from_numpy(np.stack(srs_float)).permute(0, 3, 1, 2).float()  # (B, 3, H, W)
    hr_t = torch.stack([_to_torch(h) for h in hrs]).float()
    p_t = psnr_y_torch(sr_t, hr_t, 3)
    s_t = ssim_y_torch(sr_t, hr_t, 3)
    assert p_t.shape == s_t.shape == (3,)
    for i in range(3):
        # what the benchmarks do: save the prediction as 8 bits, then score the file
        sr8 = sr_t[i].permute(1, 2, 0).double().numpy().clip(0, 1) * 255.0
        sr8 = np.round(sr8).astype(np.uint8)
        assert p_t[i].item() == pytest.approx(psnr_y(sr8, hrs[i], 3), abs=1e-4)
        assert s_t[i].item() == pytest.approx(ssim_y(sr8, hrs[i], 3), abs=1e-5)
    assert len({round(v, 3) for v in p_t.tolist()}) == 3  # per image, not a batch mean
