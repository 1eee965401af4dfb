"""Fixtures for the pre-provisioned batch mode: an emulated manufacturer (its own root, never
presented as Microchip's), its parts, and the line pieces the core tests use (real chips
through cryptoauthlib, the real database; the signer is one that must never be called)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlmodel import func, select

from provisioner import batches
from provisioner.ca.manufacturer_chain import load_root
from provisioner.chips.emulator.manufacturer import EmulatedManufacturer
from provisioner.db.engine import transaction
from provisioner.db.models import AuditEvent
from provisioner.link.records import LocalRecords
from provisioner.ports import IssuedCertificate, SigningRequest
from provisioner.settings import Settings, StationSettings
from provisioner.socket_task import SocketRun

REGISTRY = "projects/p/locations/l/registries/r"


class NoSigner:
    """A preprovisioned batch never asks our CA for anything: a call fails the test."""

    def __init__(self) -> None:
        self.calls = 0

    def sign(self, request: SigningRequest) -> IssuedCertificate:
        self.calls += 1
        raise AssertionError(f"the signer was asked for device {request.device_id}")


@pytest.fixture(scope="module")
def manufacturer() -> EmulatedManufacturer:
    return EmulatedManufacturer.create()


@pytest.fixture
def line(env: dict[str, Any], manufacturer: EmulatedManufacturer) -> Iterator[dict[str, Any]]:
    """The core tests' ``env`` with one manually fed station and the manufacturer's root
    installed where the settings say."""
    settings: Settings = env["settings"].model_copy(
        update={"stations": {"line1": StationSettings(sockets=2, feed="manual")}}
    )
    path = settings.manufacturer_root_file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(manufacturer.root_pem())
    yield {**env, "settings": settings, "no_signer": NoSigner()}


def records(line: dict[str, Any], socket: int = 0) -> LocalRecords:
    settings: Settings = line["settings"]
    return LocalRecords(
        line["engine"],
        "line1",
        socket,
        line["no_signer"],
        registry=REGISTRY,
        manufacturer_root=lambda: load_root(settings.manufacturer_root_file),
    )


def socket_run(line: dict[str, Any], socket: int = 0) -> SocketRun:
    return SocketRun(
        line["settings"], "line1", socket, records(line, socket), holder=f"line1:{socket}:test"
    )


def started_batch(
    line: dict[str, Any], *, mode: str = "preprovisioned", part: str | None = "trust-and-go"
) -> int:
    bid = batches.create_batch(
        line["engine"],
        line["settings"],
        station_id="line1",
        count=1,
        actor="t",
        mode=mode,
        part=part,
    )
    (device,) = batches.mark_started(line["engine"], bid, actor="t")
    return device


def events(line: dict[str, Any], kind: str) -> int:
    with transaction(line["engine"]) as s:
        q = select(func.count()).select_from(AuditEvent).where(AuditEvent.event_type == kind)
        return int(s.exec(q).one())
