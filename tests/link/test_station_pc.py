"""A station PC (role "station") has no database and no accounts: commands that would need
them say where to run them instead, and leave no database file behind; the services refuse
to start before the station is enrolled."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_cli


@pytest.fixture
def station_pc(tmp_path: Path) -> dict[str, str]:
    cfg = tmp_path / "station.toml"
    cfg.write_text(
        f'role = "station"\nstation_id = "line7"\nvar_dir = "{tmp_path / "var"}"\n'
        "[stations.line7]\nsockets = 2\n"
    )
    return {"PROVISIONER_CONFIG": str(cfg), "PATH": "/usr/bin:/bin"}


@pytest.mark.parametrize(
    "args",
    [
        ("batch", "list"),
        ("station", "status"),
        ("audit", "verify"),
        ("users", "list"),
        ("db", "upgrade"),
    ],
)
def test_commands_that_need_the_database_point_to_the_line_server(
    station_pc: dict[str, str], tmp_path: Path, args: tuple[str, ...]
) -> None:
    proc = run_cli(*args, env=station_pc)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: this PC is a station") and "line server" in proc.stderr
    assert not list(tmp_path.rglob("*.db"))


def test_services_refuse_to_start_before_enrollment(
    station_pc: dict[str, str], tmp_path: Path
) -> None:
    proc = run_cli("services", "run", env=station_pc)
    assert proc.returncode == 2
    assert "station line7 is not enrolled" in proc.stderr
    assert "station add line7" in proc.stderr and "station enroll" in proc.stderr
    assert not list(tmp_path.rglob("*.db"))
    status = run_cli("services", "status", env=station_pc)
    assert status.returncode == 0 and "services not running" in status.stdout
