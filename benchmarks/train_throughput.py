"""Training throughput of full-size A2N: seconds per iteration and samples/s, by precision.

One iteration is what ``stages.train`` does per step: forward, Charbonnier loss, backward and
an Adam step, on random LR crops (the data loader is left out). The first ``--warmup``
iterations are not timed (oneDNN builds its kernels then). Prints a Markdown table::

    python benchmarks/train_throughput.py            # x4, batch 32, 64 px LR crops
    python benchmarks/train_throughput.py --iters 5 --batch 16
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import time

import torch

from models.a2n import A2N, A2NConfig
from remaster.engine.cpu import cpu_model
from remaster.training.loop import charbonnier

# (label, channels_last, bf16 autocast)
CASES = [
    ("fp32", False, False),
    ("fp32 channels_last", True, False),
    ("bf16 autocast channels_last", True, True),
]


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(device: torch.device, channels_last: bool, bf16: bool, args: argparse.Namespace) -> float:
    """Mean seconds per training iteration."""
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = A2N(A2NConfig(scale=args.scale, n_feat=args.n_feat))
    model.to(device, memory_format=fmt)  # type: ignore[call-overload]
    opt = torch.optim.Adam(model.parameters(), lr=5e-4, betas=(0.9, 0.999))
    side = args.lr_size
    lr = torch.rand(args.batch, 3, side, side, device=device).to(memory_format=fmt)  # (B, 3, h, w)
    hr = torch.rand(args.batch, 3, side * args.scale, side * args.scale, device=device).to(
        memory_format=fmt
    )  # (B, 3, h*s, w*s)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    times = []
    for i in range(args.warmup + args.iters):
        sync(device)
        t = time.perf_counter()
        with autocast:
            sr = model(lr)
        loss = charbonnier(sr.float(), hr, 1e-6)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - t)
    del model, opt, lr, hr, sr, loss
    gc.collect()
    return sum(times) / len(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr-size", type=int, default=64, help="LR crop side in pixels")
    ap.add_argument("--scale", type=int, default=4)
    ap.add_argument("--n-feat", type=int, default=40)
    ap.add_argument("--iters", type=int, default=3, help="timed iterations per case")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
        name = f"{cpu_model()}, {torch.get_num_threads()} threads"
    else:
        name = torch.cuda.get_device_name(device)
    print(
        f"A2N x{args.scale} (n_feat {args.n_feat}), batch {args.batch}, "
        f"{args.lr_size} px LR crops; torch {torch.__version__}; {name}\n"
    )
    print("| device | precision | s / iteration | samples / s |")
    print("| --- | --- | --- | --- |")
    for label, channels_last, bf16 in CASES:
        if bf16 and not bf16_supported(device):
            print(f"| {device.type} | {label} | not supported | |")
            continue
        sec = measure(device, channels_last, bf16, args)
        print(f"| {device.type} | {label} | {sec:.3f} | {args.batch / sec:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
