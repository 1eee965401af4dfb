"""Batches: what an operator creates, starts, pauses, retries, closes and watches.

:mod:`~provisioner.batches.lifecycle` holds the transitions (each one checked against the
batch's state, written with its audit event in one transaction, nothing written when it is
refused); :mod:`~provisioner.batches.views` the summaries and device pages, computed in the
database so they stay fast on a 100,000-device batch.
"""

from provisioner.batches.lifecycle import (
    MAX_BATCH,
    Transition,
    cancel,
    close,
    create_batch,
    get_batch,
    mark_started,
    pause,
    resume,
    retry,
    set_quota,
    start,
    validate_request,
)
from provisioner.batches.views import (
    BatchReport,
    DeviceQuery,
    DeviceRow,
    FailureGroup,
    device_page,
    list_batches,
    report,
    summary,
)

__all__ = [
    "MAX_BATCH",
    "BatchReport",
    "DeviceQuery",
    "DeviceRow",
    "FailureGroup",
    "Transition",
    "cancel",
    "close",
    "create_batch",
    "device_page",
    "get_batch",
    "list_batches",
    "mark_started",
    "pause",
    "report",
    "resume",
    "retry",
    "set_quota",
    "start",
    "summary",
    "validate_request",
]
