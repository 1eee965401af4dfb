"""Structured logs: one JSON object per line in ``<var>/log/<name>.log`` for every
long-running process, a human format for the terminal, rotation by the supervisor alone.

- :mod:`.context`: the device being worked on (batch, device, chip serial, station,
  socket) as context variables, so every line logged meanwhile carries them as fields;
- :mod:`.redact`: what must never reach a log (PEM blocks, long hex/base64 runs, user and
  enrollment tokens, the PINs this process read);
- :mod:`.formats`: the JSON line and the human line built from the same fields;
- :mod:`.setup`: :func:`configure` for a process (API, registry, Celery workers) and
  :func:`attach` for named loggers in a process that is not ours alone (the supervisor);
- :mod:`.rotate`: the one rotator (rename for ``.log``, copy-truncate for ``.out``);
- :mod:`.access`: the HTTP access log middleware (:class:`~.access.AccessLogMiddleware`);
- :mod:`.reader`: reading the files back for ``provisioner logs show``.
"""

from provisioner.logs.context import bind, current_fields, log_context
from provisioner.logs.redact import redact, register_secret
from provisioner.logs.setup import PROCESS_ENV, configure, process_name

__all__ = [
    "PROCESS_ENV",
    "bind",
    "configure",
    "current_fields",
    "log_context",
    "process_name",
    "redact",
    "register_secret",
]
