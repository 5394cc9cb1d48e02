"""Prefect flows over the stage functions, and the ``remaster`` command line.

Prefect reads its settings when it is first imported, so the embedded defaults are set here,
before any flow module imports it: a project-local ``PREFECT_HOME``, analytics off, and an
ephemeral-server start-up timeout long enough for a loaded 2-core machine. Anything already
in the environment (``PREFECT_API_URL`` for a real server, say) wins.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("PREFECT_HOME", str(Path.cwd() / ".prefect"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
