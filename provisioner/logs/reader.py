"""Reading ``<var>/log`` back: the entries of some processes, filtered, newest last.

Used by ``provisioner logs show``. A line that is not JSON (a file written by an older
version, or cut by a full disk) is kept as ``{"msg": line}`` so nothing is hidden.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provisioner.errors import NotFoundError

Entry = dict[str, Any]


@dataclass(frozen=True)
class Filter:
    """Which entries to show: each field given must match (levels: that one and above)."""

    device: str | None = None
    batch: str | None = None
    station: str | None = None
    level: str | None = None

    def __call__(self, e: Entry) -> bool:
        for key in ("device", "batch", "station"):
            want = getattr(self, key)
            if want is not None and str(e.get(key)) != want:
                return False
        if self.level is not None:
            have = logging.getLevelNamesMapping().get(str(e.get("level", "")).upper(), 0)
            if have < logging.getLevelNamesMapping()[self.level.upper()]:
                return False
        return True


def parse(line: str) -> Entry:
    try:
        entry = json.loads(line)
    except ValueError:
        return {"msg": line}
    return entry if isinstance(entry, dict) else {"msg": line}


def names(log_dir: Path) -> list[str]:
    """The processes with a log file, by name."""
    return sorted(p.name.removesuffix(".log") for p in log_dir.glob("*.log"))


def files_of(log_dir: Path, name: str) -> list[Path]:
    """``name.log`` and its rotated files, newest first."""
    out = [log_dir / f"{name}.log"]
    i = 1
    while (rotated := log_dir / f"{name}.log.{i}").exists():
        out.append(rotated)
        i += 1
    return [p for p in out if p.exists()]


def check_names(log_dir: Path, wanted: list[str]) -> list[str]:
    have = names(log_dir)
    if not wanted:
        return have
    missing = [n for n in wanted if n not in have]
    if missing:
        raise NotFoundError(
            f"no log for {', '.join(missing)} in {log_dir} (there are: {', '.join(have) or 'none'})"
        )
    return wanted


def last(log_dir: Path, wanted: list[str], n: int, keep: Callable[[Entry], bool]) -> list[Entry]:
    """The last ``n`` matching entries of the processes ``wanted``, by time; reads the
    rotated files only as far as needed."""
    found: list[Entry] = []
    for name in wanted:
        mine: list[Entry] = []  # oldest first
        for path in files_of(log_dir, name):  # newest first
            mine = [e for e in map(parse, _lines(path)) if keep(e)] + mine
            if len(mine) >= n:
                break
        found.extend(mine[-n:] if n else [])
    found.sort(key=lambda e: str(e.get("ts", "")))
    return found[-n:] if n else []


def _lines(path: Path) -> list[str]:
    try:
        return [x for x in path.read_text(encoding="utf-8", errors="replace").splitlines() if x]
    except FileNotFoundError:  # rotated away meanwhile
        return []


def positions(log_dir: Path, wanted: list[str]) -> dict[str, tuple[int, int]]:
    """Where each file ends now (inode, size): :func:`follow` starts there. Taken before
    the last lines are read, so a line written in between is shown (twice at worst)
    rather than missed."""
    pos: dict[str, tuple[int, int]] = {}
    for name in wanted:
        with suppress(FileNotFoundError):
            st = (log_dir / f"{name}.log").stat()
            pos[name] = (st.st_ino, st.st_size)
    return pos


def follow(
    log_dir: Path,
    wanted: list[str],
    keep: Callable[[Entry], bool],
    start: dict[str, tuple[int, int]] | None = None,
    poll_s: float = 0.5,
) -> Iterator[Entry]:
    """New matching entries as they are written, from ``start`` (default: now), across
    rotations: after a rename the rest of the renamed file, then the new one from its
    start. Endless: the caller stops iterating."""
    pos = dict(start) if start is not None else positions(log_dir, wanted)
    while True:
        batch: list[Entry] = []
        for name in wanted:
            batch.extend(e for e in _read_new(log_dir / f"{name}.log", name, pos) if keep(e))
        batch.sort(key=lambda e: str(e.get("ts", "")))
        yield from batch
        if not batch:
            time.sleep(poll_s)


def _read_new(path: Path, name: str, pos: dict[str, tuple[int, int]]) -> list[Entry]:
    """What was appended to ``path`` since the last call; after a rotation, first the rest
    of the renamed file (``.1``), then the new one from its start."""
    out: list[Entry] = []
    inode, offset = pos.get(name, (-1, 0))
    try:
        st = path.stat()
    except FileNotFoundError:
        return out
    if inode not in (-1, st.st_ino):
        renamed = path.with_name(path.name + ".1")
        with suppress(FileNotFoundError):
            if renamed.stat().st_ino == inode:
                out += _read_from(renamed, offset)[0]
        offset = 0
    elif st.st_size < offset:
        offset = 0  # truncated
    entries, offset = _read_from(path, offset)
    pos[name] = (st.st_ino, offset)
    return out + entries


def _read_from(path: Path, offset: int) -> tuple[list[Entry], int]:
    """The complete lines of ``path`` after ``offset``, and the offset after them (a line
    still being written waits for the next call)."""
    try:
        with path.open("rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    complete = data[: data.rfind(b"\n") + 1]
    text = complete.decode("utf-8", errors="replace")
    return [parse(x) for x in text.splitlines() if x], offset + len(complete)
