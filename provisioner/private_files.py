"""Private files: everything the product writes is readable by its own OS user only, and a
private file someone opened up is refused at start with the command that closes it again.

Why: the database holds users, roles, token hashes and the whole audit trail, the logs
what every device went through, the PIN files the keys to the token. A local user who can
read them bypasses the roles (an auditor's read without being an auditor) or signs with the
CA. Two halves:

- :func:`private_umask` (umask 077) at the top of every entry point, so every directory is
  created 0700 and every file 0600 whoever creates it (SQLite's -wal/-shm/-journal, log
  files, the CA's files, a library's own files): children inherit it.
- :func:`check_start` / :func:`check_database` / :func:`check_pin_file` before a start or
  a command opens one of them: a file or directory with any group or other bit is refused
  with a :class:`~provisioner.errors.ConfigError` that names it, its mode and the ``chmod``
  that fixes it (one line). Only what exists is checked; PostgreSQL has no file.
"""

from __future__ import annotations

import os
import shlex
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from provisioner.errors import ConfigError
from provisioner.settings import Settings

PRIVATE_UMASK = 0o077
_OPEN_BITS = 0o077  # any permission for the group or for others
_SQLITE_PREFIX = "sqlite:///"
_SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def private_umask() -> None:
    """Set this process's umask to 077 (inherited by every child it starts)."""
    os.umask(PRIVATE_UMASK)


@dataclass(frozen=True)
class OpenFile:
    """A private file or directory that the group or others may access."""

    path: Path
    what: str  # "database", "log file", "PIN file" ... for the message
    mode: int
    is_dir: bool

    @property
    def fix(self) -> str:
        return f"chmod {'700' if self.is_dir else '600'} {shlex.quote(str(self.path))}"


def open_to_others(path: Path, what: str) -> OpenFile | None:
    """``path`` if it exists with a group or other permission bit, else None. A path
    that cannot be examined is left to whoever opens it (its error is clearer)."""
    try:
        st = path.stat()
    except OSError:
        return None
    mode = stat.S_IMODE(st.st_mode)
    if not mode & _OPEN_BITS:
        return None
    return OpenFile(path, what, mode, stat.S_ISDIR(st.st_mode))


def refuse(found: list[OpenFile], var: Path | None = None) -> None:
    """Raise one ConfigError for what :func:`open_to_others` found (nothing: return).

    One file: its own ``chmod``. Several: ``chmod -R go=`` on the var dir for those under
    it (plus the ``chmod`` of each one outside it)."""
    if not found:
        return
    first = found[0]
    kind = "directory" if first.is_dir else "file"
    head = (
        f"{first.what} {first.path} is mode {first.mode:04o}: other users can read it "
        f"(a private {kind} must be {'0700' if first.is_dir else '0600'})"
    )
    if len(found) == 1:
        raise ConfigError(f"{head}; fix: `{first.fix}`")
    inside = [f for f in found if var is not None and f.path.is_relative_to(var)]
    fixes = [f"chmod -R go= {shlex.quote(str(var))}"] if inside else []
    fixes += [f.fix for f in found if f not in inside]
    raise ConfigError(
        f"{head}, and {len(found) - 1} more private files are open to other users; "
        f"fix: `{' && '.join(fixes)}`"
    )


def sqlite_files(url: str) -> list[Path]:
    """The files of a SQLite database URL (the database, its WAL, shared memory and
    rollback journal); none for any other database."""
    if not url.startswith(_SQLITE_PREFIX):
        return []
    db = Path(url.removeprefix(_SQLITE_PREFIX))
    return [db, *(db.with_name(db.name + side) for side in _SQLITE_SIDE_FILES)]


def check_database(url: str, var: Path | None = None) -> None:
    """Refuse a SQLite database (or its side files) the group or others can access."""
    refuse([f for p in sqlite_files(url) if (f := open_to_others(p, "database"))], var)


def check_pin_file(path: Path) -> None:
    """Refuse a PIN file the group or others can access (before it is read)."""
    refuse([f for f in [open_to_others(path, "PIN file")] if f])


def _tree(root: Path, what: str) -> Iterator[tuple[Path, str]]:
    """``root`` and everything under it (a missing root: nothing)."""
    if not root.is_dir():
        return
    yield root, f"{what} directory"
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            yield Path(dirpath) / name, f"{what} directory"
        for name in filenames:
            yield Path(dirpath) / name, f"{what} file"


def start_paths(settings: Settings) -> Iterator[tuple[Path, str]]:
    """What a start checks: the databases, the PIN files and the upload token wherever they
    are, and under the var dir the log, PIN, token, identity and broker directories with
    everything in them. Directories configured outside the var dir are the deployment's
    (a system SoftHSM token dir may rightly be shared with a group): not walked."""
    var = settings.var
    for url in (settings.db_url, settings.registry_db_url):
        for path in sqlite_files(url):
            yield path, "database"
    pins = [settings.pin_file, settings.root_pin_file]
    if settings.pin_source.startswith("file:"):
        from hsm.pins import PinSource

        source = PinSource.parse(settings.pin_source).path
        if source is not None:
            pins.append(source.resolve())
    for pin in pins:
        yield pin, "PIN file"
    yield settings.registry_token_file, "registry token file"
    for root, what in (
        (var / "log", "log"),
        (settings.pin_file.parent, "PIN"),
        (settings.token_dir, "token"),
        (settings.registry_token_file.parent, "registry token"),
        (settings.line_identity_dir, "identity"),
        (settings.station_identity_dir, "identity"),
        (settings.broker_dir, "broker"),
    ):
        if root.is_relative_to(var):
            yield from _tree(root, what)


def find_open(paths: Iterable[tuple[Path, str]]) -> list[OpenFile]:
    """Each path (once) that the group or others can access."""
    seen: set[Path] = set()
    found = []
    for path, what in paths:
        if path in seen:
            continue
        seen.add(path)
        if (f := open_to_others(path, what)) is not None:
            found.append(f)
    return found


def check_start(settings: Settings) -> None:
    """Refuse to start services while a private file or directory is open to others."""
    refuse(find_open(start_paths(settings)), settings.var)


def check_token_file(path: Path) -> None:
    """Refuse a user token file the group or others can access (before it is read)."""
    refuse([f for f in [open_to_others(path, "token file")] if f])


def write_private(path: Path, data: bytes) -> None:
    """Atomically, 0600 from the first byte (a key is never briefly readable)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
