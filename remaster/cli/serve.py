"""``remaster serve``: the flows as Prefect deployments, run by this process (``flows.serve``).

    remaster serve                         # against PREFECT_API_URL, or a local server
    prefect deployment run 'remaster-episode/remaster' \\
        --params '{"input_path": "in.mkv", "output_path": "out.mkv"}'
"""

from __future__ import annotations

import argparse
import signal
import sys

from remaster.commandline import command_parser, quiet_environment, run_main, setup_logging


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("remaster serve", (__doc__ or "").splitlines()[0])
    parser.add_argument("--name", default="remaster", help="deployment name (default: %(default)s)")
    parser.add_argument("--limit", type=int, default=1, help="flow runs at once (default: %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_environment()
    from flows.serve import serve_flows  # Prefect: only for real work

    setup_logging(args.verbose)  # after Prefect's own set-up, which would undo it
    # Ctrl-C raises KeyboardInterrupt even where the shell started this in the background, with
    # SIGINT ignored (Python then installs no handler of its own); the other commands' stop does too.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    stopped_by = serve_flows(args.name, args.limit)
    if stopped_by is None:
        return 0
    print(f"remaster serve: stopped by {stopped_by.name}; the deployments are paused and runs in flight "
          "were cancelled (a remaster run keeps its finished segments); run remaster serve again to go on, "
          "and the same flow run again to resume it", file=sys.stderr)  # fmt: skip
    return 128 + stopped_by.value


if __name__ == "__main__":
    raise SystemExit(run_main(main))
