"""The shipped anime weights: present, small, loaded by default, and better than bicubic on an
anime image they never saw (a crop of one of the held-out test images of MODEL_CARD.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stages.imaging import downscale, modcrop
from stages.inference import Upscaler, bicubic_upscale, default_weights, resolve_model_path
from stages.metrics import psnr_y

# Y-PSNR gain over bicubic on the crop below, with a margin under what the shipped files give
MIN_GAIN = {2: 6.0, 4: 2.0}


@pytest.mark.parametrize("scale", [2, 4])
def test_shipped_weights_load_by_default_and_beat_bicubic(scale: int, shared: Path) -> None:
    path = default_weights(scale)
    assert path.is_file() and path.stat().st_size < 5_000_000
    assert resolve_model_path(None, scale) == path
    up = Upscaler.load(None, scale, tile=0)
    assert up.scale == scale and up.info is not None and up.info["path"] == str(path)

    hr_full = np.asarray(Image.open(shared / "data/anime_hr/anime4k_Slime_1080p.jpg").convert("RGB"))
    hr = modcrop(hr_full[300:492, 700:892], scale)  # (192, 192, 3): faces, hair and line work
    lr = downscale(hr, scale)
    gain = psnr_y(up.upscale_image(lr), hr, scale) - psnr_y(bicubic_upscale(lr, scale), hr, scale)
    assert gain >= MIN_GAIN[scale], f"x{scale}: {gain:.2f} dB over bicubic"
