"""``remaster deploy``: the flows as deployments on a Prefect work pool, run by its workers
(``flows.deploy``)."""

from __future__ import annotations

import argparse

from remaster.commandline import command_parser, quiet_environment, run_main, setup_logging


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("remaster deploy", (__doc__ or "").splitlines()[0])
    parser.add_argument("--pool", default="remaster", help="work pool (default: %(default)s)")
    parser.add_argument("--name", default="remaster", help="deployment name (default: %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_environment()
    from flows.deploy import deploy  # Prefect: only for real work

    setup_logging(args.verbose)  # after Prefect's own set-up, which would undo it

    deploy(args.pool, args.name)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
