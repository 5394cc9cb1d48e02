"""Image-quality metrics in the convention of the SR benchmarks (MATLAB / BasicSR).

Scores are computed on the BT.601 luma channel on the [16, 235] scale, unrounded (as BasicSR
does; MATLAB's ``rgb2ycbcr`` on uint8 would round Y), after cropping ``crop`` pixels from
every border (the benchmarks crop the scale factor). SSIM is Wang et al.'s: an 11x11 Gaussian
window with sigma 1.5 over the valid region only, C1 = (0.01 * 255)^2, C2 = (0.03 * 255)^2.

The numpy functions score uint8 images, as saved to disk. The torch functions score batches
of float images in [0, 1] during validation; they quantise the prediction to 1/255 steps first
so that both give the same number for the same picture. Both compute in float64.
"""

from __future__ import annotations

import math
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F

# BT.601 coefficients for RGB in [0, 1] -> Y in [16, 235].
_Y_COEFFS = (65.481, 128.553, 24.966)
_SSIM_SIZE = 11
_SSIM_SIGMA = 1.5
_C1 = (0.01 * 255.0) ** 2
_C2 = (0.03 * 255.0) ** 2

_Array = TypeVar("_Array", np.ndarray, torch.Tensor)


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB, uint8 or float in [0, 1] -> (H, W) float64 luma on [16, 235]."""
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {img.shape}")
    rgb = img.astype(np.float64)
    if img.dtype == np.uint8:
        rgb /= 255.0
    r, g, b = _Y_COEFFS
    return 16.0 + r * rgb[..., 0] + g * rgb[..., 1] + b * rgb[..., 2]


def _check_pair(sr: np.ndarray, hr: np.ndarray, crop: int) -> None:
    if sr.dtype != np.uint8 or hr.dtype != np.uint8:
        raise TypeError(f"expected uint8 images, got {sr.dtype} and {hr.dtype}")
    if sr.shape != hr.shape:
        raise ValueError(f"shape mismatch: sr {sr.shape} vs hr {hr.shape}")
    if crop < 0:
        raise ValueError(f"crop must be >= 0, got {crop}")
    if sr.shape[0] <= 2 * crop or sr.shape[1] <= 2 * crop:
        raise ValueError(f"crop {crop} leaves nothing of a {sr.shape[1]}x{sr.shape[0]} image")


def _crop(img: np.ndarray, crop: int) -> np.ndarray:
    return img[crop:-crop, crop:-crop] if crop > 0 else img


def _psnr_from_mse(mse: float) -> float:
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def psnr_y(sr: np.ndarray, hr: np.ndarray, crop: int) -> float:
    """Y-channel PSNR in dB of two (H, W, 3) uint8 images; inf when they are identical."""
    _check_pair(sr, hr, crop)
    diff = _crop(rgb_to_y(sr), crop) - _crop(rgb_to_y(hr), crop)
    return _psnr_from_mse(float(np.mean(diff**2)))


def psnr_rgb(sr: np.ndarray, hr: np.ndarray, crop: int) -> float:
    """PSNR in dB over all three RGB channels of two (H, W, 3) uint8 images."""
    _check_pair(sr, hr, crop)
    diff = _crop(sr, crop).astype(np.float64) - _crop(hr, crop).astype(np.float64)
    return _psnr_from_mse(float(np.mean(diff**2)))


def _gaussian_1d() -> np.ndarray:
    x = np.arange(_SSIM_SIZE, dtype=np.float64) - (_SSIM_SIZE - 1) / 2
    g = np.exp(-(x**2) / (2.0 * _SSIM_SIGMA**2))
    g /= g.sum()
    return g


def _filter_valid(img: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 'valid' correlation of an (H, W) image with the outer product g g^T."""
    n = len(g)
    h, w = img.shape
    rows = np.zeros((h - n + 1, w))  # (H-n+1, W)
    for k in range(n):
        rows += g[k] * img[k : h - n + 1 + k, :]
    out = np.zeros((h - n + 1, w - n + 1))  # (H-n+1, W-n+1)
    for k in range(n):
        out += g[k] * rows[:, k : w - n + 1 + k]
    return out


def _ssim_map_terms(mu1: _Array, mu2: _Array, s11: _Array, s22: _Array, s12: _Array) -> _Array:
    """The SSIM map from local means and raw second moments (shared by numpy and torch)."""
    mu1_sq, mu2_sq, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    var1, var2, cov = s11 - mu1_sq, s22 - mu2_sq, s12 - mu12
    num = (2 * mu12 + _C1) * (2 * cov + _C2)
    den = (mu1_sq + mu2_sq + _C1) * (var1 + var2 + _C2)
    ssim_map: _Array = num / den
    return ssim_map


def _check_ssim_size(h: int, w: int, crop: int) -> None:
    if h - 2 * crop < _SSIM_SIZE or w - 2 * crop < _SSIM_SIZE:
        raise ValueError(f"SSIM needs at least {_SSIM_SIZE}x{_SSIM_SIZE} pixels after the crop")


def ssim_y(sr: np.ndarray, hr: np.ndarray, crop: int) -> float:
    """Y-channel SSIM of two (H, W, 3) uint8 images; 1.0 when they are identical."""
    _check_pair(sr, hr, crop)
    _check_ssim_size(sr.shape[0], sr.shape[1], crop)
    a = _crop(rgb_to_y(sr), crop)
    b = _crop(rgb_to_y(hr), crop)
    g = _gaussian_1d()
    ssim_map = _ssim_map_terms(
        _filter_valid(a, g),
        _filter_valid(b, g),
        _filter_valid(a * a, g),
        _filter_valid(b * b, g),
        _filter_valid(a * b, g),
    )
    return float(np.mean(ssim_map))


# --- torch, batched -------------------------------------------------------------------------


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Clamp to [0, 1] and round to 1/255 steps, as saving to 8 bits would."""
    return torch.round(x.clamp(0.0, 1.0) * 255.0) / 255.0


def rgb_to_y_torch(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> (B, H, W) luma on [16, 235], in x's dtype."""
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected a (B, 3, H, W) batch, got shape {tuple(x.shape)}")
    r, g, b = _Y_COEFFS
    return 16.0 + r * x[:, 0] + g * x[:, 1] + b * x[:, 2]


def _prepare_torch(sr: torch.Tensor, hr: torch.Tensor, crop: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Both as cropped (B, H', W') float64 luma; sr quantised first."""
    if sr.shape != hr.shape:
        raise ValueError(f"shape mismatch: sr {tuple(sr.shape)} vs hr {tuple(hr.shape)}")
    if crop < 0:
        raise ValueError(f"crop must be >= 0, got {crop}")
    h, w = sr.shape[-2:]
    if h <= 2 * crop or w <= 2 * crop:
        raise ValueError(f"crop {crop} leaves nothing of a {w}x{h} image")
    # float64: SSIM's variances are differences of large moments (~235^2) and lose digits
    # in float32; the batches scored during validation are small.
    ys = rgb_to_y_torch(quantize(sr.detach().double()))  # (B, H, W)
    yh = rgb_to_y_torch(hr.detach().double())  # (B, H, W)
    if crop > 0:
        ys, yh = ys[:, crop:-crop, crop:-crop], yh[:, crop:-crop, crop:-crop]
    return ys, yh


def psnr_y_torch(sr: torch.Tensor, hr: torch.Tensor, crop: int) -> torch.Tensor:
    """Per-image Y PSNR in dB of (B, 3, H, W) batches in [0, 1] -> (B,) float64; inf if equal."""
    ys, yh = _prepare_torch(sr, hr, crop)
    mse = ((ys - yh) ** 2).mean(dim=(1, 2))  # (B,)
    return 10.0 * torch.log10(255.0**2 / mse)  # mse 0 -> inf


def ssim_y_torch(sr: torch.Tensor, hr: torch.Tensor, crop: int) -> torch.Tensor:
    """Per-image Y SSIM of (B, 3, H, W) batches in [0, 1] -> (B,) float64."""
    ys, yh = _prepare_torch(sr, hr, crop)
    _check_ssim_size(ys.shape[1], ys.shape[2], 0)
    g = torch.from_numpy(_gaussian_1d()).to(ys.device)
    gh = g.view(1, 1, _SSIM_SIZE, 1)
    gw = g.view(1, 1, 1, _SSIM_SIZE)

    def filt(img: torch.Tensor) -> torch.Tensor:  # (B, 1, H, W) -> (B, 1, H-10, W-10)
        return F.conv2d(F.conv2d(img, gh), gw)

    a, b = ys.unsqueeze(1), yh.unsqueeze(1)  # (B, 1, H, W)
    ssim_map = _ssim_map_terms(filt(a), filt(b), filt(a * a), filt(b * b), filt(a * b))
    return ssim_map.mean(dim=(1, 2, 3))  # (B,)
