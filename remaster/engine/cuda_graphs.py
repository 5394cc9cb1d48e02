"""CUDA graph replay of the inference forward: one captured graph per input shape.

A2N's forward on a GPU is hundreds of small kernels (16 blocks of convs and pointwise steps,
more with tiles); at video frame sizes launching them from Python can cost as much as running
them. A CUDA graph records the whole forward once and replays it with one launch. The forward
must then read its input from, and write its output to, the same memory every time, so each
shape gets its own static input buffer: a call copies the frame in, replays, and returns a copy
of the output (the next replay overwrites the graph's own).

Frames of a video share one shape, so a run captures once per shape it meets (the last batch of
a segment may be smaller, and tile retries after running out of memory change the shape too);
the ``keep`` most recently used graphs stay, each with its private memory pool. A forward that
cannot be captured (for example tiles whose feature map lives in host memory) runs eagerly
instead, with one warning per shape.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

Forward = Callable[[torch.Tensor], torch.Tensor]
WARMUP = 2  # eager runs on the capture stream first: cuDNN's autotuning and lazy set-up stay out of the graph


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    inp: torch.Tensor  # the static input the graph reads
    out: torch.Tensor  # the static output it writes


class GraphedForward:
    """``fn(x)`` for CUDA tensors, replayed from a CUDA graph captured per (shape, strides, dtype, key).

    ``fn`` must be a pure function of ``x`` on the GPU (no host synchronisation, no host copies).
    Under autocast, build the autocast context with ``cache_enabled=False`` (cached casts of the
    weights would be captured as dead memory). Calls from several threads are serialised: they
    share the static buffers.
    """

    def __init__(self, device: torch.device, keep: int = 4) -> None:
        if device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, not {device}")
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        self.device, self.keep = device, keep
        self._graphs: OrderedDict[Hashable, _Captured | None] = OrderedDict()  # None: runs eagerly
        self._lock = threading.Lock()
        self._stream = torch.cuda.Stream(device)  # warm-up and capture run on it
        self.captures = 0  # graphs captured so far

    def __call__(self, fn: Forward, x: torch.Tensor, key: Hashable = None) -> torch.Tensor:
        """``fn(x)``, from the graph captured for ``x``'s layout and ``key`` (captured on first use)."""
        ident = (tuple(x.shape), x.stride(), x.dtype, key)
        with self._lock:
            if ident in self._graphs:
                self._graphs.move_to_end(ident)
                cap = self._graphs[ident]
            else:
                cap = self._graphs[ident] = self._capture(fn, x)
                while len(self._graphs) > self.keep:
                    self._graphs.popitem(last=False)  # frees that graph's memory pool
            if cap is None:
                return fn(x)
            cap.inp.copy_(x)
            cap.graph.replay()
            return cap.out.clone()

    def _capture(self, fn: Forward, x: torch.Tensor) -> _Captured | None:
        stream, current = self._stream, torch.cuda.current_stream(self.device)
        inp = torch.empty_like(x)
        inp.copy_(x)
        stream.wait_stream(current)
        with torch.cuda.stream(stream):  # warm up on the stream that captures (lazy handles bind to it)
            for _ in range(WARMUP):
                fn(inp)
        current.wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
                out = fn(inp)
        except torch.cuda.OutOfMemoryError:
            raise  # the caller retries with smaller tiles
        except RuntimeError as e:  # an op that cannot be captured: this shape runs eagerly
            torch.cuda.synchronize(self.device)
            log.warning("cannot capture a CUDA graph for input %s; it runs eagerly (%s)", tuple(x.shape), e)
            return None
        self.captures += 1
        log.info("captured a CUDA graph for input %s", tuple(x.shape))
        return _Captured(graph, inp, out)
