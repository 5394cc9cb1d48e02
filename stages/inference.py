"""The one inference engine behind every command that runs the model (evaluate, upscale, video).

Large inputs go through ``tiled_forward``: overlapping LR tiles, each output tile weighted by a
feathered window, accumulated with its weight and divided once, so tiles blend without seams
and memory stays bounded whatever the image size. A2N's attention dropout module pools over
the whole input, so a tiled result is close to, not bit-equal with, a whole-image result.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.a2n import A2N, A2NConfig
from models.checkpoint import load_model
from stages.imaging import imresize

log = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "models" / "weights"
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def default_weights(scale: int) -> Path:
    """The shipped anime weights for ``scale``."""
    return WEIGHTS_DIR / f"a2n_anime_x{scale}.safetensors"


def resolve_model_path(spec: str | None, scale: int) -> Path:
    """A file path for ``spec``: None (the shipped weights), a path, or ``models:/name@alias``."""
    if not spec:
        path = default_weights(scale)
        if not path.exists():
            raise FileNotFoundError(f"no shipped weights for x{scale} at {path}; pass --model PATH")
        return path
    if spec.startswith("models:/"):
        import mlflow

        from stages.tracking import default_tracking_uri

        mlflow.set_tracking_uri(default_tracking_uri())
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=spec))
        found = sorted(local.rglob("*.pt")) + sorted(local.rglob("*.safetensors"))
        if not found:
            raise FileNotFoundError(f"{spec} holds no checkpoint (looked in {local})")
        return found[0]
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"model {spec} does not exist")
    return path


def cpu_has_bf16() -> bool:
    """Native bf16 arithmetic (AVX-512 BF16 or AMX); without it bf16 autocast is slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def pick_precision(precision: str, device: torch.device) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16"
    return "bf16" if cpu_has_bf16() else "fp32"


def auto_tile(config: A2NConfig, device: torch.device, budget_bytes: int | None = None) -> int:
    """An LR tile side whose activations fit the memory budget (half the free GPU memory, or 1 GiB)."""
    if budget_bytes is None:
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            budget_bytes = free // 2
        else:
            budget_bytes = 1 << 30
    s = config.scale
    # Live activations per LR pixel, fp32: ~12 body feature maps plus ~4 maps at HR resolution.
    per_px = 4 * (12 * config.n_feat + 4 * config.n_up_feat * s * s)
    side = int(math.sqrt(budget_bytes / per_px))
    return max(64, min(1024, side - side % 8))


def _positions(length: int, tile: int, overlap: int) -> list[int]:
    if length <= tile:
        return [0]
    step = tile - overlap
    pos = list(range(0, length - tile, step))
    pos.append(length - tile)
    return pos


def _ramp(n: int, fade: int, at_start: bool, at_end: bool) -> torch.Tensor:
    """1-D window: 1 inside, a linear fade over ``fade`` samples at interior edges."""
    w = torch.ones(n)
    if fade > 0:
        ramp = (torch.arange(fade, dtype=torch.float32) + 0.5) / fade
        if not at_start:
            w[:fade] = torch.minimum(w[:fade], ramp)
        if not at_end:
            w[-fade:] = torch.minimum(w[-fade:], ramp.flip(0))
    return w


def tiled_forward(
    model: torch.nn.Module, x: torch.Tensor, scale: int, tile: int, overlap: int
) -> torch.Tensor:
    """Run ``model`` over (B, 3, H, W) in overlapping tiles; returns (B, 3, H*s, W*s)."""
    b, c, h, w = x.shape
    if tile <= 0 or (h <= tile and w <= tile):
        return model(x)
    overlap = min(overlap, tile // 2)
    ys, xs = _positions(h, tile, overlap), _positions(w, tile, overlap)
    out = torch.zeros(b, c, h * scale, w * scale, dtype=torch.float32, device=x.device)
    weight = torch.zeros(1, 1, h * scale, w * scale, dtype=torch.float32, device=x.device)
    fade = overlap * scale
    for y in ys:
        for x0 in xs:
            th, tw = min(tile, h - y), min(tile, w - x0)
            part = model(x[:, :, y : y + th, x0 : x0 + tw]).float()  # (B, 3, th*s, tw*s)
            wy = _ramp(th * scale, fade, y == 0, y + th >= h).to(x.device)
            wx = _ramp(tw * scale, fade, x0 == 0, x0 + tw >= w).to(x.device)
            win = (wy[:, None] * wx[None, :])[None, None]
            sy, sx = y * scale, x0 * scale
            out[:, :, sy : sy + th * scale, sx : sx + tw * scale] += part * win
            weight[:, :, sy : sy + th * scale, sx : sx + tw * scale] += win
    return out / weight


@dataclass
class Upscaler:
    """A loaded model with its device, precision and tiling, ready for images and frames."""

    model: A2N
    config: A2NConfig
    device: torch.device
    precision: str = "fp32"
    tile: int = 0  # LR tile side; 0 = whole inputs
    overlap: int = 16  # LR pixels shared by neighbouring tiles
    info: dict[str, Any] | None = None

    @classmethod
    def load(
        cls,
        spec: str | None,
        scale: int,
        *,
        device: str = "auto",
        precision: str = "auto",
        tile: int | None = None,
        overlap: int = 16,
    ) -> Upscaler:
        """Load ``spec`` (see ``resolve_model_path``) for ``scale`` and pick device, precision, tile."""
        dev = pick_device(device)
        if dev.type == "cpu":
            torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1))
        path = resolve_model_path(spec, scale)
        model, config, info = load_model(path, scale=scale if path.suffix != ".safetensors" else None)
        if config.scale != scale:
            raise ValueError(f"{path} is an x{config.scale} model, not x{scale}")
        model = model.to(dev)
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        model.eval()
        side = auto_tile(config, dev) if tile is None else tile
        return cls(model, config, dev, pick_precision(precision, dev), side, overlap, info)

    @property
    def scale(self) -> int:
        return self.config.scale

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def __call__(self, lr: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, 3, H*s, W*s) in [0, 1], on this upscaler's device."""
        x = lr.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        tile = self.tile
        while True:
            try:
                with torch.inference_mode(), self._autocast():
                    sr = tiled_forward(self.model, x, self.scale, tile, self.overlap).float()
                break
            except torch.cuda.OutOfMemoryError:
                if tile and tile <= 64:
                    raise
                tile = max(64, (tile or max(x.shape[-2:])) // 2)
                log.warning("out of GPU memory; retrying with %d px tiles", tile)
                torch.cuda.empty_cache()
        with torch.inference_mode():
            if self.precision != "fp32" and not torch.isfinite(sr).all():
                log.warning("non-finite output in %s; recomputing in fp32", self.precision)
                sr = tiled_forward(self.model, x.float(), self.scale, tile, self.overlap)
            return sr.clamp_(0, 1)

    def upscale_frames(self, frames: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N, H*s, W*s, 3) uint8; quantised on the device holding the frames."""
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device).permute(0, 3, 1, 2)
            sr = self(x.float() / 255.0)
            out = sr.mul_(255.0).round_().to(torch.uint8).permute(0, 2, 3, 1)
            return out.cpu().numpy()

    def upscale_image(self, img: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> (H*s, W*s, 3) uint8."""
        return self.upscale_frames(img[None])[0]


def bicubic_upscale(img: np.ndarray, scale: int) -> np.ndarray:
    """The baseline every score is set beside: MATLAB-style bicubic, (H, W, 3) uint8 -> x``scale``."""
    return imresize(img, float(scale))
