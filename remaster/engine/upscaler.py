"""The one inference engine behind every command that runs the model (evaluate, upscale, video).

An ``Upscaler`` is a loaded model with its device, precision and tile size. Frames that fit in
one tile run whole; larger ones run through ``remaster.engine.tiling`` (exact for A2N, see there).

Every ``Upscaler`` runs an A2N as ``models.a2n.fuse_for_inference`` rewrites it: each block's
three 3x3 convs that read the same activation run as one wide conv, and each nearest-upsample +
conv of the reconstruction runs as a sub-pixel conv at the lower resolution. The function is
the same (tests hold it to float rounding); only the GEMM shapes change.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.a2n import A2N, A2NConfig, fuse_for_inference
from models.checkpoint import load_model
from remaster.config import BACKENDS, PRECISIONS
from remaster.engine.cpu import available_memory, cpu_cores, cpu_has_bf16, keep_freed_memory
from remaster.engine.cuda_graphs import GraphedForward
from remaster.engine.tiling import Model, a2n_tiled_forward, shared_lanes, tiled_forward

log = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "models" / "weights"
CPU_TILE = 288  # 2-core Xeon, lanes, 576x432 x2: 8% faster than 192 px tiles, 18-32% than whole frames


# The shipped weights by name: ``clean`` learned from clean bicubic LR (images, the paper's
# setting); ``dvd`` is ``clean`` fine-tuned on LR degraded like a real episode (codecs, blur,
# noise; see remaster.data.degradations); ``video`` blends the two so that clean input loses under
# 1 dB. ``remaster video`` picks one by the source's codec (remaster.model_source.video_default).
SHIPPED = {
    "clean": "a2n_anime_x{scale}.safetensors",
    "video": "a2n_anime_video_x{scale}.safetensors",
    "dvd": "a2n_anime_dvd_x{scale}.safetensors",
}


def default_weights(scale: int, name: str = "clean") -> Path:
    """The shipped anime weights ``name`` (clean, video or dvd) for ``scale``."""
    return WEIGHTS_DIR / SHIPPED[name].format(scale=scale)


def resolve_model_path(spec: str | None, scale: int, default: str = "clean") -> Path:
    """A file path for ``spec``: a shipped name (``clean``, ``video``, ``dvd``; None = ``default``) or a path.
    ``remaster.model_source.resolve_model`` also takes ``models:/name@alias``."""
    spec = spec or default
    if spec in SHIPPED:
        path = default_weights(scale, spec)
        if not path.exists():
            raise FileNotFoundError(f"no shipped {spec} weights for x{scale} at {path}; pass --model PATH")
        return path
    if spec.startswith("models:/"):  # the engine knows files; the registry is remaster.tracking's
        raise ValueError(f"{spec}: resolve a registered model with remaster.model_source.resolve_model first")
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"model {spec} does not exist")
    return path


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def pick_precision(precision: str, device: torch.device) -> str:
    """fp32 on a CPU without native bf16; bf16 elsewhere (within 0.005 dB of fp32 on real weights)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16"
    return "bf16" if cpu_has_bf16() else "fp32"


def auto_tile(config: A2NConfig, device: torch.device, budget_bytes: int | None = None) -> int:
    """An LR tile side whose working set fits the budget (half the free GPU memory; on a CPU,
    a quarter of the available memory shared by the lanes' tiles, capped at the throughput-best
    ``CPU_TILE``)."""
    cap = 1024
    if budget_bytes is None:
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            budget_bytes = free // 2
        else:
            budget_bytes, cap = available_memory() // 4 // cpu_cores(), CPU_TILE
    s = config.scale
    # Live activations per LR pixel, fp32: ~12 body feature maps plus ~4 maps at HR resolution.
    per_px = 4 * (12 * config.n_feat + 4 * config.n_up_feat * s * s)
    side = int(math.sqrt(budget_bytes / per_px))
    return max(64, min(cap, side - side % 8))


@dataclass
class Upscaler:
    """A loaded model with its device, precision and tiling, ready for images and frames."""

    model: A2N | Model  # an A2N (torch backend) or any callable (the ONNX Runtime backend)
    config: A2NConfig
    device: torch.device
    precision: str = "fp32"
    tile: int = 0  # LR tile side; 0 = whole inputs
    overlap: int = 16  # LR pixels shared by neighbouring tiles (non-A2N models only)
    info: dict[str, Any] | None = None
    backend: str = "torch"
    fuse: bool = True  # run an A2N as ``fuse_for_inference`` makes it (same outputs, faster)
    lanes: int = 0  # tiles run side by side on this many single-core threads; 0 = one per core (CPU)
    cuda_graphs: bool = False  # replay each input shape's forward from a CUDA graph (GPU, torch backend)
    _graphed: GraphedForward | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.cuda_graphs:
            if self.backend != "torch":
                raise ValueError("CUDA graphs need the torch backend")
            self._graphed = GraphedForward(self.device)  # a ValueError off a GPU
        if self.device.type == "cpu":
            keep_freed_memory()
        if self.lanes <= 0:
            self.lanes = cpu_cores() if self.device.type == "cpu" else 1
        if self.fuse and isinstance(self.model, A2N):
            self.model = fuse_for_inference(self.model)

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
        backend: str = "auto",
        compile: bool = False,
        cuda_graphs: bool = False,
    ) -> Upscaler:
        """Load ``spec`` (see ``resolve_model_path``; a ``.onnx`` file runs on ONNX Runtime) for
        ``scale`` and pick device, precision and tile (None: from memory; 0: whole frames).
        ``compile`` runs the model through ``torch.compile``; ``cuda_graphs`` replays it from CUDA
        graphs (``remaster.engine.cuda_graphs``), with or without ``compile``."""
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        dev = pick_device(device)
        if dev.type == "cpu":
            torch.set_num_threads(cpu_cores())
        path = resolve_model_path(spec, scale)
        if backend == "onnx" or (backend == "auto" and path.suffix == ".onnx"):
            from remaster.engine.onnx import load_onnx_runner

            runner, info = load_onnx_runner(path, scale, dev, precision, tile)
            return cls(
                runner,
                runner.config,
                dev,
                "fp32",
                tile or 0,
                overlap,
                info,
                backend="onnx",
                cuda_graphs=cuda_graphs,
            )
        model, config, info = load_model(path, scale=scale if path.suffix != ".safetensors" else None)
        if config.scale != scale:
            raise ValueError(f"{path} is an x{config.scale} model, not x{scale}")
        model = model.to(dev)
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        model.eval()
        if dev.type == "cuda":
            torch.backends.cudnn.benchmark = True  # tiles repeat a few shapes
        side = auto_tile(config, dev) if tile is None else tile
        precision = pick_precision(precision, dev)
        up = cls(model, config, dev, precision, side, overlap, info, cuda_graphs=cuda_graphs)
        if compile:
            up.model = torch.compile(up.model)  # type: ignore[assignment]
            up.info = {**(info or {}), "compiled": True}
        return up

    @property
    def scale(self) -> int:
        return self.config.scale

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.precision == "fp32" or self.backend != "torch":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        # a graph must not capture autocast's cached weight casts (they would be freed under it)
        return torch.autocast(self.device.type, dtype=dtype, cache_enabled=not self.cuda_graphs)

    def _forward(self, x: torch.Tensor, tile: int) -> torch.Tensor:
        model = self.model
        net = getattr(model, "_orig_mod", model)  # a compiled A2N runs its fast path compiled
        if isinstance(net, A2N):
            if tile <= 0 or (x.shape[-2] <= tile and x.shape[-1] <= tile):
                return model(x)
            if net is not model:  # compiled: one graph, run on the caller's threads
                return a2n_tiled_forward(net, x, tile, compiled=True)
            lanes = shared_lanes(self.lanes) if self.device.type == "cpu" else None
            return a2n_tiled_forward(net, x, tile, lanes=lanes)
        return tiled_forward(model, x, self.scale, tile, self.overlap)

    def __call__(self, lr: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, 3, H*s, W*s) in [0, 1], on this upscaler's device."""
        x = lr.to(self.device, non_blocking=True).float().contiguous(memory_format=torch.channels_last)
        tile = self.tile
        while True:
            try:
                with torch.inference_mode(), self._autocast():
                    if self._graphed is not None:
                        run = functools.partial(self._forward, tile=tile)
                        sr = self._graphed(run, x, key=(tile, self.precision)).float()
                    else:
                        sr = self._forward(x, tile).float()
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
                sr = self._forward(x, tile).float()
            return sr.clamp_(0, 1)

    def frames_per_batch(self, h: int, w: int) -> int:
        """How many (h, w) frames to run at once: small frames fill one tile, large ones go singly."""
        if self.tile <= 0:
            return 1
        return max(1, (self.tile * self.tile) // (min(h, self.tile) * min(w, self.tile)))

    def upscale_frames(self, frames: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N, H*s, W*s, 3) uint8, in batches of ``frames_per_batch``."""
        n, h, w, _ = frames.shape
        step = self.frames_per_batch(h, w)
        out = np.empty((n, h * self.scale, w * self.scale, 3), dtype=np.uint8)
        with torch.inference_mode():
            for i in range(0, n, step):
                x = torch.from_numpy(np.ascontiguousarray(frames[i : i + step])).to(self.device)
                sr = self(x.permute(0, 3, 1, 2).float() / 255.0)  # (b, 3, H*s, W*s)
                out[i : i + step] = sr.mul_(255.0).round_().to(torch.uint8).permute(0, 2, 3, 1).cpu()
        return out

    def upscale_image(self, img: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> (H*s, W*s, 3) uint8."""
        return self.upscale_frames(img[None])[0]
