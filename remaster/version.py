"""The code version recorded in outputs.

It is the package version plus a hash of the source files that shaped the output, not the git
commit: an unrelated commit must not change a packed file's bytes, or DVC would retrain on it.
"""

from __future__ import annotations

import hashlib
from importlib import metadata
from pathlib import Path


def code_version(*modules: str) -> str:
    """``0.1.0+1a2b3c4d``: the version and a hash of the named modules' source files."""
    try:
        version = metadata.version("remaster")
    except metadata.PackageNotFoundError:
        version = "0+unknown"
    if not modules:
        return version
    h = hashlib.sha256()
    root = Path(__file__).resolve().parents[1]
    for name in sorted(modules):
        h.update((root / (name.replace(".", "/") + ".py")).read_bytes())
    return f"{version}+{h.hexdigest()[:8]}"
