"""The one inference engine behind every command that runs the model (evaluate, upscale, video).

A frame that fits in one tile runs through ``A2N.forward`` whole. A larger one runs through
``a2n_tiled_forward``, which gives the whole-image result (to float rounding) in bounded memory.
Plain overlapping tiles cannot: each AAB's attention dropout module (ADM) weighs its two branches
by the mean of its features over the *whole* image, and each block's mean depends on the blocks
before it, so no cheap first pass can supply the means. The tiled forward therefore runs the
trunk one block at a time over the whole image. It keeps one trunk feature map (n_feat x H x W
fp32, 160 bytes per LR pixel, updated in place band by band), sums each block's pooled features
tile by tile, and only then runs the block over the tiles with a halo of 2 LR pixels (the
block's receptive field). The reconstruction has no global operation: it runs tile by tile with a
4-pixel halo, in tiles of 2 * tile / scale LR pixels (the same HR size at every scale).

Cost against a whole-image forward, at 192 px tiles: about 5% more multiply-adds (halos, and
each ADM's 1x1 conv once more for the sums), yet faster on a CPU, where tiles stay in cache;
memory is one trunk feature map plus one tile's working set, instead of the whole image's
activations at LR and HR resolution. Holding no feature map at all would mean recomputing the
trunk up to each block (n_blocks / 2 times the work).

Every ``Upscaler`` runs an A2N as ``models.a2n.fuse_for_inference`` rewrites it: each block's
three 3x3 convs that read the same activation run as one wide conv, and each nearest-upsample +
conv of the reconstruction runs as a sub-pixel conv at the lower resolution. The function is
the same (tests hold it to float rounding); only the GEMM shapes change.

``tiled_forward`` is the generic fallback for models that are not an ``A2N`` (the ONNX backend):
overlapping tiles feathered together, exact only for models without global operations.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from models.a2n import A2N, AAB, A2NConfig, FusedAAB, _lrelu, fuse_for_inference
from models.checkpoint import load_model
from stages.imaging import imresize

log = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "models" / "weights"
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
BACKENDS = ("auto", "torch", "onnx")
BLOCK_HALO = 2  # LR pixels an AAB reads beyond its output: k3 then k4, two 3x3 convs in series
TAIL_HALO = 4  # conv_first + trunk_conv + the upsampler's 3x3 convs + the bilinear base, in LR px
CPU_TILE = 192  # on a 2-core Xeon, 192-384 px tiles beat whole 576x432 frames by 10% (x2) to 35% (x4)

Model = Callable[[torch.Tensor], torch.Tensor]


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


def cpu_cores() -> int:
    """Cores this process may run on (cgroup and taskset limits included)."""
    env = os.environ.get("OMP_NUM_THREADS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


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
    a quarter of the available memory, capped at the throughput-best ``CPU_TILE``)."""
    cap = 1024
    if budget_bytes is None:
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            budget_bytes = free // 2
        else:
            budget_bytes, cap = _available_memory() // 4, CPU_TILE
    s = config.scale
    # Live activations per LR pixel, fp32: ~12 body feature maps plus ~4 maps at HR resolution.
    per_px = 4 * (12 * config.n_feat + 4 * config.n_up_feat * s * s)
    side = int(math.sqrt(budget_bytes / per_px))
    return max(64, min(cap, side - side % 8))


def _available_memory() -> int:
    with contextlib.suppress(OSError, ValueError, StopIteration):
        lines = Path("/proc/meminfo").read_text().splitlines()
        return int(next(ln for ln in lines if ln.startswith("MemAvailable:")).split()[1]) * 1024
    return 4 << 30


def _bands(length: int, tile: int) -> list[tuple[int, int]]:
    """Split ``length`` into near-equal bands no longer than ``tile``."""
    n = max(1, math.ceil(length / tile))
    cuts = [round(i * length / n) for i in range(n + 1)]
    return list(itertools.pairwise(cuts))


def _feature_store(device: torch.device, nbytes: int) -> torch.device:
    """Where the trunk feature map lives: with the model, or in host memory if the GPU lacks room."""
    if device.type == "cuda" and 4 * nbytes > torch.cuda.mem_get_info(device)[0]:
        log.info("keeping the %d MiB trunk feature map in host memory", nbytes >> 20)
        return torch.device("cpu")
    return device


def _adm_weights(block: AAB | FusedAAB, pooled: torch.Tensor) -> torch.Tensor:
    return block.branch_weights(pooled)  # (B, C) -> (B, 2)


def _aab(block: AAB | FusedAAB, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return block(x, w)  # ``AAB.forward`` with its ADM weights (B, 2) given


def _pooled_sum(block: AAB | FusedAAB, x: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) block input -> (B, C) float64 sum of what the block's ADM averages."""
    return _lrelu(block.conv_first(x)).sum(dim=(2, 3), dtype=torch.float64)


def _tail(model: A2N, x: torch.Tensor, trunk: torch.Tensor) -> torch.Tensor:
    return model.tail(x, trunk)  # (B, 3, h, w), (B, nf, h, w) -> (B, 3, h*s, w*s)


@functools.cache
def _compiled_parts() -> tuple[Callable[..., torch.Tensor], Callable[..., torch.Tensor]]:
    return torch.compile(_aab), torch.compile(_tail)  # one graph each, shared by all blocks


def a2n_tiled_forward(model: A2N, x: torch.Tensor, tile: int, *, compiled: bool = False) -> torch.Tensor:
    """``model(x)`` for (B, 3, H, W) in [0, 1], computed in LR tiles of at most ``tile`` pixels a side.

    Equal to the whole-image forward up to float rounding (see the module docstring).
    ``compiled`` runs the block and the reconstruction through ``torch.compile``.
    """
    b, _, h, w = x.shape
    if tile <= 0 or (h <= tile and w <= tile):
        return model(x)
    aab, tail = _compiled_parts() if compiled else (_aab, _tail)
    cfg, blocks = model.config, cast(list[AAB | FusedAAB], list(model.AAB_trunk))
    tile = max(tile, 4 * BLOCK_HALO)  # a band must hold the next band's halo
    rows, cols = _bands(h, tile), _bands(w, tile)
    r = BLOCK_HALO
    dev, store = x.device, _feature_store(x.device, b * cfg.n_feat * h * w * 4)
    feat = torch.empty(b, cfg.n_feat, h, w, device=store).contiguous(memory_format=torch.channels_last)
    sums = torch.zeros(b, cfg.n_feat, dtype=torch.float64, device=dev)
    for y0, y1 in rows:  # the head, and the first block's pooled sums
        for x0, x1 in cols:
            top, left = max(0, y0 - 1), max(0, x0 - 1)
            part = model.conv_first(x[:, :, top : y1 + 1, left : x1 + 1] * cfg.rgb_range)
            core = part[:, :, y0 - top : y1 - top, x0 - left : x1 - left]
            feat[:, :, y0:y1, x0:x1] = core
            if blocks:
                sums += _pooled_sum(blocks[0], core)
    for k, block in enumerate(blocks):
        weights = _adm_weights(block, (sums / (h * w)).float())  # (B, 2)
        nxt = blocks[k + 1] if k + 1 < len(blocks) else None
        sums = torch.zeros_like(sums)
        carry = feat[:, :, :0]  # the block's input rows just above the band, already overwritten
        for y0, y1 in rows:
            top, bottom = max(0, y0 - r), min(h, y1 + r)
            band = torch.empty(
                b, cfg.n_feat, bottom - top, w, device=store, memory_format=torch.channels_last
            )
            band[:, :, : y0 - top] = carry  # the block's input rows top..bottom (a cat, in NHWC)
            band[:, :, y0 - top :] = feat[:, :, y0:bottom]
            for x0, x1 in cols:
                left = max(0, x0 - r)
                part = aab(block, band[:, :, :, left : x1 + r].to(dev), weights)
                core = part[:, :, y0 - top : y1 - top, x0 - left : x1 - left]
                feat[:, :, y0:y1, x0:x1] = core
                if nxt is not None:
                    sums += _pooled_sum(nxt, core)
            carry = band[:, :, max(0, y1 - r) - top : y1 - top]
    s, q = cfg.scale, TAIL_HALO
    out = torch.empty(b, 3, h * s, w * s, device=x.device)
    tail_tile = max(4 * TAIL_HALO, tile * 2 // s)  # the same HR tile at every scale (cache-sized)
    for y0, y1 in _bands(h, tail_tile):
        for x0, x1 in _bands(w, tail_tile):
            top, left = max(0, y0 - q), max(0, x0 - q)
            crop = (slice(None), slice(None), slice(top, y1 + q), slice(left, x1 + q))
            part = tail(model, x[crop], feat[crop].to(dev))
            dy, dx = (y0 - top) * s, (x0 - left) * s
            out[:, :, y0 * s : y1 * s, x0 * s : x1 * s] = part[
                :, :, dy : dy + (y1 - y0) * s, dx : dx + (x1 - x0) * s
            ]
    return out


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


def tiled_forward(model: Model, x: torch.Tensor, scale: int, tile: int, overlap: int) -> torch.Tensor:
    """Run any ``model`` over (B, 3, H, W) in overlapping, feathered tiles; returns (B, 3, H*s, W*s).

    Exact only for models without global operations: prefer ``a2n_tiled_forward`` for A2N.
    """
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

    model: A2N | Model  # an A2N (torch backend) or any callable (the ONNX Runtime backend)
    config: A2NConfig
    device: torch.device
    precision: str = "fp32"
    tile: int = 0  # LR tile side; 0 = whole inputs
    overlap: int = 16  # LR pixels shared by neighbouring tiles (non-A2N models only)
    info: dict[str, Any] | None = None
    backend: str = "torch"
    fuse: bool = True  # run an A2N as ``fuse_for_inference`` makes it (same outputs, faster)

    def __post_init__(self) -> None:
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
    ) -> Upscaler:
        """Load ``spec`` (see ``resolve_model_path``; a ``.onnx`` file runs on ONNX Runtime) for
        ``scale`` and pick device, precision and tile (None: from memory; 0: whole frames)."""
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        dev = pick_device(device)
        if dev.type == "cpu":
            torch.set_num_threads(cpu_cores())
        path = resolve_model_path(spec, scale)
        if backend == "onnx" or (backend == "auto" and path.suffix == ".onnx"):
            from stages.export import load_onnx_upscaler

            return load_onnx_upscaler(cls, path, scale, dev, precision, tile, overlap)
        model, config, info = load_model(path, scale=scale if path.suffix != ".safetensors" else None)
        if config.scale != scale:
            raise ValueError(f"{path} is an x{config.scale} model, not x{scale}")
        model = model.to(dev)
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        model.eval()
        if dev.type == "cuda":
            torch.backends.cudnn.benchmark = True  # tiles repeat a few shapes
        side = auto_tile(config, dev) if tile is None else tile
        up = cls(model, config, dev, pick_precision(precision, dev), side, overlap, info)
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
        return torch.autocast(self.device.type, dtype=dtype)

    def _forward(self, x: torch.Tensor, tile: int) -> torch.Tensor:
        model = self.model
        net = getattr(model, "_orig_mod", model)  # a compiled A2N runs its fast path compiled
        if isinstance(net, A2N):
            if tile <= 0 or (x.shape[-2] <= tile and x.shape[-1] <= tile):
                return model(x)
            return a2n_tiled_forward(net, x, tile, compiled=net is not model)
        return tiled_forward(model, x, self.scale, tile, self.overlap)

    def __call__(self, lr: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, 3, H*s, W*s) in [0, 1], on this upscaler's device."""
        x = lr.to(self.device, non_blocking=True).float().contiguous(memory_format=torch.channels_last)
        tile = self.tile
        while True:
            try:
                with torch.inference_mode(), self._autocast():
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


def bicubic_upscale(img: np.ndarray, scale: int) -> np.ndarray:
    """The baseline every score is set beside: MATLAB-style bicubic, (H, W, 3) uint8 -> x``scale``."""
    return imresize(img, float(scale))
