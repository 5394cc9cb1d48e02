"""What the CPU can do, and how CPU inference and training use its memory."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import platform
import sys
from pathlib import Path


def cpu_model() -> str:
    """The CPU's name as /proc/cpuinfo gives it, for benchmark tables and model cards."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def cpu_line() -> str:
    """The CPU's name and the cores this process may run on, for the machine line of a benchmark."""
    return f"{cpu_model()} x{_affinity()}"


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
    return _affinity()


def _affinity() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_MALLOC_SETTINGS = ((_M_MMAP_THRESHOLD, 32 << 20), (_M_TRIM_THRESHOLD, 512 << 20), (_M_TOP_PAD, 64 << 20))


@functools.cache
def keep_freed_memory() -> bool:
    """Have glibc reuse freed tensor memory instead of handing it back to the kernel.

    By default glibc serves blocks above its mmap threshold (128 KiB at first, then the largest
    block freed so far) with a fresh mmap and trims freed heap, so new activations cost page
    faults and zeroing in the kernel: up to 16,000 faults per A2N block call on a 192 px tile.
    Keeping blocks up to glibc's maximum threshold (32 MiB) in the heap, and trimming only
    above 512 MiB, makes those zero; a whole 576x432 x2 frame then faults a quarter as often
    and runs about 1.08x faster (``benchmarks/engine_gains.py``). Called once per process by CPU
    inference and training; True when glibc took the settings (elsewhere it does nothing).
    ``REMASTER_KEEP_FREED_MEMORY=0`` leaves glibc's defaults (RSS then shrinks after a peak)."""
    if not sys.platform.startswith("linux") or os.environ.get("REMASTER_KEEP_FREED_MEMORY") == "0":
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return all(mallopt(param, value) == 1 for param, value in _MALLOC_SETTINGS)


def available_memory() -> int:
    """Bytes the kernel can give this process without swapping (MemAvailable); 4 GiB if unknown."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        lines = Path("/proc/meminfo").read_text().splitlines()
        return int(next(ln for ln in lines if ln.startswith("MemAvailable:")).split()[1]) * 1024
    return 4 << 30
