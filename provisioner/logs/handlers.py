"""The file handler every process writes its JSON lines with.

Several processes append to the same file (a Celery worker and its pool children), and
only the supervisor rotates it (:mod:`provisioner.logs.rotate`), so a handler must:

- follow a rename: :class:`logging.handlers.WatchedFileHandler` compares the path's inode
  with its open file before each record and reopens when the rotator renamed it;
- never tear a line: each record goes out in ONE ``write(2)`` on an ``O_APPEND``
  descriptor, so lines of different processes never interleave inside each other (a
  buffered text stream would split a long traceback into several writes);
- never rotate on its own (RotatingFileHandler in N processes renames N times).
"""

from __future__ import annotations

import logging
import logging.handlers
import os
from pathlib import Path


class AppendHandler(logging.handlers.WatchedFileHandler):
    """A :class:`~logging.handlers.WatchedFileHandler` writing each record whole."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        super().__init__(str(path), mode="a", encoding="utf-8")

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.reopenIfNeeded()
            if self.stream is None:
                self.stream = self._open()
            data = (self.format(record) + "\n").encode("utf-8", errors="replace")
            fd = self.stream.fileno()
            while data:
                n = os.write(fd, data)
                data = data[n:]
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)
