"""Reading this process's metrics (tests run without a metrics directory, so the
instrumented code counts in the test process itself)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from prometheus_client import REGISTRY


def value(name: str, **labels: str) -> float:
    """A sample's current value in this process (0 when it was never written)."""
    got = REGISTRY.get_sample_value(name, labels)
    return 0.0 if got is None else got


def write_samples(directory: Path, code: str, **env: str) -> None:
    """Run ``code`` in a new Python process that writes its metrics into ``directory``
    (prometheus_client's multiprocess mode), as a worker child of the supervisor does."""
    full = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory), **env}
    subprocess.run([sys.executable, "-c", code], env=full, check=True, timeout=60)
