"""The device plane through its ``/bridge/v1`` contract, as the broker plugin calls it, on a
real SQLite registry store: connects, topic rules, configs, commands, gateways, and the kicks
the plugin applies (expiry by the plane's clock, no sleeping; blocked devices; removed
credentials; MQTT disabled)."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from provisioner.cloud import device_data, events, store
from provisioner.cloud.plane.routes import bridge_router
from provisioner.cloud.plane.service import DevicePlane
from provisioner.cloud.status import ApiError, Code
from provisioner.cloud.tokens import token_hash
from tests.cloud.devauth.keys import PrivateKey, credential, ec_key, make_jwt, rsa_key

BRIDGE_TOKEN = "bridge-token-for-tests"
PROJECT = "plane-proj"
LOCATION = "europe-west1"


class Clock:
    """The plane's clock, moved by the tests instead of sleeping."""

    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    path: Path = tmp_path_factory.mktemp("plane") / "registry.db"
    eng = store.open_store(f"sqlite:///{path}")
    yield eng
    eng.dispose()


@pytest.fixture(scope="module")
def reg(engine: Engine) -> store.StoredRegistry:
    return store.create_registry(engine, PROJECT, LOCATION, "fleet")


@dataclass
class Bridge:
    """The plugin's side of the contract."""

    http: TestClient
    plane: DevicePlane
    clock: Clock
    engine: Engine

    def post(self, path: str, body: dict[str, Any], token: str = BRIDGE_TOKEN) -> Any:
        r = self.http.post(
            f"/bridge/v1/{path}", json=body, headers={"Authorization": f"Bearer {token}"}
        )
        assert r.status_code == 200, r.text
        return r.json()

    def connect(self, client_id: str, password: str | None) -> Any:
        return self.post(
            "connect",
            {"client_id": client_id, "username": "unused", "password": password, "cert_pem": None},
        )

    def subscribe(self, client_id: str, session: int, topic: str, qos: int = 1) -> Any:
        body = {"client_id": client_id, "session": session, "topic": topic, "qos": qos}
        return self.post("subscribe", body)

    def control(self, client_id: str, session: int, topic: str, payload: bytes) -> Any:
        body = {
            "client_id": client_id,
            "session": session,
            "topic": topic,
            "payload_b64": base64.b64encode(payload).decode(),
            "qos": 1,
        }
        return self.post("control", body)

    def sync(
        self,
        messages: Sequence[tuple[str, int, str, bytes]] = (),
        disconnected: Sequence[tuple[str, int]] = (),
    ) -> Any:
        return self.post(
            "sync",
            {
                "messages": [
                    {
                        "client_id": c,
                        "session": s,
                        "topic": t,
                        "payload_b64": base64.b64encode(p).decode(),
                        "qos": 1,
                    }
                    for c, s, t, p in messages
                ],
                "disconnected": [{"client_id": c, "session": s} for c, s in disconnected],
            },
        )


@contextmanager
def bridge_on(engine: Engine) -> Iterator[Bridge]:
    """A device plane (as one registry server process has) and its /bridge/v1 routes."""
    clock = Clock()
    plane = DevicePlane(engine, clock=clock)
    app = FastAPI()
    app.include_router(bridge_router(plane, token_hash(BRIDGE_TOKEN)))
    with TestClient(app) as http:
        yield Bridge(http, plane, clock, engine)


@pytest.fixture
def bridge(engine: Engine) -> Iterator[Bridge]:
    with bridge_on(engine) as b:
        yield b


@dataclass
class Dev:
    device: store.StoredDevice
    key: PrivateKey
    client_id: str

    @property
    def id(self) -> str:
        return self.device.device_id


def new_device(
    engine: Engine,
    reg: store.StoredRegistry,
    key: PrivateKey | None = None,
    *,
    gateway_auth_method: str | None = None,
    expiration_time: str | None = None,
) -> Dev:
    key = key or ec_key()
    device_id = f"d{uuid.uuid4().hex[:12]}"
    cred = credential(key) if expiration_time is None else credential(key, expiration_time)
    new = store.NewDevice(device_id, (cred,), False, {})
    if gateway_auth_method is not None:
        new = replace(new, gateway_type="GATEWAY", gateway_auth_method=gateway_auth_method)
    device = store.create_device(engine, reg, new)
    return Dev(device, key, f"{reg.name}/devices/{device_id}")


def jwt(dev: Dev, bridge: Bridge, lifetime: int = 3600, project: str = PROJECT) -> str:
    return make_jwt(dev.key, project=project, now=bridge.clock.now, lifetime=lifetime)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --- the bridge token ------------------------------------------------------------------------


def test_a_wrong_bridge_token_is_401(bridge: Bridge) -> None:
    for path in ("connect", "subscribe", "control", "sync"):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": BRIDGE_TOKEN}):
            r = bridge.http.post(f"/bridge/v1/{path}", json={}, headers=headers)
            assert r.status_code == 401, (path, headers)
            assert r.json()["error"]["status"] == "UNAUTHENTICATED"
    ok = bridge.http.post(
        "/bridge/v1/sync", json={}, headers={"Authorization": f"Bearer {BRIDGE_TOKEN}"}
    )
    assert ok.status_code == 200 and ok.json() == {"kick": [], "deliver": []}


def test_a_malformed_request_is_400(bridge: Bridge) -> None:
    headers = {"Authorization": f"Bearer {BRIDGE_TOKEN}"}
    r = bridge.http.post("/bridge/v1/subscribe", json={"client_id": "x"}, headers=headers)
    assert r.status_code == 400
    bad_b64 = {"messages": [{"client_id": "x", "session": 1, "topic": "t", "payload_b64": "%"}]}
    assert bridge.http.post("/bridge/v1/sync", json=bad_b64, headers=headers).status_code == 400


# --- connect ---------------------------------------------------------------------------------


def test_connect_es256_and_rs256(bridge: Bridge, reg: store.StoredRegistry) -> None:
    for key in (ec_key(), rsa_key()):
        dev = new_device(bridge.engine, reg, key)
        token = jwt(dev, bridge, lifetime=1200)
        answer = bridge.connect(dev.client_id, token)
        assert answer == {
            "allow": True,
            "session": answer["session"],
            "publish": [
                f"/devices/{dev.id}/events",
                f"/devices/{dev.id}/events/#",
                f"/devices/{dev.id}/state",
            ],
            "subscribe": [f"/devices/{dev.id}/config", f"/devices/{dev.id}/commands/#"],
            "expires_at": int(bridge.clock.now) + 1200,
        }
    assert len(bridge.plane.sessions) == 2


def test_connect_refusals(bridge: Bridge, engine: Engine, reg: store.StoredRegistry) -> None:
    dev = new_device(engine, reg)
    good = jwt(dev, bridge)
    cases = {
        "client_id": (f"{reg.name}/devices", good),
        "registry": (f"projects/{PROJECT}/locations/{LOCATION}/registries/nope/devices/x", good),
        "device": (f"{reg.name}/devices/nobody", good),
        "jwt format": (dev.client_id, None),
        "jwt exp": (dev.client_id, make_jwt(dev.key, project=PROJECT, now=bridge.clock.now - 7200)),
        "jwt aud": (dev.client_id, jwt(dev, bridge, project="other")),
        "jwt signature": (dev.client_id, make_jwt(ec_key(), project=PROJECT, now=bridge.clock.now)),
    }
    for rule, (client_id, password) in cases.items():
        answer = bridge.connect(client_id, password)
        assert answer["allow"] is False, rule
        assert answer["reason"].startswith(f"{rule}: "), (rule, answer)
        if password:
            assert password.split(".")[2] not in answer["reason"]
    assert len(bridge.plane.sessions) == 0


def test_blocked_device_and_disabled_mqtt_are_refused(bridge: Bridge, engine: Engine) -> None:
    other = store.create_registry(engine, PROJECT, LOCATION, f"r{uuid.uuid4().hex[:8]}")
    dev = new_device(engine, other)
    store.update_device(engine, other, dev.id, store.DeviceChanges(blocked=True))
    assert bridge.connect(dev.client_id, jwt(dev, bridge))["reason"].startswith("blocked: ")
    store.update_device(engine, other, dev.id, store.DeviceChanges(blocked=False))
    assert bridge.connect(dev.client_id, jwt(dev, bridge))["allow"] is True
    store.update_registry(engine, other, changes=store.RegistryChanges(mqtt_enabled=False))
    assert bridge.connect(dev.client_id, jwt(dev, bridge))["reason"].startswith("mqtt: ")


def test_an_expired_credential_is_refused(bridge: Bridge, reg: store.StoredRegistry) -> None:
    dev = new_device(bridge.engine, reg, expiration_time="2020-01-01T00:00:00Z")
    assert bridge.connect(dev.client_id, jwt(dev, bridge))["reason"].startswith("jwt credential: ")


# --- subscribe, configs, commands ------------------------------------------------------------


def test_subscribe_only_to_own_topics(bridge: Bridge, reg: store.StoredRegistry) -> None:
    dev, other = new_device(bridge.engine, reg), new_device(bridge.engine, reg)
    s = bridge.connect(dev.client_id, jwt(dev, bridge))["session"]
    allowed = {
        f"/devices/{dev.id}/config": True,
        f"/devices/{dev.id}/commands/#": True,
        f"/devices/{dev.id}/commands/reboot": True,
        f"/devices/{other.id}/config": False,
        f"/devices/{other.id}/commands/#": False,
        f"/devices/{dev.id}/commands/+": False,
        f"/devices/{dev.id}/events": False,
        f"/devices/{dev.id}/errors": False,  # not a gateway
        "/devices/+/config": False,
        "#": False,
    }
    for topic, ok in allowed.items():
        assert bridge.subscribe(dev.client_id, s, topic, qos=2)["allow"] is ok, topic
    # A stale session number is refused.
    assert bridge.subscribe(dev.client_id, s + 1000, f"/devices/{dev.id}/config")["allow"] is False


def test_latest_config_on_subscribe_and_new_ones_at_sync(
    bridge: Bridge, reg: store.StoredRegistry
) -> None:
    dev = new_device(bridge.engine, reg)
    device_data.modify_config(bridge.engine, reg, dev.device, b"v2")
    s = bridge.connect(dev.client_id, jwt(dev, bridge))["session"]
    topic = f"/devices/{dev.id}/config"
    answer = bridge.subscribe(dev.client_id, s, topic, qos=0)
    assert answer == {
        "allow": True,
        "deliver": [{"topic": topic, "payload_b64": b64(b"v2"), "qos": 1}],
    }
    stored = store.get_device(bridge.engine, reg, dev.id)
    assert stored is not None and stored.last_config_send_time is not None

    # Two configs before the next sync: only the newer reaches the device.
    for data in (b"v3", b"v4"):
        config = device_data.modify_config(bridge.engine, reg, dev.device, data)
        bridge.plane.config_changed(reg, dev.device, config)
    assert bridge.sync()["deliver"] == [
        {"client_id": dev.client_id, "topic": topic, "payload_b64": b64(b"v4"), "qos": 1}
    ]
    assert bridge.sync()["deliver"] == []


def test_commands_only_while_connected_and_subscribed(
    bridge: Bridge, reg: store.StoredRegistry
) -> None:
    dev = new_device(bridge.engine, reg)

    def offline() -> None:
        with pytest.raises(ApiError) as info:
            bridge.plane.send_command(reg, dev.device, b"x", "")
        assert info.value.code is Code.FAILED_PRECONDITION
        assert f"`{dev.id}` is not subscribed to the commands topic" in info.value.message

    offline()
    s = bridge.connect(dev.client_id, jwt(dev, bridge))["session"]
    offline()  # connected, not subscribed
    assert bridge.subscribe(dev.client_id, s, f"/devices/{dev.id}/commands/#")["allow"]
    bridge.plane.send_command(reg, dev.device, b"reboot", "ops")
    bridge.plane.send_command(reg, dev.device, b"ping", "")
    assert bridge.sync()["deliver"] == [
        {
            "client_id": dev.client_id,
            "topic": f"/devices/{dev.id}/commands/ops",
            "payload_b64": b64(b"reboot"),
            "qos": 1,
        },
        {
            "client_id": dev.client_id,
            "topic": f"/devices/{dev.id}/commands",
            "payload_b64": b64(b"ping"),
            "qos": 1,
        },
    ]
    bridge.sync(disconnected=[(dev.client_id, s)])
    offline()


def test_sync_stores_own_events_and_state_only(bridge: Bridge, reg: store.StoredRegistry) -> None:
    dev, other = new_device(bridge.engine, reg), new_device(bridge.engine, reg)
    s = bridge.connect(dev.client_id, jwt(dev, bridge))["session"]
    before = events.read_events(bridge.engine, registry=reg, topic=None, after=0, limit=10**6)
    last = before[-1].seq if before else 0
    answer = bridge.sync(
        [
            (dev.client_id, s, f"/devices/{dev.id}/events", b"t1"),
            (dev.client_id, s, f"/devices/{dev.id}/events/temp", b"t2"),
            (dev.client_id, s, f"/devices/{other.id}/events", b"forged"),
            (dev.client_id, s + 1000, f"/devices/{dev.id}/events", b"stale"),
            (dev.client_id, s, f"/devices/{dev.id}/state", b"on"),
            (dev.client_id, s, f"/devices/{dev.id}/config", b"not a publish topic"),
        ]
    )
    # the unknown session's message is dropped and that connection closed, if it still exists
    assert answer == {"kick": [{"client_id": dev.client_id, "session": s + 1000}], "deliver": []}
    stored = events.read_events(bridge.engine, registry=reg, topic=None, after=last, limit=100)
    assert [(e.device_id, e.subfolder, e.data) for e in stored] == [
        (dev.id, "", b"t1"),
        (dev.id, "temp", b"t2"),
    ]
    assert [st.data for st in device_data.list_states(bridge.engine, dev.device.num_id)] == [b"on"]
    found = store.get_device(bridge.engine, reg, dev.id)
    assert found is not None and found.last_event_time is not None
    assert found.last_state_time is not None


def test_a_new_connect_replaces_the_session(bridge: Bridge, reg: store.StoredRegistry) -> None:
    dev = new_device(bridge.engine, reg)
    first = bridge.connect(dev.client_id, jwt(dev, bridge))["session"]
    second = bridge.connect(dev.client_id, jwt(dev, bridge))["session"]
    assert second > first
    # The old connection's late disconnect does not end the new one.
    bridge.sync(disconnected=[(dev.client_id, first)])
    assert bridge.subscribe(dev.client_id, second, f"/devices/{dev.id}/commands/#")["allow"]
    bridge.plane.send_command(reg, dev.device, b"x", "")


# --- kicks -----------------------------------------------------------------------------------


def test_a_connection_from_before_a_restart_is_closed(
    engine: Engine, reg: store.StoredRegistry
) -> None:
    """The broker keeps its connections when the registry restarts; their telemetry would be
    thrown away by a plane that does not know them, so they are closed (devices reconnect),
    and the new plane's session ids never repeat the old one's."""
    dev = new_device(engine, reg)
    with bridge_on(engine) as before:
        old = before.connect(dev.client_id, jwt(dev, before))["session"]
    with bridge_on(engine) as after:
        answer = after.sync([(dev.client_id, old, f"/devices/{dev.id}/events", b"lost?")])
        assert answer["kick"] == [{"client_id": dev.client_id, "session": old}]
        new = after.connect(dev.client_id, jwt(dev, after))["session"]
        assert new != old
        assert (
            after.sync([(dev.client_id, new, f"/devices/{dev.id}/events", b"kept")])["kick"] == []
        )


def test_kicked_when_the_jwt_expires(bridge: Bridge, reg: store.StoredRegistry) -> None:
    dev = new_device(bridge.engine, reg)
    s = bridge.connect(dev.client_id, jwt(dev, bridge, lifetime=3))["session"]
    bridge.clock.now += 2
    assert bridge.sync()["kick"] == []
    bridge.clock.now += 1  # exp <= now
    assert bridge.sync()["kick"] == [{"client_id": dev.client_id, "session": s}]
    # Messages from a kicked session are dropped; the kick repeats until it is gone.
    assert bridge.sync([(dev.client_id, s, f"/devices/{dev.id}/state", b"late")])["kick"]
    assert device_data.list_states(bridge.engine, dev.device.num_id) == []
    assert bridge.sync(disconnected=[(dev.client_id, s)])["kick"] == []


def test_kicked_when_blocked_or_credential_removed(
    bridge: Bridge, reg: store.StoredRegistry
) -> None:
    blocked, rotated, kept = (new_device(bridge.engine, reg) for _ in range(3))
    sessions = {
        d.id: bridge.connect(d.client_id, jwt(d, bridge))["session"]
        for d in (blocked, rotated, kept)
    }
    assert bridge.sync()["kick"] == []
    store.update_device(bridge.engine, reg, blocked.id, store.DeviceChanges(blocked=True))
    bridge.plane.device_changed(reg, blocked.id)
    # The rotated device's JWT key is replaced by another one; the kept device only gains a
    # second credential (key rotation in progress: its connection stays).
    new_key = ec_key()
    store.update_device(
        bridge.engine, reg, rotated.id, store.DeviceChanges(credentials=(credential(new_key),))
    )
    bridge.plane.device_changed(reg, str(rotated.device.num_id))  # by numId, as the API allows
    store.update_device(
        bridge.engine,
        reg,
        kept.id,
        store.DeviceChanges(credentials=(credential(kept.key), credential(new_key))),
    )
    bridge.plane.device_changed(reg, kept.id)
    kicks = bridge.sync()["kick"]
    assert sorted(k["client_id"] for k in kicks) == sorted([blocked.client_id, rotated.client_id])
    assert {k["session"] for k in kicks} == {sessions[blocked.id], sessions[rotated.id]}


def test_kicked_when_mqtt_is_disabled(bridge: Bridge, engine: Engine) -> None:
    other = store.create_registry(engine, PROJECT, LOCATION, f"r{uuid.uuid4().hex[:8]}")
    dev = new_device(engine, other)
    s = bridge.connect(dev.client_id, jwt(dev, bridge))["session"]
    changed = store.update_registry(
        engine, other, changes=store.RegistryChanges(mqtt_enabled=False)
    )
    assert changed is not None
    bridge.plane.registry_changed(changed)
    assert bridge.sync()["kick"] == [{"client_id": dev.client_id, "session": s}]


# --- gateways --------------------------------------------------------------------------------


def test_gateway_attaches_a_bound_device_not_an_unbound_one(
    bridge: Bridge, reg: store.StoredRegistry
) -> None:
    gw = new_device(bridge.engine, reg, gateway_auth_method="ASSOCIATION_ONLY")
    bound, unbound = new_device(bridge.engine, reg), new_device(bridge.engine, reg)
    device_data.bind(bridge.engine, reg, gw.id, bound.id)
    answer = bridge.connect(gw.client_id, jwt(gw, bridge))
    s = answer["session"]
    assert "/devices/+/attach" in answer["publish"]
    assert f"/devices/{gw.id}/errors" in answer["subscribe"]
    assert bridge.subscribe(gw.client_id, s, f"/devices/{gw.id}/errors")["allow"]
    # Before attaching, the bound device's topics are not the gateway's.
    assert not bridge.subscribe(gw.client_id, s, f"/devices/{bound.id}/config")["allow"]

    attached = bridge.control(
        gw.client_id, s, f"/devices/{bound.id}/attach", b'{"authorization": ""}'
    )
    assert attached["allow"] is True and attached["kick"] is False and attached["deliver"] == []
    assert f"/devices/{bound.id}/events/#" in attached["publish"]
    assert f"/devices/{bound.id}/commands/#" in attached["subscribe"]
    sub = bridge.subscribe(gw.client_id, s, f"/devices/{bound.id}/config")
    assert sub["allow"] and sub["deliver"][0]["topic"] == f"/devices/{bound.id}/config"
    bridge.sync([(gw.client_id, s, f"/devices/{bound.id}/state", b"child-state")])
    assert [x.data for x in device_data.list_states(bridge.engine, bound.device.num_id)] == [
        b"child-state"
    ]

    refused = bridge.control(gw.client_id, s, f"/devices/{unbound.id}/attach", b"{}")
    assert refused["allow"] is False and refused["kick"] is False
    assert f"/devices/{unbound.id}/events" not in refused["publish"]
    [error] = refused["deliver"]
    assert error["topic"] == f"/devices/{gw.id}/errors"
    body = json.loads(base64.b64decode(error["payload_b64"]))
    assert body["error_type"] == "GATEWAY_ATTACHMENT_ERROR"
    assert body["device_id"] == unbound.id and "not bound" in body["description"]
    stored_gw = store.get_device(bridge.engine, reg, gw.id)
    assert stored_gw is not None and stored_gw.last_error_status is not None
    bridge.sync([(gw.client_id, s, f"/devices/{unbound.id}/state", b"forged")])
    assert device_data.list_states(bridge.engine, unbound.device.num_id) == []

    detached = bridge.control(gw.client_id, s, f"/devices/{bound.id}/detach", b"{}")
    assert detached["allow"] and f"/devices/{bound.id}/events" not in detached["publish"]
    bridge.sync([(gw.client_id, s, f"/devices/{bound.id}/state", b"after-detach")])
    assert len(device_data.list_states(bridge.engine, bound.device.num_id)) == 1


def test_gateway_with_device_tokens(bridge: Bridge, reg: store.StoredRegistry) -> None:
    gw = new_device(bridge.engine, reg, gateway_auth_method="DEVICE_AUTH_TOKEN_ONLY")
    child = new_device(bridge.engine, reg)  # not bound: the token alone decides
    s = bridge.connect(gw.client_id, jwt(gw, bridge))["session"]
    topic = f"/devices/{child.id}/attach"
    assert not bridge.control(gw.client_id, s, topic, b"{}")["allow"]
    forged = make_jwt(ec_key(), project=PROJECT, now=bridge.clock.now)
    no = bridge.control(gw.client_id, s, topic, json.dumps({"authorization": forged}).encode())
    assert no["allow"] is False
    description = json.loads(base64.b64decode(no["deliver"][0]["payload_b64"]))["description"]
    assert "jwt signature" in description and forged.split(".")[2] not in description
    ok = bridge.control(
        gw.client_id, s, topic, json.dumps({"authorization": jwt(child, bridge)}).encode()
    )
    assert ok["allow"] is True and f"/devices/{child.id}/state" in ok["publish"]
    # Commands to the child go through the gateway's connection once it subscribes.
    assert bridge.subscribe(gw.client_id, s, f"/devices/{child.id}/commands/#")["allow"]
    bridge.plane.send_command(reg, child.device, b"c", "")
    assert bridge.sync()["deliver"][0]["client_id"] == gw.client_id


def test_both_association_and_token_required(bridge: Bridge, reg: store.StoredRegistry) -> None:
    gw = new_device(bridge.engine, reg, gateway_auth_method="ASSOCIATION_AND_DEVICE_AUTH_TOKEN")
    child = new_device(bridge.engine, reg)
    s = bridge.connect(gw.client_id, jwt(gw, bridge))["session"]
    topic = f"/devices/{child.id}/attach"
    with_token = json.dumps({"authorization": jwt(child, bridge)}).encode()
    assert not bridge.control(gw.client_id, s, topic, with_token)["allow"]  # unbound
    device_data.bind(bridge.engine, reg, gw.id, child.id)
    assert not bridge.control(gw.client_id, s, topic, b"{}")["allow"]  # no token
    assert bridge.control(gw.client_id, s, topic, with_token)["allow"]


def test_unbinding_detaches_the_child(bridge: Bridge, reg: store.StoredRegistry) -> None:
    gw = new_device(bridge.engine, reg, gateway_auth_method="ASSOCIATION_ONLY")
    child = new_device(bridge.engine, reg)
    device_data.bind(bridge.engine, reg, gw.id, child.id)
    s = bridge.connect(gw.client_id, jwt(gw, bridge))["session"]
    assert bridge.control(gw.client_id, s, f"/devices/{child.id}/attach", b"")["allow"]
    device_data.unbind(bridge.engine, reg, gw.id, child.id)
    bridge.plane.device_changed(reg, child.id)
    bridge.sync([(gw.client_id, s, f"/devices/{child.id}/state", b"after-unbind")])
    assert device_data.list_states(bridge.engine, child.device.num_id) == []
    assert bridge.sync()["kick"] == []  # the gateway itself stays connected


def test_a_control_message_from_a_non_gateway_closes_the_connection(
    bridge: Bridge, reg: store.StoredRegistry
) -> None:
    dev, other = new_device(bridge.engine, reg), new_device(bridge.engine, reg)
    s = bridge.connect(dev.client_id, jwt(dev, bridge))["session"]
    answer = bridge.control(dev.client_id, s, f"/devices/{other.id}/attach", b"{}")
    assert answer["allow"] is False and answer["kick"] is True
