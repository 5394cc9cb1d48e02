"""What every stage's thin ``main()`` shares: the command line, params and the tracker."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from tqdm import tqdm

from remaster.config import Params, load_params
from remaster.tracking import Tracker, make_tracker


def stage_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--params", help="params file (default: ./params.yaml where there is one, else the built-in defaults)"
    )
    parser.add_argument(
        "-S",
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a param, e.g. -S ingest.min_side=700 (repeatable)",
    )
    parser.add_argument("--no-track", action="store_true", help="do not record to MLflow")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging; a traceback on errors")
    return parser


PROJECT_LOGGERS = ("remaster", "stages", "flows", "models", "__main__")


def command_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The parser of a command that reads no params file: its name, its one-line description and -v."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging; a traceback on errors")
    return parser


def setup_logging(verbose: bool = False) -> None:
    """INFO (DEBUG with -v) from the project's own loggers, on stderr. Where Prefect has already set
    up the root logger (its console handler, at WARNING for other libraries), the project's loggers
    get their level and reach that handler; elsewhere a plain handler is set up."""
    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    for name in PROJECT_LOGGERS:
        logging.getLogger(name).setLevel(level)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per Prefect API call otherwise


def quiet_environment() -> None:
    """Telemetry off for every tool of the stack; the project never phones home."""
    for key, value in {
        "DO_NOT_TRACK": "true",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DVC_NO_ANALYTICS": "1",
    }.items():
        os.environ.setdefault(key, value)


def prepare(args: argparse.Namespace) -> tuple[Params, Tracker]:
    """Logging, quiet telemetry, params with overrides, and the tracker the params ask for."""
    setup_logging(args.verbose)
    quiet_environment()
    params = load_params_or_exit(args.params, args.overrides)
    tracker = make_tracker(params.tracking.enabled and not args.no_track)
    return params, tracker


def load_params_or_exit(path: str | Path | None, overrides: list[str]) -> Params:
    """``load_params``; a missing file or a bad value ends the command with its message and exit 2."""
    try:
        return load_params(path, overrides)
    except (ValueError, FileNotFoundError) as e:
        print(f"{program()}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def program() -> str:
    """The command's name as its usage line gives it (``remaster video``, ``train.py``)."""
    return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "remaster"


def add_output(parser: argparse.ArgumentParser, help: str, **kwargs: Any) -> None:
    """``-o/--output``, the one spelling of an output path in every command."""
    parser.add_argument("-o", "--output", type=Path, help=help, **kwargs)


class UserError(Exception):
    """A mistake in what the user asked for (a path, a value): one line and exit 2, no traceback."""


# What a user's own input raises; anything else is a defect and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    UserError, ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, FileExistsError,
    PermissionError,
)  # fmt: skip


def run_main(main: Callable[[list[str]], int | None], argv: Sequence[str] | None = None) -> int:
    """Run a command's ``main``: a user error prints ``PROG: error: MESSAGE`` and gives exit 2, with
    the traceback only under ``-v``; Ctrl-C that nothing else handled gives 130."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        return int(main(args) or 0)
    except USER_ERRORS as e:
        if "-v" in args or "--verbose" in args:
            raise
        print(f"{program()}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{program()}: interrupted", file=sys.stderr)
        return 130


def progress_enabled(flag: bool | None = None) -> bool:
    """One progress bar per long loop, and none when stderr is not a terminal."""
    return sys.stderr.isatty() if flag is None else flag


class LogProgress:
    """The progress bar off a terminal (a service, a log file): a log line at most every
    ``every`` seconds, and one at the end, with the count, the rate and the time left."""

    def __init__(
        self, total: int, *, initial: int = 0, unit: str = "it", log: Any = None, every: float = 30.0
    ):
        self.total, self.n, self.unit, self.every = total, initial, unit, every
        self.note = ""  # appended to each line, as tqdm's postfix is
        self.log = log or logging.getLogger("remaster.progress")
        self._start_n, self._t0 = initial, time.monotonic()
        self._last = self._t0
        self._lock = threading.Lock()  # tasks on threads report at once

    def update(self, n: int = 1) -> None:
        with self._lock:
            self.n += n
            now = time.monotonic()
            if now - self._last >= self.every or self.n >= self.total:
                self._last = now
                self.log.info("%s", self.line(now))

    def line(self, now: float) -> str:
        rate = (self.n - self._start_n) / max(now - self._t0, 1e-9)
        left = (self.total - self.n) / rate if rate > 0 else float("inf")
        eta = time.strftime("%H:%M:%S", time.gmtime(left)) if left != float("inf") else "?"
        line = f"{self.n}/{self.total} {self.unit}s, {rate:.3g} {self.unit}/s, {eta} left"
        return f"{line}, {self.note}" if self.note else line

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        self.note = text

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        return None


def progress_bar(
    total: int, *, initial: int = 0, unit: str = "it", log: Any = None
) -> tqdm[Any] | LogProgress:
    """A tqdm bar on a terminal; elsewhere ``LogProgress``, so that a long job still says how far it is."""
    if progress_enabled():
        return tqdm(total=total, initial=initial, unit=unit)
    return LogProgress(total, initial=initial, unit=unit, log=log)
