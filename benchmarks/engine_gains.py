"""What each part of the CPU inference engine buys: one Markdown table from one run.

One 576x432 frame at x2 (full-size A2N, random weights, fp32) through ``Upscaler`` in five
set-ups, each in its own process (the allocator setting is per process), taking turns so that
changing load hits them alike. Each adds one change to the row above it:

- the published layout (``fuse=False``), glibc's default allocator settings, 192 px tiles, every
  op spread over all cores;
- ``remaster.engine.cpu.keep_freed_memory`` (the default for CPU inference);
- the fused model (``fuse_for_inference``, the default);
- the tiles of a band on ``Lanes``, one single-core thread per core (the default);
- 288 px tiles (the default ``CPU_TILE``).

Each time is the best of ``--rounds``; page faults are the frame's minor faults.

    python benchmarks/engine_gains.py --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = {  # label: (fuse, keep freed memory, tile, lanes)
    "published layout, glibc defaults, 192 px tiles, ops on all cores": (False, False, 192, 1),
    "+ freed memory kept": (False, True, 192, 1),
    "+ fused model": (True, True, 192, 1),
    "+ tiles on single-core lanes": (True, True, 192, 0),
    "+ 288 px tiles (the default)": (True, True, 288, 0),
}


def child(fuse: bool, tile: int, lanes: int) -> None:
    import numpy as np
    import torch

    from models.a2n import A2N, A2NConfig
    from remaster.engine.cpu import cpu_cores
    from remaster.engine.upscaler import Upscaler

    torch.set_num_threads(cpu_cores())
    torch.manual_seed(0)
    cfg = A2NConfig(scale=2)
    model = A2N(cfg).eval().to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    up = Upscaler(model, cfg, torch.device("cpu"), "fp32", tile, fuse=fuse, lanes=lanes)
    frame = np.random.default_rng(0).integers(0, 256, (1, 432, 576, 3), dtype=np.uint8)
    up.upscale_frames(frame[:, :200, :200])  # oneDNN builds its kernels
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    c0, t0 = time.process_time(), time.perf_counter()
    up.upscale_frames(frame)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    print(json.dumps({"wall": wall, "cpu": cpu, "faults": faults}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", help=argparse.SUPPRESS)  # JSON [fuse, tile, lanes]
    args = parser.parse_args()
    if args.child:
        child(*json.loads(args.child))
        return
    root = Path(__file__).resolve().parents[1]
    best: dict[str, dict[str, float]] = {}
    for _ in range(args.rounds):
        for label, (fuse, keep, tile, lanes) in VARIANTS.items():
            env = {**os.environ, "PYTHONPATH": str(root), "REMASTER_KEEP_FREED_MEMORY": "1" if keep else "0"}
            cmd = [sys.executable, __file__, "--child", json.dumps([fuse, tile, lanes])]
            got = json.loads(subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout)
            if label not in best or got["wall"] < best[label]["wall"]:
                best[label] = got
    base = next(iter(best.values()))["wall"]
    print(f"load average at end {os.getloadavg()[0]:.1f}\n")
    print("| 576x432 x2 | s/frame | CPU s/frame | page faults/frame | speed-up |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for label, r in best.items():
        print(f"| {label} | {r['wall']:.2f} | {r['cpu']:.1f} | {r['faults']:,} | {base / r['wall']:.2f}x |")


if __name__ == "__main__":
    main()
