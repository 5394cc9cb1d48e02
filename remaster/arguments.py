"""The command lines of the stages that load torch (train, evaluate), kept apart from them so that
``remaster train --help`` answers without importing torch. Each stage's ``main()`` parses with the
same parser."""

from __future__ import annotations

import argparse
from pathlib import Path

from remaster.commandline import add_output, stage_parser

DEFAULT_CHECKPOINT = "runs/train/best.pt"


def train_parser() -> argparse.ArgumentParser:
    parser = stage_parser("Train A2N on packed HR/LR tiles; a killed run resumes from its last checkpoint.")
    parser.prog = "remaster train"
    add = parser.add_argument
    add(
        "--train",
        type=Path,
        default=Path("data/packed/train.h5"),
        help="packed training tiles (default: %(default)s)",
    )
    add(
        "--val", type=Path, default=Path("data/packed/val.h5"), help="packed val tiles (default: %(default)s)"
    )
    add_output(parser, "checkpoints: last.pt, best.pt (default: %(default)s)", default=Path("runs/train"))
    add(
        "--metrics",
        type=Path,
        default=Path("metrics/train.json"),
        help="final scores, for dvc metrics (default: %(default)s)",
    )
    add("--plots", type=Path, default=Path("plots/train"), help="loss and PSNR curves (default: %(default)s)")
    add("--init", metavar="CHECKPOINT", help="start from these weights (overrides train.init)")
    return parser


def evaluate_parser() -> argparse.ArgumentParser:
    parser = stage_parser("Score A2N against bicubic on held-out images and write an HTML report.")
    parser.prog = "remaster evaluate"
    add = parser.add_argument
    add("--hr", action="append", type=Path, metavar="DIR", help="HR images to score (repeatable)")
    add("--lr", type=Path, metavar="DIR", help="LR images with no HR: upscale them, no scores")
    add("--val", type=Path, help="packed val tiles (default without --hr/--lr: data/packed/val.h5)")
    add("--scale", type=int, help="default: train.scale")
    add(
        "--model",
        help="clean, video, dvd, a checkpoint or models:/name@alias (default: evaluate.model, else "
        f"{DEFAULT_CHECKPOINT} without --hr/--lr, else the shipped weights)",
    )
    add_output(parser, "the report folder (default: %(default)s)", default=Path("reports/eval"))
    add("--metrics", type=Path, help="also write the means per set here, for dvc metrics")
    add(
        "--degrade",
        metavar="SPEC",
        help="score on LR degraded like a real episode, e.g. x264:crf=23, "
        "mpeg2:q=8, jpeg:q=70, chroma; add ,kernel=area|bilinear|lanczos ,blur=SIGMA ,noise=SIGMA "
        "(default: evaluate.degrade, else clean bicubic)",
    )
    return parser
