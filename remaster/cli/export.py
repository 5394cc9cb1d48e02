"""``remaster export``: A2N to ONNX, or to safetensors (weights and config only)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from remaster.commandline import UserError, command_parser, run_main, setup_logging
from remaster.files import sha256_file

FORMATS = ("onnx", "safetensors")
OPSET = 17  # the ONNX opset the graph is written in

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(
        "remaster export", "Export A2N to ONNX, or to safetensors (weights and config only)."
    )
    parser.add_argument("--format", choices=FORMATS, default="onnx", help="default: %(default)s")
    parser.add_argument("--scale", type=int, choices=(2, 3, 4), required=True, help="the model's scale")
    parser.add_argument("--model", help="a checkpoint or .safetensors (default: the shipped weights)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="the .onnx or .safetensors file")
    parser.add_argument("--opset", type=int, default=OPSET, help="ONNX opset (default: %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    from models.checkpoint import load_model  # torch: only for real work
    from remaster.engine.onnx import export_onnx, export_safetensors
    from remaster.model_source import resolve_model

    path = resolve_model(args.model, args.scale)
    model, _, info = load_model(path, scale=args.scale if path.suffix != ".safetensors" else None)
    if model.scale != args.scale:
        raise UserError(f"{path} is an x{model.scale} model, not x{args.scale}")
    source = f"{path.name} sha256:{sha256_file(path)}"
    if args.format == "safetensors":
        export_safetensors(model, args.output, source=source, step=info["step"], data_hash=info["data_hash"])
        log.info("wrote %s (x%d, %d bytes)", args.output, args.scale, args.output.stat().st_size)
        return 0
    diff = export_onnx(model, args.output, opset=args.opset, source=source)
    log.info("wrote %s (x%d); ONNX Runtime matches torch to %.1e", args.output, args.scale, diff)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
