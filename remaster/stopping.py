"""Stopping when told: the children a run owns, and what SIGTERM and SIGINT do to a long command.

Every ffmpeg a run starts goes through ``spawn``, which keeps it in one registry. Whatever ends a
run early (a signal, a Prefect cancellation, a failed segment) calls ``terminate_children``:
each child is terminated and reaped, which also closes the pipes that other threads block on, so
a reader sees end-of-file and a writer a broken pipe, and every thread gets out on its own.

``stop_on_signals`` is for a command's ``main()``: on SIGTERM or SIGINT it terminates the
children, prints one line saying what stopped and how to resume, and raises ``Stopped`` in the
main thread, which unwinds through the command's own cleanup. A thread inside the model cannot
be interrupted; if the process has not ended ``GRACE`` seconds after the signal, a watchdog
terminates every descendant process and ends it with the signal's exit status (130 for SIGINT,
143 for SIGTERM). Finished segments and checkpoints are written atomically, so either way what
was finished stays and nothing half-written looks finished.

While a Prefect flow runs, Prefect swaps in its own SIGTERM handler, which raises its own
exception in the main thread (and passes the signal on to ours only once the flow has wound
down). ``children_end_with_the_block`` wraps a run's body so that this exception, like any
other, begins the stop right away.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

GRACE = 7.0  # seconds from the signal to a forced exit, inside the 10 s a stop may take
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}

_children: set[subprocess.Popen[Any]] = set()
_lock = threading.Lock()


class Stopped(BaseException):
    """The run was told to stop (a BaseException, like KeyboardInterrupt: no ``except Exception``
    on the way up may swallow it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return exit_status(self.signum)


def exit_status(signum: int) -> int:
    """The status of a command ended by ``signum``, as a shell gives it (130 SIGINT, 143 SIGTERM)."""
    return EXIT_CODES.get(signal.Signals(signum), 128 + signum)


def spawn(cmd: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
    """``subprocess.Popen`` kept in the registry until ``reap`` (or ``terminate_children``)."""
    if stop_requested():
        raise RuntimeError(f"not starting {Path(cmd[0]).name}: the run is stopping")
    proc: subprocess.Popen[Any] = subprocess.Popen(list(cmd), **kwargs)
    with _lock:
        _children.add(proc)
    return proc


def reap(proc: subprocess.Popen[Any]) -> int:
    """Wait for ``proc`` and drop it from the registry; its exit status."""
    try:
        return proc.wait()
    finally:
        with _lock:
            _children.discard(proc)


def run(
    cmd: Sequence[str], *, input: bytes | None = None, text: bool = False
) -> subprocess.CompletedProcess[Any]:
    """``subprocess.run(capture_output=True)`` whose child a stop can terminate."""
    kwargs: dict[str, Any] = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    if input is not None:
        kwargs["stdin"] = subprocess.PIPE
    if text:
        kwargs.update(text=True, errors="replace")
    proc = spawn(cmd, **kwargs)
    try:
        out, err = proc.communicate(input)
    except BaseException:
        proc.kill()
        reap(proc)
        raise
    return subprocess.CompletedProcess(list(cmd), reap(proc), out, err)


def live_children() -> list[subprocess.Popen[Any]]:
    with _lock:
        return [p for p in _children if p.poll() is None]


def terminate_children(timeout: float = 1.0) -> int:
    """Terminate every registered child, kill what outlives ``timeout``, reap all; how many ran."""
    with _lock:
        procs = list(_children)
    running = [p for p in procs if p.poll() is None]
    for p in running:
        with contextlib.suppress(ProcessLookupError):
            p.terminate()
    deadline = time.monotonic() + timeout
    for p in running:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    with _lock:
        for p in procs:
            if p.poll() is not None:
                _children.discard(p)
    return len(running)


def descendants(pid: int | None = None) -> list[int]:
    """Every process below ``pid`` (default: this one), from /proc; [] where there is no /proc."""
    root = pid or os.getpid()
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [root]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _end_descendants() -> None:
    for pid in descendants():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    time.sleep(0.5)
    for pid in descendants():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


@dataclass
class _Stop:
    """This process's stop: who to name in the message, how to resume, and whether it began."""

    prog: str = "remaster"
    resume: str = "run the same command again to resume"
    signum: int = 0  # the signal that began it
    began: threading.Event = field(default_factory=threading.Event)
    refuse: threading.Event = field(default_factory=threading.Event)  # no new children from here on


_stop = _Stop()


def stop_requested() -> bool:
    return _stop.refuse.is_set()


def raise_if_stopping() -> None:
    """For a loop that stops only between its steps (``stop_on_signals(raise_now=False)``)."""
    if _stop.began.is_set():
        raise Stopped(_stop.signum)


def begin_stop(signum: int) -> None:
    """Once per process: the one line, the watchdog, and the children terminated."""
    if _stop.began.is_set():
        return
    _stop.signum = signum
    _stop.began.set()
    _stop.refuse.set()
    name = signal.Signals(signum).name
    print(f"{_stop.prog}: stopped by {name}; {_stop.resume}", file=sys.stderr, flush=True)
    code = exit_status(signum)

    def force() -> None:
        log.warning("%s: still running %.0f s after %s; ending it now", _stop.prog, GRACE, name)
        terminate_children(0.5)
        _end_descendants()
        logging.shutdown()
        os._exit(code)

    watchdog = threading.Timer(GRACE, force)
    watchdog.daemon = True
    watchdog.start()
    terminate_children()


def signal_of(e: BaseException) -> int | None:
    """The signal behind ``e``: ``Stopped``, Ctrl-C's KeyboardInterrupt, or a framework's own
    termination exception that carries ``.signal`` (Prefect's ``TerminationSignal``)."""
    if isinstance(e, Stopped):
        return e.signum
    if isinstance(e, KeyboardInterrupt):
        return int(signal.SIGINT)
    sig = getattr(e, "signal", None)
    return int(sig) if isinstance(sig, int) else None


@contextlib.contextmanager
def children_end_with_the_block() -> Iterator[None]:
    """A run's body: whatever leaves it early (an error, a signal, a Prefect cancellation) first
    terminates the children, so that threads blocked on their pipes get out. A signal also
    begins the stop (``begin_stop``) if the command's handler has not: from then on no new child
    starts in this process."""
    try:
        yield
    except BaseException as e:
        signum = signal_of(e)
        if signum is not None:
            begin_stop(signum)
        if n := terminate_children():
            log.info("terminated %d child process(es)", n)
        raise


@contextlib.contextmanager
def stop_on_signals(prog: str, resume: str, raise_now: bool = True) -> Iterator[None]:
    """SIGTERM and SIGINT stop the block as described above; ``resume`` says how to carry on.
    ``raise_now=False``: the handler only begins the stop, and the block calls
    ``raise_if_stopping`` where its state is whole (between training steps)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signals reach the main thread only; its own handler decides there
        return
    _stop.prog, _stop.resume = prog, resume

    def handler(signum: int, frame: FrameType | None) -> None:
        if _stop.began.is_set():
            raise Stopped(signum)  # the second signal, or one a framework passed on after its own
        begin_stop(signum)
        if raise_now:
            raise Stopped(signum)

    previous = {s: signal.signal(s, handler) for s in EXIT_CODES}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _signal_in(e: BaseException) -> int | None:
    """The signal behind ``e`` or any exception it was raised from or while handling."""
    seen: BaseException | None = e
    while seen is not None:
        if (signum := signal_of(seen)) is not None:
            return signum
        seen = seen.__cause__ or seen.__context__
    return None


def exit_code_of(e: BaseException) -> int | None:
    """The exit status a stop asks for, if ``e`` is (or wraps) a signal's exception."""
    signum = _signal_in(e)
    return None if signum is None else exit_status(signum)


def stopped(e: BaseException) -> int | None:
    """For a command's last ``except``: ``exit_code_of(e)``, and the stop's one line if it has not
    been said. A signal that lands while a framework's own handler is installed (Prefect's, as a
    flow or task run starts) reaches no block of ours, and would otherwise exit without it."""
    signum = _signal_in(e)
    if signum is None:
        return None
    begin_stop(signum)
    return exit_status(signum)
