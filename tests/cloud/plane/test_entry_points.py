"""The plane's entry points for the HTTP bridge and the external brokers' hooks (stateless:
no session), and mTLS binding at connect."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from provisioner.cloud import device_data, events, store
from provisioner.cloud.plane.service import Admission, DevicePlane, Refusal
from provisioner.cloud.status import ApiError, Code
from tests.cloud.devauth.keys import PrivateKey, credential, ec_key, make_jwt
from tests.cloud.helpers import certificate_pem

PROJECT = "hooks-proj"


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    path: Path = tmp_path_factory.mktemp("plane-entry") / "registry.db"
    eng = store.open_store(f"sqlite:///{path}")
    yield eng
    eng.dispose()


@pytest.fixture(scope="module")
def reg(engine: Engine) -> store.StoredRegistry:
    return store.create_registry(engine, PROJECT, "us-central1", "fleet")


@pytest.fixture
def plane(engine: Engine) -> DevicePlane:
    return DevicePlane(engine)


def device(
    engine: Engine, reg: store.StoredRegistry, *, gateway: bool = False
) -> tuple[store.StoredDevice, PrivateKey, str]:
    key = ec_key()
    new = store.NewDevice(f"e{uuid.uuid4().hex[:12]}", (credential(key),), False, {})
    if gateway:
        new = replace(new, gateway_type="GATEWAY")
    dev = store.create_device(engine, reg, new)
    return dev, key, f"{reg.name}/devices/{dev.device_id}"


def token(key: PrivateKey, lifetime: int = 600, now: float | None = None) -> str:
    return make_jwt(key, project=PROJECT, now=now or time.time(), lifetime=lifetime)


def test_check_mqtt_is_stateless(
    plane: DevicePlane, engine: Engine, reg: store.StoredRegistry
) -> None:
    _, key, cid = device(engine, reg)
    jwt = token(key)
    admitted = plane.check_mqtt(cid, jwt)
    assert isinstance(admitted, Admission) and admitted.allow and admitted.session == 0
    assert admitted.expires_at == admitted.claims.exp
    assert len(plane.sessions) == 0
    refused = plane.check_mqtt(cid, token(key, now=time.time() - 7200))
    assert isinstance(refused, Refusal) and not refused.allow
    assert refused.reason.startswith("jwt exp: ")


def test_may(plane: DevicePlane, engine: Engine, reg: store.StoredRegistry) -> None:
    dev, _, cid = device(engine, reg)
    other, _, _ = device(engine, reg)
    d, o = dev.device_id, other.device_id
    assert plane.may(cid, f"/devices/{d}/events/a/b", "publish")
    assert plane.may(cid, f"/devices/{d}/state", "publish")
    assert not plane.may(cid, f"/devices/{o}/events", "publish")
    assert not plane.may(cid, f"/devices/{d}/config", "publish")
    assert not plane.may(cid, f"/devices/{o}/attach", "publish")  # not a gateway
    assert plane.may(cid, f"/devices/{d}/commands/#", "subscribe")
    assert plane.may(cid, f"/devices/{d}/config", "subscribe")
    assert plane.may(cid, f"/devices/{d}/commands/x", "read")
    assert not plane.may(cid, f"/devices/{d}/commands/+", "subscribe")
    assert not plane.may(cid, f"/devices/{o}/config", "subscribe")
    assert not plane.may(cid, f"/devices/{d}/config", "delete")
    assert not plane.may("not-a-client-id", f"/devices/{d}/state", "publish")

    gw, _, gw_cid = device(engine, reg, gateway=True)
    bound, _, _ = device(engine, reg)
    device_data.bind(engine, reg, gw.device_id, bound.device_id)
    b = bound.device_id
    assert plane.may(gw_cid, f"/devices/{b}/attach", "publish")
    assert plane.may(gw_cid, f"/devices/{b}/events", "publish")
    assert plane.may(gw_cid, f"/devices/{b}/config", "subscribe")
    assert plane.may(gw_cid, f"/devices/{gw.device_id}/errors", "subscribe")
    assert not plane.may(gw_cid, f"/devices/{o}/events", "publish")  # not bound
    assert not plane.may(gw_cid, f"/devices/{b}/errors", "subscribe")

    store.update_device(engine, reg, d, store.DeviceChanges(blocked=True))
    assert not plane.may(cid, f"/devices/{d}/state", "publish")


def test_authenticate_http(plane: DevicePlane, engine: Engine) -> None:
    reg = store.create_registry(engine, PROJECT, "us-central1", f"h{uuid.uuid4().hex[:8]}")
    dev, key, _ = device(engine, reg)
    assert plane.authenticate_http(reg, dev, token(key)).aud == PROJECT
    with pytest.raises(ApiError) as info:
        plane.authenticate_http(reg, dev, token(key, now=time.time() - 7200))
    assert info.value.code is Code.UNAUTHENTICATED and "jwt exp" in info.value.message
    blocked = replace(dev, blocked=True)
    with pytest.raises(ApiError) as info:
        plane.authenticate_http(reg, blocked, token(key))
    assert info.value.code is Code.PERMISSION_DENIED
    no_http = store.update_registry(engine, reg, changes=store.RegistryChanges(http_enabled=False))
    assert no_http is not None
    with pytest.raises(ApiError) as info:
        plane.authenticate_http(no_http, dev, token(key))
    assert info.value.code is Code.PERMISSION_DENIED


def test_publish_event_and_set_state(
    plane: DevicePlane, engine: Engine, reg: store.StoredRegistry
) -> None:
    dev, _, _ = device(engine, reg)
    plane.publish_event(reg, dev, "sub", b"e1")
    plane.set_state(reg, dev, b"s1")
    stored = events.read_events(
        engine, registry=reg, topic=None, after=0, limit=100, device_id=dev.device_id
    )
    assert [(e.subfolder, e.data) for e in stored] == [("sub", b"e1")]
    assert [s.data for s in device_data.list_states(engine, dev.num_id)] == [b"s1"]
    found = store.get_device(engine, reg, dev.device_id)
    assert found is not None and found.last_event_time and found.last_state_time


def test_tls_client_certificate_must_carry_a_device_key(
    plane: DevicePlane, engine: Engine, reg: store.StoredRegistry
) -> None:
    _, key, cid = device(engine, reg)
    jwt = token(key)
    assert isinstance(plane.connect(cid, jwt, cert_pem=certificate_pem(key)), Admission)
    other = plane.connect(cid, jwt, cert_pem=certificate_pem(ec_key()))
    assert isinstance(other, Refusal) and other.rule == "certificate"
    junk = plane.connect(cid, jwt, cert_pem="not a certificate")
    assert isinstance(junk, Refusal) and junk.rule == "certificate"
