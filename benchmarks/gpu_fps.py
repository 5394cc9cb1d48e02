"""Frames per second of full-size A2N x4 on 576x432 frames on a GPU: one Markdown table.

Rows: each precision (bf16, fp16, fp32) eager and replayed from CUDA graphs, then bf16 (the
GPU default) through ``torch.compile``, with and without CUDA graphs; all through the shared
``Upscaler`` (uint8 frames in and out, host <-> device copies included, batches of frames as the
video path makes them). Random weights: speed does not depend on them. The aim is real time,
25 fps or more, on one H100. ``benchmarks/gpu.sh`` runs it as one short job.

    python benchmarks/gpu_fps.py --frames 64
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from models.a2n import A2N, A2NConfig
from models.checkpoint import save_checkpoint
from remaster.commandline import quiet_environment
from remaster.engine.upscaler import Upscaler


def fps(up: Upscaler, frames: np.ndarray, sync: bool) -> tuple[float, int]:
    """(frames per second, frames per batch) over ``frames``, after one warm-up batch."""
    step = up.frames_per_batch(*frames.shape[1:3])
    up.upscale_frames(frames[:step])  # warm-up: cudnn autotuning, compilation
    if sync:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    up.upscale_frames(frames)
    if sync:
        torch.cuda.synchronize()
    return len(frames) / (time.perf_counter() - t0), step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--width", type=int, default=576)
    parser.add_argument("--height", type=int, default=432)
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--precisions", default="bf16,fp16,fp32")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    parser.add_argument("--no-graphs", action="store_true", help="skip the CUDA graph rows")
    args = parser.parse_args()
    quiet_environment()
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run this on a GPU machine (or --device cpu to try it)")
    name = torch.cuda.get_device_name() if cuda else "CPU"
    cfg = A2NConfig(scale=args.scale)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (args.frames, args.height, args.width, 3), dtype=np.uint8)
    size = f"{args.width}x{args.height}"
    print(f"{name}, torch {torch.__version__}; A2N x{args.scale} on {size}, {args.frames} frames\n")
    graphs = (False,) if args.no_graphs or not cuda else (False, True)
    rows = [(p, False, g) for p in args.precisions.split(",") for g in graphs]
    if not args.no_compile:
        rows += [("bf16", True, g) for g in graphs]
    print("| precision | compile | CUDA graphs | tile | frames/batch | fps | ms/frame | peak GPU MiB |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "a2n.pt"
        save_checkpoint(ckpt, A2N(cfg), cfg)
        for precision, compiled, graphed in rows:
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            up = Upscaler.load(
                str(ckpt),
                args.scale,
                device=args.device,
                precision=precision,
                compile=compiled,
                cuda_graphs=graphed,
            )
            rate, step = fps(up, frames, cuda)
            peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else float("nan")
            yes = {True: "yes", False: "no"}
            print(
                f"| {precision} | {yes[compiled]} | {yes[graphed]} | {up.tile or 'whole'} | {step} "
                f"| {rate:.1f} | {1000 / rate:.1f} | {peak:.0f} |",
                flush=True,
            )
            del up
            if cuda:
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
