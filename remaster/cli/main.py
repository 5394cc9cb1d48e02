"""The ``remaster`` command: one subcommand per stage, plus the flows.

Each stage subcommand is the stage's own ``main()``, so ``remaster ingest ...`` and
``python -m stages.ingest ...`` (what dvc.yaml runs) take the same arguments.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

# name -> (module with a main(argv) -> int, one-line help). Written out by hand so that grep finds
# every entry point.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("stages.demo", "write the procedural demo scrape and clip"),
    "ingest": ("stages.ingest", "validate, normalise and deduplicate a folder of images"),
    "tile": ("stages.tile", "plan HR tiles and split train/val by image"),
    "pack": ("stages.pack", "pack HR tiles and bicubic LR twins into HDF5"),
    "train": ("stages.train", "train A2N on the packed tiles (resumes after a kill)"),
    "evaluate": ("stages.evaluate", "score A2N against bicubic on held-out images; HTML report"),
    "upscale": ("remaster.cli.upscale", "upscale image files and folders (alpha and 16-bit kept)"),
    "export": ("remaster.cli.export", "export A2N to ONNX (the onnx backend) or safetensors"),
    "pipeline": ("flows.pipeline", "run ingest -> tile -> pack -> train -> evaluate as a Prefect flow"),
    "video": ("flows.episode", "remaster a video: upscale with A2N, keep every audio/subtitle stream"),
    "watch": ("flows.watch", "remaster each new video that lands in a folder"),
    "serve": ("flows.serve", "serve the flows as Prefect deployments, run by this process"),
    "deploy": ("flows.deploy", "deploy the flows to a Prefect work pool, run by its workers"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: remaster COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "remaster COMMAND --help describes each command's arguments."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"remaster: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    sys.argv[0] = f"remaster {name}"  # what argparse shows in usage lines
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
