"""``provisioner logs show``: reading, merging and filtering the services' JSON logs."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from tests.conftest import Station, make_station, run_cli


def _entry(ts: int, process: str, msg: str, level: str = "info", **fields: Any) -> str:
    return json.dumps(
        {
            "ts": f"2026-12-01T10:00:{ts:02d}.000Z",
            "level": level,
            "logger": "provisioner.test",
            "msg": msg,
            "process": process,
            "pid": 100 + ts,
            **fields,
        }
    )


def _write(path: Path, *lines: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.writelines(line + "\n" for line in lines)


def _station(tmp_path: Path) -> tuple[Station, Path]:
    st = make_station(tmp_path / "station")
    log_dir = st.settings.var / "log"
    _write(
        log_dir / "worker-station-line1.log.1",
        _entry(1, "worker-station-line1", "old device 3 line", batch=1, device=3),
    )
    _write(
        log_dir / "worker-station-line1.log",
        _entry(3, "worker-station-line1", "device 3: done", batch=1, device=3, station="line1"),
        _entry(5, "worker-station-line1", "device 4 failed", "warning", batch=2, device=4),
    )
    _write(
        log_dir / "worker-hsm.log",
        _entry(2, "worker-hsm", "signed device 3", device=3, batch=1),
        _entry(4, "worker-hsm", "breaker open", "error"),
    )
    return st, log_dir


def _show(st: Station, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("logs", "show", *args, env=st.env())


def test_lines_of_every_process_merged_by_time_in_the_human_format(tmp_path: Path) -> None:
    st, _ = _station(tmp_path)
    out = _show(st)
    assert out.returncode == 0, out.stderr
    msgs = [line.split(": ", 1)[1].split("  ")[0] for line in out.stdout.splitlines()]
    assert msgs == [
        "old device 3 line",
        "signed device 3",
        "device 3: done",
        "breaker open",
        "device 4 failed",
    ]
    assert out.stdout.splitlines()[2].startswith(
        "2026-12-01T10:00:03.000Z info    worker-station-line1[103] provisioner.test: "
        "device 3: done  batch=1 device=3 station=line1"
    )


def test_filters_names_lines_and_json(tmp_path: Path) -> None:
    st, _ = _station(tmp_path)

    def msgs(*args: str) -> list[str]:
        out = _show(st, "--json", *args)
        assert out.returncode == 0, out.stderr
        return [json.loads(line)["msg"] for line in out.stdout.splitlines()]

    assert msgs("--device", "3") == ["old device 3 line", "signed device 3", "device 3: done"]
    assert msgs("--batch", "2") == ["device 4 failed"]
    assert msgs("--station", "line1") == ["device 3: done"]
    assert msgs("--level", "warning") == ["breaker open", "device 4 failed"]
    assert msgs("worker-hsm") == ["signed device 3", "breaker open"]
    assert msgs("--lines", "2") == ["breaker open", "device 4 failed"]
    assert msgs("worker-station-line1", "-n", "3") == [
        "old device 3 line",  # from the rotated file: the current one has only two
        "device 3: done",
        "device 4 failed",
    ]


def test_an_unknown_name_or_level_is_refused(tmp_path: Path) -> None:
    st, _ = _station(tmp_path)
    out = _show(st, "worker-nope")
    assert out.returncode != 0
    assert "no log for worker-nope" in out.stderr and "worker-hsm" in out.stderr
    assert _show(st, "--level", "loud").returncode != 0


def test_follow_shows_new_lines_across_a_rotation(tmp_path: Path) -> None:
    st, log_dir = _station(tmp_path)
    live = log_dir / "worker-hsm.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "provisioner.cli.main", "logs", "show", "-f", "-n", "1"],
        env=st.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    out = proc.stdout
    threading.Thread(target=lambda: [lines.put(x) for x in out], daemon=True).start()

    def msg() -> str:
        return lines.get(timeout=60).split(": ", 1)[1].split("  ")[0].strip()

    try:
        assert msg() == "device 4 failed"  # the last line so far: it follows from here on
        _write(live, _entry(10, "worker-hsm", "before the rotation"))
        os.replace(live, log_dir / "worker-hsm.log.1")
        _write(live, _entry(11, "worker-hsm", "after the rotation"))
        assert [msg(), msg()] == ["before the rotation", "after the rotation"]
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(10)
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
