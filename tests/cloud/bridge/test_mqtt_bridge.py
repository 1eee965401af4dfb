"""The MQTT bridge end to end: paho-mqtt devices with software ES256/RS256 keys connect to
Debian's mosquitto, whose plugin asks the registry server's device plane for every
decision (one registry server and one broker for the module, started by the supervisor)."""

from __future__ import annotations

import base64
import json
import os
import signal
import time
import uuid
from typing import Any

import pytest

from provisioner.cloud.mosquitto import probe
from provisioner.supervisor_status import read_status
from tests.cloud.bridge.conftest import Bridge
from tests.cloud.devauth.keys import PrivateKey, ec_key, make_jwt, public_pem, rsa_key

NOT_AUTHORIZED = 135  # paho's reason for MQTT 3.1.1 CONNACK 5


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def modify_config(bridge: Bridge, device_id: str, data: bytes, **kw: Any) -> dict[str, Any]:
    resp = bridge.api(
        "POST",
        bridge.device_path(device_id, **kw) + ":modifyCloudToDeviceConfig",
        json={"binaryData": b64(data)},
    )
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def states(bridge: Bridge, device_id: str) -> list[bytes]:
    resp = bridge.api("GET", bridge.device_path(device_id) + "/states")
    assert resp.status_code == 200, resp.text
    return [base64.b64decode(s["binaryData"]) for s in resp.json().get("deviceStates", [])]


def wait_for(predicate: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


def test_the_supervisor_runs_the_bridge_as_a_service(bridge: Bridge) -> None:
    bridge.supervisor.write_status()
    status = read_status(bridge.settings.var / "run")
    assert status is not None
    bridge_status = {c.name: c for c in status[1]}["bridge"]
    assert bridge_status.state == "running"
    conf = (bridge.settings.bridge_dir / "mosquitto.conf").read_text()
    assert "allow_anonymous false" in conf and "per_listener_settings false" in conf
    assert "token" not in conf.split("plugin_opt_token_file", 1)[1].split("\n", 1)[1]
    # the bridge token is in a private file and never in the broker's output
    token_file = bridge.settings.bridge_token_file
    assert token_file.stat().st_mode & 0o077 == 0
    assert token_file.read_text().strip() not in bridge.log()


def test_es256_device_telemetry_state_config_and_commands(bridge: Bridge) -> None:
    key = ec_key()
    dev = bridge.create_device(key)
    modify_config(bridge, dev, b"config-1")
    d = bridge.device(dev, bridge.jwt(key))
    assert d.accepted, d.connack

    # the latest config arrives on subscribe, at QoS 1
    assert d.subscribe(f"/devices/{dev}/config", 1) == [1]
    assert d.next_message() == (f"/devices/{dev}/config", b"config-1", 1)

    # telemetry (with and without subfolder) lands in the event store
    assert d.publish(f"/devices/{dev}/events", b"t-1")
    assert d.publish(f"/devices/{dev}/events/engine/temp", b"t-2")
    stored = bridge.wait_events(dev, 2)
    assert [(e.data, e.subfolder) for e in stored] == [(b"t-1", ""), (b"t-2", "engine/temp")]

    # state is kept (states.list)
    assert d.publish(f"/devices/{dev}/state", b"state-1")
    assert wait_for(lambda: states(bridge, dev)[:1] == [b"state-1"])

    # a command needs a subscription; then it is delivered on the subfolder's topic
    send = bridge.device_path(dev) + ":sendCommandToDevice"
    refused = bridge.api("POST", send, json={"binaryData": b64(b"early")})
    assert refused.status_code == 400 and "not subscribed" in refused.text
    assert d.subscribe(f"/devices/{dev}/commands/#", 0) == [0]
    sent = bridge.api("POST", send, json={"binaryData": b64(b"reboot"), "subfolder": "ops"})
    assert sent.status_code == 200, sent.text
    topic, payload, _ = d.next_message()
    assert (topic, payload) == (f"/devices/{dev}/commands/ops", b"reboot")

    # a config changed while subscribed is pushed at once
    modify_config(bridge, dev, b"config-2")
    assert d.next_message()[:2] == (f"/devices/{dev}/config", b"config-2")
    d.close()


def test_rs256_device_connects_and_publishes(bridge: Bridge) -> None:
    key = rsa_key()
    dev = bridge.create_device(key)
    d = bridge.device(dev, bridge.jwt(key))
    assert d.accepted, d.connack
    assert d.publish(f"/devices/{dev}/events", b"rsa")
    assert [e.data for e in bridge.wait_events(dev, 1)] == [b"rsa"]
    d.close()


# case -> (the claims or header changed, the rule the refusal must name). Times are
# offsets from now; None: the usual iat = now, exp = now + 10 min, aud = the project.
JWT_CASES: dict[str, tuple[dict[str, Any], str]] = {
    "expired": ({"iat": -700, "exp": -60}, "jwt exp"),
    "iat_too_far_ahead": ({"iat": 1200, "exp": 1800}, "jwt iat"),
    "lifetime_too_long": ({"exp": 24 * 3600 + 1200}, "jwt lifetime"),
    "wrong_aud": ({"aud": "another-project"}, "jwt aud"),
    "alg_none": ({"alg": "none"}, "jwt alg"),
    "alg_hs256": ({"alg": "HS256"}, "jwt alg"),
}
# case -> the rule; what is wrong is the device or its registry, the JWT is fine
DEVICE_CASES = {
    "removed_credential": "jwt signature",
    "expired_credential": "jwt credential",
    "blocked_device": "blocked",
    "mqtt_disabled": "mqtt",
}


def _broken_jwt(bridge: Bridge, key: PrivateKey, change: dict[str, Any]) -> str:
    now = int(time.time())
    claims = {"iat": now, "exp": now + 600, "aud": bridge.project}
    for name in ("iat", "exp"):
        if name in change:
            claims[name] = now + change[name]
    claims["aud"] = change.get("aud", claims["aud"])
    alg = change.get("alg")
    if alg == "none":  # an unsigned token: header alg none, empty signature
        token = make_jwt(
            key, project=bridge.project, now=now, header={"alg": "none"}, claims=claims
        )
        return token.rsplit(".", 1)[0] + "."
    return make_jwt(key, project=bridge.project, now=now, alg=alg, claims=claims)


def _assert_refused(bridge: Bridge, dev: str, token: str, rule: str, registry: str | None) -> None:
    d = bridge.device(dev, token, registry=registry)
    assert d.connack is not None and d.connack.value == NOT_AUTHORIZED, d.connack
    assert d.wait_disconnected()
    cid = bridge.client_id(dev, registry)
    assert wait_for(lambda: f"refused {cid}: {rule}" in bridge.log(), 2.0), bridge.log()[-2000:]
    assert token not in bridge.log()


@pytest.mark.parametrize("case", list(JWT_CASES))
def test_each_broken_jwt_rule_is_refused_at_connect(bridge: Bridge, case: str) -> None:
    """One JWT rule broken at a time: CONNACK "not authorized"; the broker's log names the
    rule, never the token."""
    change, rule = JWT_CASES[case]
    key = ec_key()
    dev = bridge.create_device(key)
    _assert_refused(bridge, dev, _broken_jwt(bridge, key, change), rule, None)


@pytest.mark.parametrize("case", list(DEVICE_CASES))
def test_a_good_jwt_is_refused_for_a_bad_credential_device_or_registry(
    bridge: Bridge, case: str
) -> None:
    key = ec_key()
    registry = None
    cred = {"publicKey": {"format": "ES256_PEM", "key": public_pem(key)}}
    body: dict[str, Any] = {}
    if case == "mqtt_disabled":
        registry = f"off{uuid.uuid4().hex[:10]}"
        bridge.create_registry(registry, mqttConfig={"mqttEnabledState": "MQTT_DISABLED"})
    elif case == "blocked_device":
        body["blocked"] = True
    elif case == "expired_credential":
        body["credentials"] = [{**cred, "expirationTime": "2020-01-01T00:00:00Z"}]
    dev = bridge.create_device(None if "credentials" in body else key, registry=registry, **body)
    if case == "removed_credential":
        # two keys, the first removed: its JWT is refused while the other's still works
        other = ec_key()
        resp = bridge.api(
            "PATCH",
            bridge.device_path(dev),
            params={"updateMask": "credentials"},
            json={
                "credentials": [{"publicKey": {"format": "ES256_PEM", "key": public_pem(other)}}]
            },
        )
        assert resp.status_code == 200, resp.text
        still = bridge.device(dev, bridge.jwt(other))
        assert still.accepted, still.connack
        still.close()
    _assert_refused(bridge, dev, bridge.jwt(key), DEVICE_CASES[case], registry)


def test_the_connection_closes_when_the_jwt_expires(bridge: Bridge) -> None:
    key = ec_key()
    dev = bridge.create_device(key)
    start = time.time()
    d = bridge.device(dev, make_jwt(key, project=bridge.project, now=start, lifetime=3))
    assert d.accepted, d.connack
    assert not d.wait_disconnected(1.0)  # alive while the token is
    assert d.wait_disconnected(6.0)
    assert time.time() - start >= 1.5


def test_another_devices_topics_are_refused(bridge: Bridge) -> None:
    mine, theirs = ec_key(), ec_key()
    dev, other = bridge.create_device(mine), bridge.create_device(theirs)
    d = bridge.device(dev, bridge.jwt(mine))
    assert d.accepted
    assert d.subscribe(f"/devices/{other}/config", 1) == [128]
    assert d.subscribe(f"/devices/{other}/commands/#", 0) == [128]
    assert d.subscribe("#", 0) == [128]
    assert not d.disconnected
    # publishing to another device's topic closes the connection, as Cloud IoT does
    d.publish(f"/devices/{other}/events", b"forged")
    assert d.wait_disconnected()
    time.sleep(0.3)
    assert bridge.stored_events(other) == []


def test_qos2_publish_closes_the_connection(bridge: Bridge) -> None:
    key = ec_key()
    dev = bridge.create_device(key)
    d = bridge.device(dev, bridge.jwt(key))
    assert d.accepted
    d.publish(f"/devices/{dev}/events", b"q2", qos=2, timeout=1.0)
    assert d.wait_disconnected()
    time.sleep(0.3)
    assert bridge.stored_events(dev) == []


def test_gateway_attaches_a_bound_device_but_not_an_unbound_one(bridge: Bridge) -> None:
    gw_key = ec_key()
    gw = bridge.create_device(
        gw_key,
        gatewayConfig={"gatewayType": "GATEWAY", "gatewayAuthMethod": "ASSOCIATION_ONLY"},
    )
    child, stranger = bridge.create_device(None), bridge.create_device(None)
    resp = bridge.api(
        "POST",
        bridge.registry_path() + ":bindDeviceToGateway",
        json={"gatewayId": gw, "deviceId": child},
    )
    assert resp.status_code == 200, resp.text
    modify_config(bridge, child, b"child-config")

    g = bridge.device(gw, bridge.jwt(gw_key))
    assert g.accepted, g.connack
    assert g.subscribe(f"/devices/{gw}/errors", 0) == [0]
    # before attaching, the child's config is not the gateway's to read
    assert g.subscribe(f"/devices/{child}/config", 1) == [128]

    assert g.publish(f"/devices/{child}/attach", b"{}")
    assert g.subscribe(f"/devices/{child}/config", 1) == [1]
    assert g.next_message()[:2] == (f"/devices/{child}/config", b"child-config")
    assert g.publish(f"/devices/{child}/events", b"via-gateway")
    assert [e.data for e in bridge.wait_events(child, 1)] == [b"via-gateway"]

    # an unbound device: refused, with the reason on the gateway's errors topic
    g.publish(f"/devices/{stranger}/attach", b"{}")
    topic, payload, _ = g.next_message()
    assert topic == f"/devices/{gw}/errors"
    error = json.loads(payload)
    assert error["device_id"] == stranger and "not bound" in error["description"]
    assert not g.disconnected
    # and the gateway may not speak for it
    g.publish(f"/devices/{stranger}/events", b"forged")
    assert g.wait_disconnected()
    assert bridge.stored_events(stranger) == []


def test_a_non_gateway_sending_attach_is_disconnected(bridge: Bridge) -> None:
    key = ec_key()
    dev, other = bridge.create_device(key), bridge.create_device(None)
    d = bridge.device(dev, bridge.jwt(key))
    assert d.accepted
    d.publish(f"/devices/{other}/attach", b"{}")
    assert d.wait_disconnected()


def test_connect_over_secure_websockets(bridge: Bridge) -> None:
    key = ec_key()
    dev = bridge.create_device(key)
    d = bridge.device(dev, bridge.jwt(key), transport="websockets")
    assert d.accepted, d.connack
    assert d.publish(f"/devices/{dev}/events", b"over-wss")
    assert [e.data for e in bridge.wait_events(dev, 1)] == [b"over-wss"]
    d.close()


def test_a_reconnect_with_the_same_client_id_replaces_the_old_connection(bridge: Bridge) -> None:
    """State is per connection: the old connection's end (reported in a later sync) must
    not cut the new one, nor may the new one inherit the old one's session."""
    key = ec_key()
    dev = bridge.create_device(key)
    first = bridge.device(dev, bridge.jwt(key))
    assert first.accepted
    second = bridge.device(dev, bridge.jwt(key))
    assert second.accepted
    assert first.wait_disconnected()
    time.sleep(0.5)  # a few syncs: the first session's disconnect reaches the plane
    assert not second.disconnected
    assert second.publish(f"/devices/{dev}/events", b"from-second")
    assert [e.data for e in bridge.wait_events(dev, 1)] == [b"from-second"]
    assert second.subscribe(f"/devices/{dev}/commands/#", 0) == [0]
    sent = bridge.api(
        "POST", bridge.device_path(dev) + ":sendCommandToDevice", json={"binaryData": b64(b"c")}
    )
    assert sent.status_code == 200, sent.text
    assert second.next_message()[:2] == (f"/devices/{dev}/commands", b"c")
    second.close()


def test_blocking_a_connected_device_disconnects_it(bridge: Bridge) -> None:
    key = ec_key()
    dev = bridge.create_device(key)
    d = bridge.device(dev, bridge.jwt(key))
    assert d.accepted
    resp = bridge.api(
        "PATCH", bridge.device_path(dev), params={"updateMask": "blocked"}, json={"blocked": True}
    )
    assert resp.status_code == 200, resp.text
    assert d.wait_disconnected()


def test_the_supervisor_restarts_a_crashed_bridge(bridge: Bridge) -> None:
    """Last in the module: the broker dies (SIGKILL) and the supervisor's monitor starts it
    again, like any other service; devices connect again."""
    sup = bridge.supervisor
    sup.backoff_max_s = 0.5
    sup.start_monitor(health=False)
    child = next(c for c in sup.children if c.name == "bridge")
    old_pid = child.proc.pid
    os.kill(old_pid, signal.SIGKILL)
    assert wait_for(lambda: child.restarts == 1 and child.state == "running", 10.0)
    assert child.proc.pid != old_pid
    assert wait_for(lambda: probe(bridge.settings), 5.0)
    key = ec_key()
    dev = bridge.create_device(key)
    d = bridge.device(dev, bridge.jwt(key))
    assert d.accepted, d.connack
    assert d.publish(f"/devices/{dev}/events", b"after-restart")
    assert [e.data for e in bridge.wait_events(dev, 1)] == [b"after-restart"]
