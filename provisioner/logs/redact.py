"""What must never reach a log line, removed from every string a formatter writes.

The first defence is at the source (no certificate in a task's logged result, no PIN in
a message); this pass catches what slips through anyway: a traceback that shows a local
value, a library's debug line, an exception quoting the request it failed on.

- PEM blocks (certificates, keys, CSRs), also cut short;
- runs of 128 or more hex/base64 characters (a DER certificate is ~1 kB of hex) and long
  Python ``b'...'`` literals: key material and certificate bodies, whatever the encoding;
- user and enrollment tokens (``prv_...``, ``enr_...``);
- secrets this process registered (:func:`register_secret`): the PINs it read from their
  files, the registry tokens it holds.

Stdlib only: the HSM layer imports :func:`register_secret` where it reads a PIN.
"""

from __future__ import annotations

import re
import threading

MIN_SECRET_LEN = 4  # shorter values would blank ordinary words and numbers

_PEM = re.compile(r"-----BEGIN [A-Z0-9 ]+-----(?:.*?-----END [A-Z0-9 ]+-----|.*\Z)", re.DOTALL)
_TOKEN = re.compile(r"\b(?:prv|enr)_[A-Za-z0-9_\-]{8,}")
_BYTES = re.compile(r"""b(['"])(?:\\.|(?!\1).){128,}?\1""", re.DOTALL)
_RUN = re.compile(r"[A-Za-z0-9+/_\-]{128,}={0,2}")


class _Secrets:
    """The values registered in this process (a set that only grows: registering a
    value twice, or in a test, changes nothing for anyone else)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: frozenset[str] = frozenset()
        self._pattern: re.Pattern[str] | None = None

    def add(self, value: str) -> None:
        value = value.strip()
        if len(value) < MIN_SECRET_LEN or value in self._values:
            return
        with self._lock:
            self._values = self._values | {value}
            longest_first = sorted(self._values, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(v) for v in longest_first))

    def sub(self, text: str) -> str:
        pattern = self._pattern
        return text if pattern is None else pattern.sub("[redacted secret]", text)


_SECRETS = _Secrets()


def register_secret(value: str | bytes | None) -> None:
    """Never write ``value`` in this process's logs (a PIN just read, a token held)."""
    if value is None:
        return
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    _SECRETS.add(value)


def redact(text: str) -> str:
    """``text`` without secrets, certificate bodies or key material."""
    text = _SECRETS.sub(text)
    if "-----BEGIN" in text:
        text = _PEM.sub("[redacted PEM]", text)
    text = _TOKEN.sub("[redacted token]", text)
    if len(text) >= 128:
        text = _BYTES.sub(lambda m: f"[redacted {len(m.group(0))} chars]", text)
        text = _RUN.sub(lambda m: f"[redacted {len(m.group(0))} chars]", text)
    return text
