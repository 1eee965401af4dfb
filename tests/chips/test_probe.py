"""`provisioner station probe` reports each socket through the library, changing nothing."""

from __future__ import annotations

import json
import subprocess
import sys

from provisioner.chips.connector import Connector
from tests.conftest import Station


def test_probe_reports_empty_blank_and_provisioned(station: Station) -> None:
    connector = Connector(station.settings)
    jig = connector.jig("line1")
    jig.insert_blank(1)
    done = jig.insert_blank(2)
    with connector.open("emulated:line1/2") as chip:
        chip.ensure_configured()
        chip.generate_key()
        chip.lock_data_zone()
    before = done.read_bytes()
    proc = subprocess.run(
        [sys.executable, "-m", "provisioner.cli.main", "station", "probe", "--json"],
        env=station.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    rows = {r["socket"]: r for r in json.loads(proc.stdout)}
    assert set(rows) == {0, 1, 2, 3}
    assert rows[0]["present"] is False and rows[3]["present"] is False
    blank, provisioned = rows[1], rows[2]
    assert blank["present"] and blank["config_locked"] is False and blank["key_valid"] is False
    assert blank["revision"] == "00006002" and blank["serial"].startswith("0123")
    assert provisioned["config_locked"] and provisioned["data_locked"]
    assert provisioned["key_valid"] is True
    assert done.read_bytes() == before  # probing changed nothing on the chip
