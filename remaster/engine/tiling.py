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

Cost against a whole-image forward, at 288 px tiles on a 576x432 frame: about 4% more
multiply-adds (halos, and each ADM's 1x1 conv once more for the sums), yet faster on a CPU;
memory is one trunk feature map plus one tile's working set per lane (below), instead of the whole image's
activations at LR and HR resolution. Holding no feature map at all would mean recomputing the
trunk up to each block (n_blocks / 2 times the work).

On a CPU the tiles of a band (and of the head and the reconstruction) run on ``Lanes``: one
worker thread per core, each running its ops on one core. A2N's convs have 24 to 120 channels,
too few for one op to keep several cores busy without waiting on each other, so a 2-core Xeon
finishes a 576x432 frame 4 to 10% sooner with two single-threaded lanes than with every op
spread over both cores, on 6 to 9% less CPU time (``benchmarks/engine_gains.py``). With lanes,
a band's column count is rounded up to a multiple of the lanes, so that none idles; otherwise
the tiles, and the order in which their pooled sums are added, do not depend on the lanes.

``tiled_forward`` is the generic fallback for models that are not an ``A2N`` (the ONNX backend):
overlapping tiles feathered together, exact only for models without global operations.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar, cast

import torch

from models.a2n import A2N, AAB, FusedAAB

log = logging.getLogger(__name__)

BLOCK_HALO = 2  # LR pixels an AAB reads beyond its output: k3 then k4, two 3x3 convs in series
TAIL_HALO = 4  # conv_first + trunk_conv + the upsampler's 3x3 convs + the bilinear base, in LR px

Model = Callable[[torch.Tensor], torch.Tensor]
T = TypeVar("T")
R = TypeVar("R")


class Lanes:
    """``n`` worker threads that each run torch ops on one core (CPU inference; see above).

    Grad mode, inference mode and autocast are per thread in torch, so ``map`` carries the
    caller's into the workers. Safe to share between callers: their tasks queue on the same
    threads.
    """

    def __init__(self, n: int) -> None:
        if n < 2:
            raise ValueError(f"lanes need at least 2 threads, got {n}")
        self.n = n
        self._pool = ThreadPoolExecutor(n, thread_name_prefix="tile-lane")
        # torch.set_num_threads sets the calling thread's OpenMP team and a process-wide default
        # that threads read at their first parallel op. So start all n workers now (the barrier
        # keeps each busy until every one exists), settle each at 1 thread, then give the
        # default back: the caller and threads started later keep every core.
        threads, ready = torch.get_num_threads(), threading.Barrier(n)
        self._workers: set[int] = set()

        def settle() -> int:
            torch.get_num_threads()  # the worker's first-use initialisation, done before the change
            torch.set_num_threads(1)
            self._workers.add(threading.get_ident())
            ready.wait()
            return torch.get_num_threads()

        settled = [f.result() for f in [self._pool.submit(settle) for _ in range(n)]]
        torch.set_num_threads(threads)
        assert settled == [1] * n, settled

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        """``[fn(item) for item in items]``, spread over the lanes, in the items' order (in order
        on the calling thread when that is a lane itself: it would otherwise wait on itself)."""
        if threading.get_ident() in self._workers:
            return [fn(item) for item in items]
        inference, grad = torch.is_inference_mode_enabled(), torch.is_grad_enabled()
        cast_on, cast_dtype = torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")

        def run(item: T) -> R:
            with (
                torch.inference_mode(inference),
                torch.set_grad_enabled(grad),
                torch.autocast("cpu", dtype=cast_dtype, enabled=cast_on),
            ):
                return fn(item)

        return list(self._pool.map(run, items))

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def shared_lanes(n: int) -> Lanes | None:
    """The process's ``Lanes`` of ``n`` threads (None below 2): every upscaler shares them.
    A forked child gets its own (it inherits the parent's pool, but not its threads)."""
    return _lanes_of(n, os.getpid()) if n >= 2 else None


@functools.cache
def _lanes_of(n: int, pid: int) -> Lanes:
    return Lanes(n)


def _map(lanes: Lanes | None, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
    return lanes.map(fn, items) if lanes is not None and len(items) > 1 else [fn(i) for i in items]


def _bands(length: int, tile: int, multiple: int = 1) -> list[tuple[int, int]]:
    """Split ``length`` into near-equal bands no longer than ``tile``; their count is a multiple
    of ``multiple`` (the lanes, so that none idles) while each stays at least 8 pixels long."""
    n = max(1, math.ceil(length / tile))
    if multiple > 1:
        n = max(n, min(math.ceil(n / multiple) * multiple, length // 8 // multiple * multiple))
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


def a2n_tiled_forward(
    model: A2N, x: torch.Tensor, tile: int, *, compiled: bool = False, lanes: Lanes | None = None
) -> torch.Tensor:
    """``model(x)`` for (B, 3, H, W) in [0, 1], computed in LR tiles of at most ``tile`` pixels a side.

    Equal to the whole-image forward up to float rounding (see the module docstring).
    ``compiled`` runs the block and the reconstruction through ``torch.compile``; ``lanes`` runs
    the tiles of each band side by side (CPU).
    """
    b, _, h, w = x.shape
    if tile <= 0 or (h <= tile and w <= tile):
        return model(x)
    aab, tail = _compiled_parts() if compiled else (_aab, _tail)
    cfg, blocks = model.config, cast(list[AAB | FusedAAB], list(model.AAB_trunk))
    tile = max(tile, 4 * BLOCK_HALO)  # a band must hold the next band's halo
    lanes_n = lanes.n if lanes is not None else 1
    rows, cols = _bands(h, tile), _bands(w, tile, lanes_n)
    r = BLOCK_HALO
    dev, store = x.device, _feature_store(x.device, b * cfg.n_feat * h * w * 4)
    feat = torch.empty(b, cfg.n_feat, h, w, device=store).contiguous(memory_format=torch.channels_last)

    def head(cell: tuple[tuple[int, int], tuple[int, int]]) -> torch.Tensor | None:
        (y0, y1), (x0, x1) = cell
        top, left = max(0, y0 - 1), max(0, x0 - 1)
        part = model.conv_first(x[:, :, top : y1 + 1, left : x1 + 1] * cfg.rgb_range)
        core = part[:, :, y0 - top : y1 - top, x0 - left : x1 - left]
        feat[:, :, y0:y1, x0:x1] = core
        return _pooled_sum(blocks[0], core) if blocks else None  # the first block's pooled sums

    sums = _total(_map(lanes, head, list(itertools.product(rows, cols))), b, cfg.n_feat, dev)
    for k, block in enumerate(blocks):
        weights = _adm_weights(block, (sums / (h * w)).float())  # (B, 2)
        nxt = blocks[k + 1] if k + 1 < len(blocks) else None
        parts: list[torch.Tensor | None] = []
        carry = feat[:, :, :0]  # the block's input rows just above the band, already overwritten
        for y0, y1 in rows:
            top, bottom = max(0, y0 - r), min(h, y1 + r)
            band = torch.empty(
                b, cfg.n_feat, bottom - top, w, device=store, memory_format=torch.channels_last
            )
            band[:, :, : y0 - top] = carry  # the block's input rows top..bottom (a cat, in NHWC)
            band[:, :, y0 - top :] = feat[:, :, y0:bottom]

            run = functools.partial(_block_tile, aab, block, weights, nxt, band, feat, (y0, y1, top), dev)
            parts += _map(lanes, run, cols)
            carry = band[:, :, max(0, y1 - r) - top : y1 - top]
        sums = _total(parts, b, cfg.n_feat, dev)
    s, q = cfg.scale, TAIL_HALO
    out = torch.empty(b, 3, h * s, w * s, device=x.device)
    tail_tile = max(4 * TAIL_HALO, tile * 2 // s)  # the same HR tile at every scale (cache-sized)

    def reconstruct(cell: tuple[tuple[int, int], tuple[int, int]]) -> None:
        (y0, y1), (x0, x1) = cell
        top, left = max(0, y0 - q), max(0, x0 - q)
        crop = (slice(None), slice(None), slice(top, y1 + q), slice(left, x1 + q))
        part = tail(model, x[crop], feat[crop].to(dev))
        dy, dx = (y0 - top) * s, (x0 - left) * s
        out[:, :, y0 * s : y1 * s, x0 * s : x1 * s] = part[
            :, :, dy : dy + (y1 - y0) * s, dx : dx + (x1 - x0) * s
        ]

    _map(lanes, reconstruct, list(itertools.product(_bands(h, tail_tile), _bands(w, tail_tile, lanes_n))))
    return out


def _block_tile(
    aab: Callable[..., torch.Tensor],
    block: AAB | FusedAAB,
    weights: torch.Tensor,
    nxt: AAB | FusedAAB | None,
    band: torch.Tensor,
    feat: torch.Tensor,
    rows: tuple[int, int, int],
    dev: torch.device,
    col: tuple[int, int],
) -> torch.Tensor | None:
    """One tile of a block: the band's columns ``col`` (with their halo) through ``block``, the
    core written into ``feat``; returns the next block's pooled sums over the core."""
    (y0, y1, top), (x0, x1) = rows, col
    left = max(0, x0 - BLOCK_HALO)
    part = aab(block, band[:, :, :, left : x1 + BLOCK_HALO].to(dev), weights)
    core = part[:, :, y0 - top : y1 - top, x0 - left : x1 - left]
    feat[:, :, y0:y1, x0:x1] = core
    return _pooled_sum(nxt, core) if nxt is not None else None


def _total(parts: list[torch.Tensor | None], b: int, c: int, device: torch.device) -> torch.Tensor:
    """The tiles' pooled sums added in tile order (the same rounding with or without lanes)."""
    total = torch.zeros(b, c, dtype=torch.float64, device=device)
    for part in parts:
        if part is not None:
            total += part
    return total


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
