"""One scrape: every process's samples (and the database's, where there is one) in the
Prometheus text format.

A fresh registry per scrape, as prometheus_client's multiprocess mode requires: the files
in the metrics directory are read and summed each time, so a worker child that started
since the last scrape is included without any registration. Without a metrics directory
(tests, a process started by hand) the process's own metrics are served instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy.engine import Engine

from provisioner.metrics.database import DatabaseCollector
from provisioner.metrics.multiproc import ENV
from provisioner.settings import Settings

# The classic text format, which every Prometheus since 2.0 reads (prometheus_client's
# CONTENT_TYPE_LATEST names version 1.0.0, which Debian's Prometheus 2.42 does not know).
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4


class _ThisProcess(Collector):
    """The default registry (this process's own metrics), on a per-scrape registry."""

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


def source_directory(settings: Settings) -> Path | None:
    """Where this process reads the line's samples from: the directory its environment
    names (a child of the supervisor), or None (its own metrics only)."""
    if not settings.metrics.enabled:
        return None
    value = os.environ.get(ENV)
    return Path(value) if value else None


def render(
    settings: Settings, engine: Engine | None, *, directory: Path | None = None
) -> tuple[bytes, str]:
    """The scrape's body and content type. ``directory``: the metrics directory to sum
    (default: :func:`source_directory`); ``engine``: the line's database (None on a
    station PC, which has none)."""
    path = directory if directory is not None else source_directory(settings)
    registry = CollectorRegistry()
    if path is not None and path.is_dir():
        MultiProcessCollector(registry, path=str(path))  # type: ignore[no-untyped-call]
    else:
        registry.register(_ThisProcess())
    if engine is not None:
        registry.register(DatabaseCollector(engine))
    return generate_latest(registry), CONTENT_TYPE
