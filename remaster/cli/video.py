"""``remaster video``: remaster one episode (probe, split, upscale, reassemble, verify).

The flags and the checks on the input come first and import nothing heavy, so ``--help`` and a
mistyped path answer at once; the Prefect flow (``flows.episode``) starts only for real work.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any, get_args

from remaster import stopping
from remaster.commandline import UserError, add_output, load_params_or_exit, prepare, run_main, stage_parser
from remaster.config import REUSE_MODES, RUNNERS, Codec, Deinterlace, PixFmt, RemasterParams
from remaster.files import write_json

SCALES = (2, 4)


def add_settings(parser: argparse.ArgumentParser) -> None:
    """The remaster settings as flags; each one left out keeps params.yaml's ``remaster`` value."""
    parser.add_argument("--scale", type=int, choices=SCALES, help="2 or 4 (default: remaster.scale)")
    parser.add_argument(
        "--model",
        help="video, dvd or clean (the shipped weights for compressed video, for MPEG-1/2 or for "
        "clean images), a checkpoint, .safetensors or models:/name@alias (default: remaster.model, "
        "else by the source's codec: dvd for MPEG-1/2, clean for a lossless one such as FFV1, video "
        "for the rest)",
    )
    parser.add_argument("--codec", choices=get_args(Codec), help="the video encoder")
    parser.add_argument("--crf", type=int, help="the encoder's constant rate factor (lower: better, larger)")
    parser.add_argument("--preset", help="the encoder's preset (ultrafast ... veryslow)")
    parser.add_argument("--pix-fmt", choices=get_args(PixFmt), help="auto: 10-bit for a deeper source")
    parser.add_argument("--segment-seconds", type=float, help="segment length; 0 = one segment")
    parser.add_argument("--deinterlace", choices=get_args(Deinterlace), help="auto: when the probe finds it")
    parser.add_argument(
        "--workers",
        type=int,
        help="segments upscaled at once (0 = 1 on a CPU, 2 on a GPU); a Dask cluster has its own",
    )
    parser.add_argument("--batch", type=int, help="frames per model call")
    parser.add_argument(
        "--cuda-graphs", action="store_true", default=None, help="replay the model from CUDA graphs (GPU)"
    )
    parser.add_argument(
        "--runner", choices=RUNNERS, help="upscale segments on a thread pool or on Dask workers"
    )
    parser.add_argument(
        "--reuse",
        choices=REUSE_MODES,
        help="a frame that repeats the last computed one takes its "
        "output again: off, exact (identical frames) or near (within --reuse-tolerance)",
    )
    parser.add_argument(
        "--reuse-tolerance", type=float, metavar="LEVELS", help="near: mean luma difference, in grey levels"
    )
    parser.add_argument(
        "--dask-address",
        metavar="tcp://HOST:PORT",
        help="a running Dask scheduler (default: a local cluster)",
    )


def settings(base: RemasterParams, args: argparse.Namespace) -> RemasterParams:
    given = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(RemasterParams)}
    return dataclasses.replace(base, **{k: v for k, v in given.items() if v is not None})


def metrics(summary: dict[str, Any]) -> dict[str, Any]:
    """The numbers worth a ``dvc metrics diff``: what came out and whether it matched its source."""
    checks = summary["verify"]
    return {
        "frames": summary["frames"],
        "segments": summary["segments"],
        "width": summary["result"]["width"],
        "height": summary["result"]["height"],
        "duration_s": checks["duration"]["actual"],
        "max_drift_s": checks["max_drift"]["actual"],
        "verified": all(c["ok"] for c in checks.values()),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = stage_parser("Remaster a video with A2N: probe, split, upscale, reassemble, verify.")
    parser.add_argument("input", type=Path, help="the source video")
    add_output(parser, "the result (.mkv holds every stream)")
    add_settings(parser)
    parser.add_argument("--keep-frames", metavar="DIR", help="also write the upscaled frames as PNG here")
    parser.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    parser.add_argument(
        "--dry-run-reuse",
        action="store_true",
        help="print how many frames each reuse mode would send through the model, and upscale nothing",
    )
    parser.add_argument("--summary", type=Path, metavar="JSON", help="write the summary (no timings) here")
    parser.add_argument(
        "--metrics", type=Path, metavar="JSON", help="write frames, size and checks here (DVC)"
    )
    return parser


def check_input(path: Path) -> None:
    """The source must be a readable file before anything starts."""
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if not path.is_file():
        raise UserError(f"{path}: not a file")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.output and not args.dry_run_reuse:
        parser.error("the following arguments are required: -o/--output")
    check_input(args.input)
    load_params_or_exit(args.params, args.overrides)  # a bad value: exit 2 before anything starts
    from flows import episode  # Prefect and torch: only now that the job is known to make sense
    from remaster.video.ffmpeg import VerifyError
    from remaster.video.probe import VideoError

    params, tracker = prepare(args)  # logging set up after Prefect's own, which keeps its format
    p = settings(params.remaster, args)

    if args.dry_run_reuse:
        print(episode.reuse_preview(args.input, p))
        return 0
    episode.check_job(p, args.input, args.output, args.overwrite)
    resume = f"the finished segments stay in {args.output}.parts; run the same command to resume"
    try:
        with stopping.stop_on_signals("remaster video", resume):
            run = episode.with_workers(p)
            summary = run(str(args.input), str(args.output), p, args.overwrite, args.keep_frames, tracker)
    except (
        VideoError,
        VerifyError,
        FileNotFoundError,
        FileExistsError,
        ValueError,
        RuntimeError,
        OSError,
    ) as e:
        if (code := stopping.stopped(e)) is not None:
            return code  # a segment that failed because the run was stopping
        print(f"remaster video: error: {e}", file=sys.stderr)
        return 1
    except BaseException as e:  # Stopped, or Prefect's own exception for the signal
        if (code := stopping.stopped(e)) is not None:
            return code
        raise
    if args.summary:
        write_json(args.summary, {k: v for k, v in summary.items() if k != "run"})
    if args.metrics:
        write_json(args.metrics, metrics(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
