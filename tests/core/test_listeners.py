"""Ports and URLs (one setting per listener, URLs derived), the supervisor's instance lock
and its status file: no process started, real sockets and real flocks."""

from __future__ import annotations

import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner.errors import ConflictError, ServiceUnavailableError
from provisioner.listeners import plan_ports
from provisioner.settings import Settings
from provisioner.supervisor_lock import InstanceLock, running_holder
from provisioner.supervisor_status import ComponentStatus, read_status, write_status
from tests.conftest import free_port


@pytest.fixture
def squatter() -> Iterator[socket.socket]:
    """A port somebody else holds."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    yield s
    s.close()


def test_urls_derive_from_the_listen_ports(tmp_path: Path) -> None:
    s = Settings(
        var_dir=tmp_path,
        registry={"listen_port": 9123},  # type: ignore[arg-type]
        api={"listen_port": 9124, "listen_host": "0.0.0.0"},  # type: ignore[arg-type]
    )
    assert s.registry_url == "http://127.0.0.1:9123"
    assert s.api_url == "http://127.0.0.1:9124"  # a wildcard listener is reached locally
    assert s.api.crl_url("ca-2") == "http://127.0.0.1:9124/crl/ca-2.crl"
    pinned = Settings(var_dir=tmp_path, registry={"url": "https://r.example", "listen_port": 1})  # type: ignore[arg-type]
    assert pinned.registry_url == "https://r.example"


def test_a_taken_port_names_its_setting(tmp_path: Path, squatter: socket.socket) -> None:
    port = squatter.getsockname()[1]
    s = Settings(var_dir=tmp_path, registry={"listen_port": port})  # type: ignore[arg-type]
    with pytest.raises(ServiceUnavailableError) as exc:
        plan_ports(s, move_taken=False)
    msg = str(exc.value)
    assert "\n" not in msg and f"port {port}" in msg and "registry.listen_port" in msg


def test_the_demo_moves_a_taken_port_and_says_so(tmp_path: Path, squatter: socket.socket) -> None:
    port = squatter.getsockname()[1]
    # The API on a port known to be free: the default 8712 may be in use on this machine.
    api = {"listen_port": free_port()}
    s = Settings(var_dir=tmp_path, registry={"listen_port": port}, api=api)  # type: ignore[arg-type]
    plan = plan_ports(s, move_taken=True)
    new = plan.settings.registry.listen_port
    assert new != port and plan.env == {"PROVISIONER_REGISTRY__LISTEN_PORT": str(new)}
    assert plan.notes == [f"port {port} in use: registry on {new}"]
    assert plan.settings.registry_url == f"http://127.0.0.1:{new}"  # uploads follow the move
    # A URL set explicitly would not follow a move: refused instead of breaking uploads.
    pinned = Settings(
        var_dir=tmp_path,
        registry={"listen_port": port, "url": f"http://127.0.0.1:{port}"},  # type: ignore[arg-type]
        api=api,  # type: ignore[arg-type]
    )
    with pytest.raises(ServiceUnavailableError, match=r"registry\.listen_port"):
        plan_ports(pinned, move_taken=True)


def test_one_supervisor_per_var_dir(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert running_holder(run) is None
    first = InstanceLock(run, tmp_path / "a.toml")
    held = first.acquire()
    assert running_holder(run) == held
    with pytest.raises(ConflictError) as exc:
        InstanceLock(run, None).acquire(wait_s=0.2)  # another open file: flock conflicts
    msg = str(exc.value)
    assert "\n" not in msg and f"pid {held.pid}" in msg and "a.toml" in msg
    first.release()
    assert running_holder(run) is None
    second = InstanceLock(run, None)
    second.acquire()
    second.release()
    assert stat.S_IMODE((run / "supervisor.lock").stat().st_mode) == 0o600


def test_status_file_is_private_and_round_trips(tmp_path: Path) -> None:
    comps = [ComponentStatus("redis", 42, "running", 1000.0, 2, -9)]
    write_status(tmp_path, {"pid": 1}, comps)
    assert stat.S_IMODE((tmp_path / "services.json").stat().st_mode) == 0o600
    got = read_status(tmp_path)
    assert got is not None and got[1] == comps and got[1][0].uptime_s(1010.0) == 10.0


def test_a_port_moved_by_environment_moves_the_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """How the demo hands a moved port to its children."""
    from provisioner.settings import load_settings

    cfg = tmp_path / "p.toml"
    cfg.write_text("[registry]\nlisten_port = 9000\n")
    monkeypatch.setenv("PROVISIONER_REGISTRY__LISTEN_PORT", "9001")
    assert load_settings(cfg).registry_url == "http://127.0.0.1:9001"
