"""Rotation by one rotator while several processes write the same file."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

from provisioner.logs.rotate import copy_truncate, rotate_dir, rotate_file
from provisioner.logs.setup import file_handler

LINES = 2500

_WRITER = """
import logging, sys, time
from pathlib import Path
from provisioner.logs.setup import file_handler
path, who, n, stop = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
log = logging.getLogger("writer")
log.addHandler(file_handler(path, who))
log.setLevel(logging.INFO)
log.propagate = False
big = "word " * 2500  # a 12 kB line: more than one buffer of a text stream
i = 0
# at least n lines, and on until the rotator has rotated enough times while we write
# (on a loaded machine the rotator may be starved for a while)
while i < n or (not stop.exists() and i < 200 * n):
    log.info("%s %d %s", who, i, big if i % 97 == 0 else "x" * (i % 50))
    i += 1
    if i % 10 == 0:
        time.sleep(0.002)  # spread the writing over the rotations
print(i)
"""


def _writer(path: Path, who: str, stop: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path), who, str(LINES), str(stop)],
        stdout=subprocess.PIPE,
        text=True,
    )


def test_no_line_is_lost_or_torn_while_the_rotator_renames(tmp_path: Path) -> None:
    path = tmp_path / "worker.log"
    path.touch()
    stop = tmp_path / "stop"
    writers = [_writer(path, "a", stop), _writer(path, "b", stop)]
    rotations = 0
    while any(w.poll() is None for w in writers):
        rotations += rotate_file(path, max_bytes=50_000, backups=10_000)
        if rotations >= 5:
            stop.touch()
        time.sleep(0.002)
    counts = {who: int(w.communicate()[0]) for who, w in zip("ab", writers, strict=True)}
    assert [w.returncode for w in writers] == [0, 0]
    rotations += rotate_file(path, max_bytes=0, backups=10_000)
    assert not path.exists()  # everything is in the rotated files now
    # oldest first: worker.log.N ... worker.log.1
    files = sorted(tmp_path.glob("worker.log.*"), key=lambda p: -int(p.suffix[1:]))
    assert rotations >= 5, "the test must rotate while both write, or it proves nothing"
    assert len(files) == rotations
    seen: dict[str, list[int]] = {"a": [], "b": []}
    files_with_lines = 0
    for f in files:
        lines = f.read_text().splitlines()
        files_with_lines += bool(lines)
        for line in lines:
            entry = json.loads(line)  # a torn line would not parse
            who, seq, *_ = entry["msg"].split(" ", 2)
            assert entry["process"] == who
            seen[who].append(int(seq))
    for who, seqs in seen.items():
        assert counts[who] >= LINES
        assert sorted(seqs) == list(range(counts[who])), f"{who}: lost or doubled lines"
        assert seqs == sorted(seqs), f"{who}: a writer went back to an older file"
    assert files_with_lines >= 5


def test_backups_beyond_the_setting_are_dropped(tmp_path: Path) -> None:
    path = tmp_path / "api.log"
    for i in range(5):
        path.write_text(f"generation {i}\n")
        assert rotate_file(path, max_bytes=5, backups=3)
    assert not path.exists()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["api.log.1", "api.log.2", "api.log.3"]
    assert (tmp_path / "api.log.1").read_text() == "generation 4\n"
    assert (tmp_path / "api.log.3").read_text() == "generation 2\n"
    path.write_text("small\n")
    assert not rotate_file(path, max_bytes=1000, backups=3)


def test_raw_output_is_copied_and_truncated_in_place(tmp_path: Path) -> None:
    """A child's ``.out`` stays open in the child (O_APPEND): after the copy-truncate its
    next write lands at the start of the same, now empty, file."""
    out = tmp_path / "worker-hsm.out"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        os.write(fd, b"celery banner\n" * 100)
        assert rotate_dir(tmp_path, max_bytes=100, backups=2) == [out]
        os.write(fd, b"after\n")
    finally:
        os.close(fd)
    assert (tmp_path / "worker-hsm.out.1").read_bytes() == b"celery banner\n" * 100
    assert out.read_bytes() == b"after\n"
    assert not copy_truncate(out, max_bytes=100, backups=2)


def _log_in_child(path: str) -> None:
    logger = logging.getLogger("tests.logs.forked")
    logger.info("from the child")


def test_a_forked_child_logs_with_its_own_pid(tmp_path: Path) -> None:
    """Celery's pool children inherit the parent's handler across fork."""
    path = tmp_path / "worker-station-line1.log"
    logger = logging.getLogger("tests.logs.forked")
    handler = file_handler(path, "worker-station-line1")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        logger.info("from the parent")
        child = multiprocessing.get_context("fork").Process(target=_log_in_child, args=(path,))
        child.start()
        child.join(30)
        assert child.exitcode == 0
    finally:
        logger.removeHandler(handler)
        handler.close()
    parent, forked = (json.loads(x) for x in path.read_text().splitlines())
    assert parent["pid"] == os.getpid()
    assert forked["pid"] == child.pid and forked["pid"] != os.getpid()
    assert forked["process"] == "worker-station-line1"
