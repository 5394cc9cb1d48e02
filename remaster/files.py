"""Atomic file writes and small filesystem helpers.

Nothing the pipeline writes may exist half-written: every output goes to a temporary name in
the same folder and is renamed over the target only once it is complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success, flush it to disk and rename it over
    ``target``; on failure, remove it.

    The name ``.<target>.tmp-<pid>-<random>`` is created with the process umask (mkstemp's 0600
    would survive the rename), so a writer that picks the format from the suffix (ffmpeg,
    Pillow) must be told the format explicitly.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_text(target: str | Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(target: str | Path, data: Any) -> None:
    write_text(target, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def display_path(path: Path) -> str:
    """A path as text that survives CSV/JSON, even when the name is not valid UTF-8."""
    return os.fsencode(path).decode("utf-8", errors="backslashreplace")
