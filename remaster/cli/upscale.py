"""``remaster upscale INPUT... --scale S -o OUTDIR``: upscale image files and folders with A2N.

Folders are walked recursively and mirrored under OUTDIR; a file given by name lands directly in
OUTDIR. Each output keeps its input's channels and depth as far as the format allows:

- alpha is upscaled on its own, as a grey image through the model (``--alpha model``, sharp
  edges; one more model pass) or with bicubic (``--alpha bicubic``, fast), and put back; a
  constant alpha is just widened. JPEG has no alpha: it is composited over white.
- a 16-bit PNG runs through the model as floats from its 16-bit values and is written back as a
  16-bit PNG (read through ffmpeg, since Pillow keeps only 8 bits of 16-bit colour). WebP and
  JPEG hold 8 bits.
- greyscale stays greyscale; the ICC profile is carried over; EXIF orientation is applied.

Outputs that exist are skipped unless ``--overwrite``; each one is written under a temporary
name and renamed when complete, and inputs are only read. A file that cannot be read or
upscaled is reported and skipped, the rest go on, and the exit status is 1 if any failed.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from remaster.commandline import command_parser, quiet_environment, run_main, setup_logging
from remaster.config import BACKENDS, PRECISIONS

log = logging.getLogger(__name__)

FORMATS = ("png", "webp", "jpg")
ALPHA_MODES = ("model", "bicubic")


def build_parser() -> argparse.ArgumentParser:
    p = command_parser("remaster upscale", "Upscale images with A2N.")
    p.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="image files or folders")
    p.add_argument("--scale", type=int, choices=(2, 3, 4), required=True, help="the upscale factor")
    p.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    p.add_argument(
        "--model",
        help="clean, video or dvd (the shipped weights for clean images, for compressed frames "
        "or for MPEG-1/2 frames), a checkpoint, .safetensors, .onnx or models:/name@alias (default: clean)",
    )
    p.add_argument("--format", choices=FORMATS, default="png", help="output format (%(default)s)")
    p.add_argument("--quality", type=int, default=95, help="jpg/webp quality; webp 100 = lossless")
    p.add_argument("--alpha", choices=ALPHA_MODES, default="model", help="how alpha is upscaled")
    p.add_argument("--overwrite", action="store_true", help="redo outputs that exist")
    p.add_argument("--tile", type=int, help="LR tile side (default: from memory; 0 = whole images)")
    p.add_argument("--precision", choices=PRECISIONS, default="auto", help="auto: bf16 where supported")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--backend", choices=BACKENDS, default="auto", help="torch, or onnx (ONNX Runtime)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (slow start)")
    p.add_argument("--cuda-graphs", action="store_true", help="replay the model from CUDA graphs (GPU)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    quiet_environment()
    if not 1 <= args.quality <= 100:
        print("remaster upscale: --quality must be 1..100", file=sys.stderr)
        return 2
    if any(i.is_dir() and i.resolve() == args.output.resolve() for i in args.inputs):
        print("remaster upscale: -o must not be an input folder (inputs are never modified)", file=sys.stderr)
        return 2
    from remaster.engine.pictures import plan, upscale_files  # torch: only for real work
    from remaster.engine.upscaler import Upscaler
    from remaster.model_source import resolve_model

    jobs, missing = plan(args.inputs, args.output, args.format)
    try:
        up = Upscaler.load(
            str(resolve_model(args.model, args.scale)),
            args.scale,
            device=args.device,
            precision=args.precision,
            tile=args.tile,
            backend=args.backend,
            compile=args.compile,
            cuda_graphs=args.cuda_graphs,
        )
    except (FileNotFoundError, ValueError, ImportError) as e:
        print(f"remaster upscale: {e}", file=sys.stderr)
        return 2
    log.info("x%d on %s, %s, tile %s: %d images", up.scale, up.device, up.precision, up.tile, len(jobs))
    summary = upscale_files(
        jobs, up, fmt=args.format, quality=args.quality, alpha=args.alpha, overwrite=args.overwrite
    )
    summary.failed = missing + summary.failed
    print(summary.report())
    return 1 if summary.failed else 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
