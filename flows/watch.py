"""``remaster watch INBOX --out DIR``: remaster each video that lands in a folder, once.

A file counts as arrived when its size and modification time have stayed the same for
``--settle`` polls in a row (a copy in progress keeps changing). What was done is kept in
``DIR/.remaster-watch.json``, written atomically and keyed by name, size and mtime: a restart
skips what is done, a replaced file is done again, and a file that failed is recorded with its
error and left alone until it changes. Each file runs the ``remaster-episode`` flow.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from remaster.files import write_json

log = logging.getLogger(__name__)

STATE = ".remaster-watch.json"
VIDEO_SUFFIXES = {".mkv", ".mp4", ".m4v", ".mov", ".avi", ".webm", ".ts", ".m2ts", ".mpg", ".mpeg", ".vob"}
VIDEO_SUFFIXES |= {".wmv", ".flv", ".ogv"}


def fingerprint(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def load_state(out_dir: Path) -> dict[str, Any]:
    path = out_dir / STATE
    return dict(json.loads(path.read_text())) if path.exists() else {}


def candidates(inbox: Path) -> list[Path]:
    """Files in ``inbox``, not hidden (a copy tool's temporary names usually are)."""
    return sorted(p for p in inbox.iterdir() if p.is_file() and not p.name.startswith("."))


def watch(
    inbox: Path,
    out_dir: Path,
    process: Callable[[Path, Path], dict[str, Any]],
    *,
    suffix: str = "_remastered.mkv",
    interval: float = 5.0,
    settle: int = 3,
    once: bool = False,
    sleep: Callable[[float], None] = time.sleep,
) -> list[str]:
    """Poll ``inbox``; ``process(src, dst)`` each settled new file. ``once``: stop when none is left."""
    out_dir.mkdir(parents=True, exist_ok=True)
    state = load_state(out_dir)
    seen: dict[str, tuple[str, int]] = {}  # name -> (fingerprint, polls unchanged)
    handled: list[str] = []
    while True:
        pending = 0
        for path in candidates(inbox):
            try:
                fp = fingerprint(path)
            except FileNotFoundError:
                continue  # moved away between the listing and now
            if state.get(path.name, {}).get("fingerprint") == fp:
                continue
            if path.suffix.lower() not in VIDEO_SUFFIXES:  # recorded once, so the user sees why
                state[path.name] = {"fingerprint": fp, "status": "skipped", "error": "not a video file name"}
                write_json(out_dir / STATE, state)
                log.warning(
                    "watch: %s skipped: not a video file name (%s)", path, ", ".join(sorted(VIDEO_SUFFIXES))
                )
                continue
            prev, polls = seen.get(path.name, ("", 0))
            polls = polls + 1 if prev == fp else 1
            seen[path.name] = (fp, polls)
            if polls < settle:
                pending += 1
                continue
            dst = out_dir / f"{path.stem}{suffix}"
            entry: dict[str, Any] = {
                "fingerprint": fp,
                "output": str(dst),
                "at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }
            try:
                process(path, dst)
                entry["status"] = "done"
                log.info("watch: %s -> %s", path, dst)
            except Exception as e:  # noqa: BLE001 - one bad file must not stop the watch
                entry.update(status="failed", error=str(e)[-2000:])
                log.error("watch: %s failed: %s", path, e)
            state[path.name] = entry
            write_json(out_dir / STATE, state)
            handled.append(path.name)
        if once and not pending:
            return handled
        sleep(interval)
