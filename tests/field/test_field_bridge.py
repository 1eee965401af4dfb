"""The field device through the real bridge (registry server + mosquitto with the plugin):
a provisioned chip connects with chip-minted JWTs, gets its config, publishes telemetry,
rotates its key, reconnects on the new key, and its old key is refused after the grace."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner.chips.connector import Connector
from provisioner.db.engine import create_schema, make_engine
from provisioner.field.client import (
    ConnectionRefusedByBridge,
    FieldDevice,
    explain_refusal,
)
from provisioner.field.jwt import mint_jwt
from provisioner.field.rotation import parse_time, rotate_key
from provisioner.ledger import registry_device_id
from provisioner.uploads.client import CloudIotRegistry
from tests.cloud.bridge.conftest import Bridge, bridge, plugin_so  # noqa: F401  (fixtures)
from tests.field.conftest import chip_serial, provision_chip

DEVICE_SCRIPT = """
import sys
from provisioner.field.client import FieldDevice
from provisioner.settings import load_settings

device = FieldDevice(load_settings(), sys.argv[1], jwt_lifetime_s=int(sys.argv[2]),
                     emit=lambda s: print(s, flush=True))
device.run(interval_s=0.5, seconds=float(sys.argv[3]))
"""


class DeviceProcess:
    """``FieldDevice.run`` in a child process (its own cryptoauthlib, as a device is its own
    machine); its printed lines are read as they come."""

    def __init__(self, config: Path, locator: str, lifetime_s: int, seconds: float) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONER_")}
        env["PROVISIONER_CONFIG"] = str(config)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", DEVICE_SCRIPT, locator, str(lifetime_s), str(seconds)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float = 10.0, *, since: int = 0) -> int:
        """Wait for a line containing ``text`` (among the lines from ``since`` on, those
        already read included); returns the index after it."""
        for i, line in enumerate(self.seen[since:], since):
            if text in line:
                return i + 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            self.seen.append(line)
            if text in line:
                return len(self.seen)
        raise AssertionError(f"no line with {text!r}; got:\n" + "\n".join(self.seen))

    def finish(self, timeout: float = 15.0) -> list[str]:
        self.proc.wait(timeout)
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return self.seen


@pytest.fixture(scope="module")
def chip(bridge: Bridge) -> Iterator[str]:  # noqa: F811
    """A provisioned chip in socket 0 of the bridge station's jig, registered (its key as
    an ES256_PEM credential, through the line's registry client) with a config set."""
    settings = bridge.settings
    pem = provision_chip(settings, certificate=False)
    device_id = registry_device_id(chip_serial(settings))
    with CloudIotRegistry.from_settings(settings) as registry:
        resp = bridge.api(
            "POST",
            f"{bridge.registry_path()}/devices",
            json={
                "id": device_id,
                "credentials": [{"publicKey": {"format": "ES256_PEM", "key": pem}}],
            },
        )
        assert resp.status_code == 200, resp.text
        registry.modify_config(device_id, b'{"fan":"on"}')
    yield device_id


def test_the_chip_connects_rotates_and_its_old_key_is_refused_after_the_grace(
    bridge: Bridge,  # noqa: F811
    chip: str,
) -> None:
    settings = bridge.settings
    device = DeviceProcess(bridge.station.config, "emulated:line1/0", lifetime_s=3, seconds=9)
    try:
        device.wait_for("with slot 0", timeout=15)
        device.wait_for('config received (12 bytes): {"fan":"on"}')
        device.wait_for("telemetry 1 published")
        engine = make_engine(settings.db_url)
        create_schema(engine)
        done = rotate_key(settings, engine, "admin:tester", "emulated:line1/0", grace_s=2)
        engine.dispose()
        assert (done.old_slot, done.new_slot) == (0, 2)
        mark = len(device.seen)
        mark = device.wait_for("reconnecting with a fresh chip-minted JWT", 5, since=mark)
        device.wait_for("with slot 2", timeout=5, since=mark)  # signed with the new key
        lines = device.finish()
    finally:
        if device.proc.poll() is None:
            device.proc.kill()
    assert device.proc.returncode == 0, "\n".join(lines)
    assert not any("refused" in line for line in lines), "\n".join(lines)
    assert len(bridge.wait_events(chip, 4)) >= 4  # telemetry reached the event store
    # After the grace the registry no longer accepts the old key; the new one still works.
    assert done.old_expires is not None
    expires = parse_time(done.old_expires)
    assert expires is not None
    time.sleep(max(0.0, expires.timestamp() - time.time()) + 0.2)
    with Connector(settings).open("emulated:line1/0") as c:
        old = mint_jwt(c, bridge.project, slot=0, lifetime_s=60)
        new = mint_jwt(c, bridge.project, slot=2, lifetime_s=60)
    assert not bridge.device(chip, old.token).accepted
    assert bridge.device(chip, new.token).accepted


def test_a_chip_the_registry_does_not_know_is_refused_with_the_reason(
    bridge: Bridge,  # noqa: F811
    chip: str,
) -> None:
    settings = bridge.settings
    provision_chip(settings, socket=1, certificate=False)
    device = FieldDevice(settings, "emulated:line1/1", emit=lambda _s: None)
    with pytest.raises(ConnectionRefusedByBridge) as refused:
        device.run(count=1, seconds=5)
    assert refused.value.reason.is_failure
    assert "refused device" in str(refused.value) and "reason code" in str(refused.value)
    assert "not in the registry" in (explain_refusal(settings, device.device_id) or "")
