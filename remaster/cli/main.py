"""The ``remaster`` command: one subcommand per stage, plus the flows.

Each stage subcommand is the stage's own ``main()``, so ``remaster ingest ...`` and
``python -m stages.ingest ...`` (what dvc.yaml runs) take the same arguments. ``--help`` builds the
parser alone, from a module that imports nothing heavy, so it answers at once.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from importlib import metadata

from remaster.commandline import run_main

# name -> (module with a main(argv) -> int, one-line help). Written out by hand so that grep finds
# every entry point.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("stages.demo", "write the procedural demo scrape and clip"),
    "ingest": ("stages.ingest", "validate, normalise and deduplicate a scrape; mine frames from videos"),
    "tile": ("stages.tile", "plan HR tiles and split train/val by image"),
    "pack": ("stages.pack", "pack HR tiles and their LR twins into HDF5"),
    "train": ("stages.train", "train A2N on the packed tiles (resumes after a kill)"),
    "evaluate": ("stages.evaluate", "score A2N against bicubic on held-out images; HTML report"),
    "upscale": ("remaster.cli.upscale", "upscale image files and folders (alpha and 16-bit kept)"),
    "export": ("remaster.cli.export", "export A2N to ONNX (the onnx backend) or safetensors"),
    "pipeline": (
        "remaster.cli.pipeline",
        "run ingest -> tile -> pack -> train -> evaluate as a Prefect flow",
    ),
    "video": ("remaster.cli.video", "remaster a video: upscale with A2N, keep every audio/subtitle stream"),
    "watch": ("remaster.cli.watch", "remaster each new video that lands in a folder"),
    "serve": ("remaster.cli.serve", "serve the flows as Prefect deployments, run by this process"),
    "deploy": ("remaster.cli.deploy", "deploy the flows to a Prefect work pool, run by its workers"),
}
# Where ``--help`` finds a parser when the command's module imports torch; the rest have build_parser().
PARSERS = {"train": "remaster.arguments:train_parser", "evaluate": "remaster.arguments:evaluate_parser"}


def parser_for(name: str) -> argparse.ArgumentParser:
    """Command ``name``'s parser, built without importing the command's module where that is heavy."""
    module, _, function = PARSERS.get(name, f"{COMMANDS[name][0]}:build_parser").partition(":")
    parser: argparse.ArgumentParser = getattr(importlib.import_module(module), function)()
    parser.prog = f"remaster {name}"
    return parser


def version() -> str:
    try:
        return metadata.version("remaster")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: remaster [--version] COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "remaster COMMAND --help describes each command's arguments."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if args[0] in ("-V", "--version"):
        print(f"remaster {version()}")
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"remaster: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name = COMMANDS[name][0]
    sys.argv[0] = f"remaster {name}"  # what argparse and the error lines show
    if "-h" in rest or "--help" in rest:
        parser = parser_for(name)
        parser.parse_args(rest)  # prints the help and exits 0
    module = importlib.import_module(module_name)
    return run_main(module.main, rest)


if __name__ == "__main__":
    raise SystemExit(main())
