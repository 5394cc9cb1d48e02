"""``remaster watch INBOX -o DIR``: remaster each video that lands in a folder (``flows.watch``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from remaster import stopping
from remaster.cli.video import add_settings, settings
from remaster.commandline import UserError, add_output, load_params_or_exit, prepare, run_main, stage_parser


def build_parser() -> argparse.ArgumentParser:
    parser = stage_parser("Remaster every new video that lands in INBOX (one flow run per file).")
    parser.add_argument("inbox", type=Path, help="the folder to watch (never modified)")
    add_output(parser, "where the results and the state file go", required=True)
    add_settings(parser)
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between polls")
    parser.add_argument(
        "--settle", type=int, default=3, help="unchanged polls before a file counts as arrived"
    )
    parser.add_argument("--once", action="store_true", help="process what is there, then exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.inbox.is_dir():
        raise UserError(f"{args.inbox}: no such folder")
    load_params_or_exit(args.params, args.overrides)  # a bad value: exit 2 before anything starts
    from flows import episode, watch  # Prefect and torch: only for real work

    params, tracker = prepare(args)  # logging set up after Prefect's own, which keeps its format
    p = settings(params.remaster, args)

    remaster = episode.with_workers(p)
    resume = f"what is done is recorded in {args.output / watch.STATE}; run the same command to go on"

    def process(src: Path, dst: Path) -> dict[str, Any]:
        return dict(remaster(str(src), str(dst), p, True, None, tracker))

    try:
        with stopping.stop_on_signals("remaster watch", resume):
            done = watch.watch(args.inbox, args.output, process, suffix=f"_x{p.scale}.mkv",
                               interval=args.interval, settle=args.settle, once=args.once)  # fmt: skip
    except BaseException as e:  # Stopped, or Prefect's own exception for the signal
        if (code := stopping.stopped(e)) is not None:
            return code
        raise
    state = watch.load_state(args.output)
    failed = [name for name in done if state[name]["status"] == "failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
