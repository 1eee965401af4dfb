"""``provisioner device`` on the command line: rotate-key is an admin's command (an operator
is refused and the refusal audited), connect names an empty socket."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from provisioner.auth import roles, users
from provisioner.cli import device
from provisioner.cli.context import CliContext
from provisioner.cloud.tokens import Role as TokenRole
from provisioner.errors import ChipAbsentError, PermissionDeniedError
from provisioner.field.state import load_state
from tests.cloud.inprocess import TOKENS
from tests.field.conftest import LOCATOR, Line, chip_serial


@pytest.fixture(autouse=True)
def _declared(monkeypatch: pytest.MonkeyPatch) -> None:
    """The action is declared in provisioner/auth/roles.py by the integrator; until then
    the test declares it as the CLI expects it (admins only)."""
    if "device.rotate_key" not in roles.ACTIONS:
        monkeypatch.setitem(roles.ACTIONS, "device.rotate_key", frozenset({roles.Role.ADMIN}))


def cli(ctx_obj: CliContext) -> typer.Typer:
    root = typer.Typer()

    @root.callback()
    def _root(ctx: typer.Context) -> None:
        ctx.obj = ctx_obj

    root.add_typer(device.app, name="device")
    return root


def write_private(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


def test_rotate_key_needs_an_admin(line: Line, tmp_path: Path) -> None:
    settings = line.settings
    write_private(settings.registry_token_file, TOKENS[TokenRole.WRITER])
    probe = CliContext(config=None, _settings=settings)
    admin_token = users.add_user(probe.engine, "alice", "admin", "admin:root")
    operator_token = users.add_user(probe.engine, "bob", "operator", "user:alice")
    runner = CliRunner()

    as_operator = CliContext(
        config=None, token_file=write_private(tmp_path / "bob", operator_token), _settings=settings
    )
    res = runner.invoke(cli(as_operator), ["device", "rotate-key", LOCATOR, "--grace", "1m"])
    assert isinstance(res.exception, PermissionDeniedError), res.output
    assert load_state(settings, chip_serial(settings), 0).slot == 0  # nothing rotated

    as_admin = CliContext(
        config=None, token_file=write_private(tmp_path / "alice", admin_token), _settings=settings
    )
    res = runner.invoke(cli(as_admin), ["device", "rotate-key", LOCATOR, "--grace", "1m"])
    assert res.exit_code == 0, res.output
    assert f"device {line.device_id}: now signs with slot 2" in res.output
    assert "until" in res.output and "2 credentials" in res.output
    # the new key's credential expires too (365 days by default), the old one after the grace
    creds = line.registry.device_credentials(line.device_id)
    assert creds is not None and len(creds) == 2
    left = sorted(
        (datetime.fromisoformat(c.expiration_time.replace("Z", "+00:00")) - datetime.now(UTC))
        for c in creds
    )
    # (rfc3339 times are rounded up to the second, hence the slack)
    assert timedelta(0) < left[0] <= timedelta(minutes=1, seconds=2)  # the old key: --grace 1m
    assert timedelta(days=364) < left[1] <= timedelta(days=365, seconds=2)  # --key-lifetime


def test_connect_names_an_empty_socket(tmp_path: Path) -> None:
    from provisioner.settings import Settings

    settings = Settings(var_dir=tmp_path / "var")  # type: ignore[call-arg]
    settings.bridge_dir.mkdir(parents=True)
    (settings.bridge_dir / "ca.pem").write_text("")
    res = CliRunner().invoke(
        cli(CliContext(config=None, _settings=settings)), ["device", "connect", LOCATOR]
    )
    assert isinstance(res.exception, ChipAbsentError)
    assert "no chip answers in emulated:line1/0" in str(res.exception)


def test_help_explains_both_commands() -> None:
    res = CliRunner().invoke(cli(CliContext(config=None)), ["device", "--help"])
    assert res.exit_code == 0
    assert "connect" in res.output and "rotate-key" in res.output
    res = CliRunner().invoke(cli(CliContext(config=None)), ["device", "rotate-key", "--help"])
    assert "--grace" in res.output and "CA" in res.output
