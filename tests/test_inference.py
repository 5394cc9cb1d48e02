"""The shared inference engine: tiling, batching, model resolution and the bicubic baseline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.a2n import A2N, A2NConfig
from models.checkpoint import save_checkpoint
from stages.imaging import imresize, modcrop
from stages.inference import Upscaler, auto_tile, bicubic_upscale, resolve_model_path, tiled_forward
from stages.metrics import psnr_y


def test_tiles_cover_every_pixel_once_weighted() -> None:
    identity_x2 = lambda t: torch.nn.functional.interpolate(t, scale_factor=2, mode="nearest")  # noqa: E731
    x = torch.rand(2, 3, 37, 51)
    out = tiled_forward(identity_x2, x, 2, tile=16, overlap=4)
    assert out.shape == (2, 3, 74, 102)
    assert torch.allclose(out, identity_x2(x), atol=1e-6)


def test_tiled_matches_whole_on_a_real_image(shared: Path) -> None:
    up = Upscaler.load(str(shared / "refs/a2n/aan_x2.pt"), 2, tile=0, precision="fp32")
    hr = modcrop(np.asarray(Image.open(shared / "refs/benchmarks/Set5/HR/baby.png").convert("RGB")), 2)
    lr = imresize(hr, 0.5)
    whole = up.upscale_image(lr)
    up.tile, up.overlap = 96, 16
    tiled = up.upscale_image(lr)
    assert tiled.shape == whole.shape == hr.shape
    # The attention dropout module pools over its whole input, so tiles differ slightly.
    assert np.abs(tiled.astype(int) - whole).mean() < 0.2
    assert abs(psnr_y(tiled, hr, 2) - psnr_y(whole, hr, 2)) < 0.05


def test_frames_are_batched_and_quantised(tmp_path: Path) -> None:
    cfg = A2NConfig(scale=4, n_feat=8, n_up_feat=8, n_blocks=1)
    save_checkpoint(tmp_path / "tiny.pt", A2N(cfg), cfg, step=3)
    up = Upscaler.load(str(tmp_path / "tiny.pt"), 4, tile=0)
    frames = np.random.default_rng(0).integers(0, 256, (3, 10, 12, 3), dtype=np.uint8)
    out = up.upscale_frames(frames)
    assert out.shape == (3, 40, 48, 3) and out.dtype == np.uint8
    assert np.array_equal(out[1], up.upscale_image(frames[1]))
    with pytest.raises(ValueError, match="checkpoint is x4, asked for x2"):
        Upscaler.load(str(tmp_path / "tiny.pt"), 2)


def test_model_resolution_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_model_path(str(tmp_path / "missing.pt"), 2)
    with pytest.raises(FileNotFoundError, match="no shipped weights for x3"):
        resolve_model_path(None, 3)


def test_auto_tile_fits_the_budget() -> None:
    cfg = A2NConfig(scale=4)
    side = auto_tile(cfg, torch.device("cpu"), budget_bytes=1 << 30)
    assert 64 <= side <= 1024 and side % 8 == 0
    assert auto_tile(cfg, torch.device("cpu"), budget_bytes=1 << 20) == 64


def test_bicubic_baseline_is_matlab_style() -> None:
    img = np.random.default_rng(1).integers(0, 256, (9, 7, 3), dtype=np.uint8)
    up = bicubic_upscale(img, 2)
    assert up.shape == (18, 14, 3) and up.dtype == np.uint8
    assert np.array_equal(up, imresize(img, 2.0))
