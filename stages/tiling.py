"""Tiled forward passes: A2N's exact one, and a feathered one for any model.

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

``tiled_forward`` is the generic fallback for models that are not an ``A2N`` (the ONNX backend):
overlapping tiles feathered together, exact only for models without global operations.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
from collections.abc import Callable
from typing import cast

import torch

from models.a2n import A2N, AAB, FusedAAB

log = logging.getLogger(__name__)

BLOCK_HALO = 2  # LR pixels an AAB reads beyond its output: k3 then k4, two 3x3 convs in series
TAIL_HALO = 4  # conv_first + trunk_conv + the upsampler's 3x3 convs + the bilinear base, in LR px

Model = Callable[[torch.Tensor], torch.Tensor]


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
    """(B, C, h, w) block input -> (B, C) sum of what the block's ADM averages, in float64 to add
    up over tiles. The tile's own sum is fp32 (pairwise, so exact enough, and 4x cheaper than a
    float64 one); the activation is a fresh tensor, so its LeakyReLU runs in place."""
    y = torch.nn.functional.leaky_relu_(block.conv_first(x), 0.2)
    return y.sum(dim=(2, 3), dtype=torch.float32).double()


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
