"""The supervisor's side of the logs: its own JSON file and terminal lines, the rotation
thread, and what it shows when a child dies."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest

from provisioner.settings import Settings
from provisioner.supervisor import Supervisor, _detach_logs, _log_to, _tail


def test_its_messages_go_to_its_file_as_json_and_warnings_to_the_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "log" / "supervisor.log"
    _log_to(path)
    try:
        logging.getLogger("provisioner.supervisor").info("started 3 services")
        logging.getLogger("provisioner.health").warning("the signer does not answer")
        logging.getLogger("provisioner.other").warning("not the supervisor's")
    finally:
        _detach_logs()
    logging.getLogger("provisioner.supervisor").warning("after the detach")
    entries = [json.loads(x) for x in path.read_text().splitlines()]
    assert [(e["level"], e["logger"], e["msg"]) for e in entries] == [
        ("info", "provisioner.supervisor", "started 3 services"),
        ("warning", "provisioner.health", "the signer does not answer"),
    ]
    assert {e["process"] for e in entries} == {"supervisor"}
    assert "warning: the signer does not answer\n" in capsys.readouterr().err
    assert logging.getLogger("provisioner.supervisor").propagate


def test_the_rotation_thread_rotates_the_log_directory(tmp_path: Path) -> None:
    settings = Settings(var_dir=tmp_path / "var", logging={"max_bytes": 10_000, "backups": 2})
    log_dir = settings.var / "log"
    log_dir.mkdir(parents=True)
    (log_dir / "api.log").write_text('{"msg": "x"}\n' * 2000)
    (log_dir / "api.out").write_text("banner\n" * 2000)
    (log_dir / "registry.log").write_text('{"msg": "small"}\n')
    sup = Supervisor(settings, log_rotate_interval_s=0.05)
    sup.start_monitor(health=False)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (log_dir / "api.out.1").exists():
            time.sleep(0.05)
    finally:
        sup.stop()
    assert not (log_dir / "api.log").exists() and (log_dir / "api.log.1").is_file()
    assert (log_dir / "api.out").read_text() == ""
    assert (log_dir / "api.out.1").read_text() == "banner\n" * 2000
    assert not (log_dir / "registry.log.1").exists()


def test_a_dead_childs_tail_is_its_raw_output_else_its_last_messages(tmp_path: Path) -> None:
    log = tmp_path / "api.log"
    log.write_text(
        "\n".join(
            json.dumps({"level": lvl, "msg": m})
            for lvl, m in (("info", "one"), ("info", "two"), ("error", "cannot bind"))
        )
        + "\n"
    )
    assert _tail(log, 2) == "info: two | error: cannot bind"
    (tmp_path / "api.out").write_text("Traceback\nImportError: no module x\n")
    assert _tail(log) == "Traceback | ImportError: no module x"
    assert _tail(tmp_path / "missing.log") == ""
