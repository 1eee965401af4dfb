"""The HTTP device bridge (``cloudiotdevice`` v1: ``:publishEvent``, ``:setState``,
``GET .../config``) on the real registry app and a SQLite store: every route, every JWT rule
refused, HTTP disabled, a blocked device, another device's JWT, and config versions.

Devices sign with software keys here (ES256 and RS256); the chip-minted tokens are the field
device's tests. The router is included by hand until the integrator mounts it."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from fastapi import FastAPI
from fastapi.testclient import TestClient

from provisioner.cloud import device_data, events, store
from provisioner.cloud.auth import self_authenticated
from tests.cloud.helpers import credential, public_key_pem, rsa_key
from tests.cloud.inprocess import PROJECT, REGISTRY, REGISTRY_NAME, TOKENS, make_registry

Key = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
ADMIN = {"Authorization": f"Bearer {TOKENS[max(TOKENS)]}"}


# --- device JWTs with software keys -----------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def mint(
    key: Key | None,
    *,
    aud: str = PROJECT,
    iat: float | None = None,
    exp: float | None = None,
    alg: str | None = None,
    lifetime: float = 600,
) -> str:
    """A device JWT as Cloud IoT devices make them; ``alg`` overrides the header (``none``,
    ``HS256``) to build the tokens the bridge must refuse."""
    now = time.time()
    iat = now if iat is None else iat
    exp = iat + lifetime if exp is None else exp
    if alg is None:
        alg = "ES256" if isinstance(key, ec.EllipticCurvePrivateKey) else "RS256"
    header = _b64url(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    claims = _b64url(json.dumps({"iat": int(iat), "exp": int(exp), "aud": aud}).encode())
    signing_input = f"{header}.{claims}".encode()
    if alg == "none":
        return f"{header}.{claims}."
    if alg == "HS256":
        mac = hmac.HMAC(b"guessed-secret", hashes.SHA256())
        mac.update(signing_input)
        return f"{header}.{claims}.{_b64url(mac.finalize())}"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")  # JWS: raw r||s, not DER
    else:
        assert key is not None
        sig = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    return f"{header}.{claims}.{_b64url(sig)}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Device:
    id: str
    key: Key
    num_id: int = 0

    @property
    def path(self) -> str:
        return f"/v1/{REGISTRY_NAME}/devices/{self.id}"

    @property
    def client_id(self) -> str:
        return f"{REGISTRY_NAME}/devices/{self.id}"

    def jwt(self, **kw: Any) -> str:
        return mint(self.key, **kw)


def add_device(
    c: TestClient,
    key: Key,
    *,
    registry: str = REGISTRY,
    fmt: str | None = None,
    **fields: Any,
) -> Device:
    """A device created through the registry API (a service account's token)."""
    dev_id = f"dev-{uuid.uuid4().hex[:12]}"
    fmt = fmt or ("ES256_PEM" if isinstance(key, ec.EllipticCurvePrivateKey) else "RSA_PEM")
    body = {"id": dev_id, "credentials": [credential(fmt, public_key_pem(key))], **fields}
    r = c.post(
        f"/v1/projects/{PROJECT}/locations/europe-west1/registries/{registry}/devices",
        json=body,
        headers=ADMIN,
    )
    assert r.status_code == 200, r.text
    return Device(dev_id, key, int(r.json()["numId"]))


@dataclass
class Bridge:
    client: TestClient
    app: FastAPI

    def stored(self) -> store.StoredRegistry:
        reg = store.get_registry(self.app.state.engine, PROJECT, "europe-west1", REGISTRY)
        assert reg is not None
        return reg


def bridge_app(tmp: Path) -> FastAPI:
    """The registry app: it serves the device bridge's routes itself."""
    return make_registry(tmp).app


@pytest.fixture(scope="module")
def bridge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bridge]:
    app = bridge_app(tmp_path_factory.mktemp("http-bridge"))
    with TestClient(app) as c:
        yield Bridge(c, app)


@pytest.fixture(scope="module")
def dev(bridge: Bridge) -> Device:
    return add_device(bridge.client, ec.generate_private_key(ec.SECP256R1()))


def error_of(r: Any) -> dict[str, Any]:
    body = r.json()
    assert set(body) == {"error"}, body
    err: dict[str, Any] = body["error"]
    assert err["code"] == r.status_code
    return err


# --- the routes -----------------------------------------------------------------------------


def test_publish_event_stores_the_event_with_its_subfolder(bridge: Bridge, dev: Device) -> None:
    c = bridge.client
    payload = b"\xfb\xff temperature=21.5"
    r = c.post(
        f"{dev.path}:publishEvent",
        json={"binaryData": base64.b64encode(payload).decode(), "subFolder": "climate"},
        headers=bearer(dev.jwt()),
    )
    assert r.status_code == 200, r.text
    assert r.json() == {}
    # Google's sample: snake_case and URL-safe base64 without padding.
    r = c.post(
        f"{dev.path}:publishEvent",
        json={"binary_data": base64.urlsafe_b64encode(payload).decode().rstrip("=")},
        headers=bearer(dev.jwt()),
    )
    assert r.status_code == 200, r.text
    got = events.read_events(
        bridge.app.state.engine, registry=bridge.stored(), topic=None, after=0, limit=100
    )
    mine = [(e.subfolder, e.data, e.kind) for e in got if e.device_id == dev.id]
    assert mine == [("climate", payload, "event"), ("", payload, "event")]
    device = store.get_device(bridge.app.state.engine, bridge.stored(), dev.id)
    assert device is not None and device.last_event_time is not None


def test_set_state_records_the_state(bridge: Bridge, dev: Device) -> None:
    c = bridge.client
    for data in (b"booting", b"running"):
        r = c.post(
            f"{dev.path}:setState",
            json={"state": {"binaryData": base64.b64encode(data).decode()}},
            headers=bearer(dev.jwt()),
        )
        assert r.status_code == 200, r.text
        assert r.json() == {}
    states = device_data.list_states(bridge.app.state.engine, dev.num_id)
    assert [s.data for s in states[:2]] == [b"running", b"booting"]
    # The admin's view of it (states.list) needs a service account, not the device's JWT.
    r = c.get(f"{dev.path}/states", headers=bearer(dev.jwt()))
    assert r.status_code == 401


def test_config_versions_over_http(bridge: Bridge) -> None:
    c = bridge.client
    dev = add_device(c, rsa_key(2048))  # RS256 this time
    engine = bridge.app.state.engine
    reg = bridge.stored()
    device = store.get_device(engine, reg, dev.id)
    assert device is not None

    # A device nobody configured has version 1, empty, as in Cloud IoT.
    r = c.get(f"{dev.path}/config", headers=bearer(dev.jwt()))
    assert r.status_code == 200, r.text
    assert r.json() == {"version": "1", "binaryData": ""}

    device_data.modify_config(engine, reg, device, b"v2")
    device_data.modify_config(engine, reg, device, b"v3")
    for query in ("", "?localVersion=0", "?local_version=0", "?local_version=2", "?localVersion=1"):
        r = c.get(f"{dev.path}/config{query}", headers=bearer(dev.jwt()))
        assert r.status_code == 200, (query, r.text)
        assert r.json() == {"version": "3", "binaryData": base64.b64encode(b"v3").decode()}
    # The device holds the latest: nothing newer to send, and that is an acknowledgement.
    r = c.get(f"{dev.path}/config?local_version=3", headers=bearer(dev.jwt()))
    assert r.status_code == 200 and r.json() == {"version": "3"}
    # Ahead of the registry: OUT_OF_RANGE.
    r = c.get(f"{dev.path}/config?localVersion=4", headers=bearer(dev.jwt()))
    assert r.status_code == 400
    assert error_of(r)["status"] == "OUT_OF_RANGE"
    r = c.get(f"{dev.path}/config?localVersion=-1", headers=bearer(dev.jwt()))
    assert error_of(r)["status"] == "INVALID_ARGUMENT"

    latest = device_data.latest_config(engine, dev.num_id)
    assert latest is not None and latest.version == 3 and latest.device_ack_time is not None
    stamped = store.get_device(engine, reg, dev.id)
    assert stamped is not None
    assert stamped.last_config_send_time is not None
    assert stamped.last_config_ack_time is not None

    # By numId too, as Cloud IoT accepted.
    r = c.get(f"/v1/{REGISTRY_NAME}/devices/{dev.num_id}/config", headers=bearer(dev.jwt()))
    assert r.status_code == 200 and r.json()["version"] == "3"

    # configVersions.list is the admin route beside it: a device JWT does not open it.
    r = c.get(f"{dev.path}/configVersions", headers=bearer(dev.jwt()))
    assert r.status_code == 401
    r = c.get(f"{dev.path}/configVersions")
    assert r.status_code == 401
    r = c.get(f"{dev.path}/configVersions", headers=ADMIN)
    assert r.status_code == 200, r.text
    assert [v["version"] for v in r.json()["deviceConfigs"]] == ["3", "2", "1"]
    # Nor may a device set its own config.
    r = c.post(
        f"{dev.path}:modifyCloudToDeviceConfig",
        json={"binaryData": "eA=="},
        headers=bearer(dev.jwt()),
    )
    assert r.status_code == 401


@pytest.mark.parametrize(
    ("method", "path", "own_check"),
    [
        ("POST", f"/v1/{REGISTRY_NAME}/devices/d1:publishEvent", True),
        ("POST", f"/v1/{REGISTRY_NAME}/devices/123:setState", True),
        ("GET", f"/v1/{REGISTRY_NAME}/devices/d1/config", True),
        ("GET", f"/v1/{REGISTRY_NAME}/devices/d1/configVersions", False),
        ("GET", f"/v1/{REGISTRY_NAME}/devices/d1/config/", False),
        ("DELETE", f"/v1/{REGISTRY_NAME}/devices/d1/config", False),
        ("GET", f"/v1/{REGISTRY_NAME}/devices/d1:publishEvent", False),
        ("POST", f"/v1/{REGISTRY_NAME}/devices/d1:modifyCloudToDeviceConfig", False),
        ("POST", f"/v1/{REGISTRY_NAME}/devices/d1:sendCommandToDevice", False),
        ("POST", f"/v1/{REGISTRY_NAME}/devices/a:b:publishEvent", False),
        ("POST", f"/v1/{REGISTRY_NAME}/devices/d1/x:setState", False),
        ("POST", f"/v1/{REGISTRY_NAME}:bindDeviceToGateway", False),
        ("POST", "/hooks/emqx/authn", True),
        ("POST", "/bridge/v1/sync", True),
        ("POST", "/hooksx", False),
    ],
)
def test_which_routes_skip_the_service_account_check(
    method: str, path: str, own_check: bool
) -> None:
    assert self_authenticated(method, path) is own_check


def test_bad_requests_are_invalid_argument(bridge: Bridge, dev: Device) -> None:
    c = bridge.client
    cases: list[Any] = [
        {"binaryData": "not base64!"},
        {"binaryData": 12},
        {"binaryData": "aGk=", "unknownField": 1},
        {"binaryData": "aGk=", "subFolder": "a/#"},
        ["a list"],
    ]
    for body in cases:
        r = c.post(f"{dev.path}:publishEvent", json=body, headers=bearer(dev.jwt()))
        assert r.status_code == 400, (body, r.text)
        assert error_of(r)["status"] == "INVALID_ARGUMENT"
    r = c.post(f"{dev.path}:setState", json={"state": "b2s="}, headers=bearer(dev.jwt()))
    assert error_of(r)["status"] == "INVALID_ARGUMENT"
    too_big = base64.b64encode(b"x" * (64 * 1024 + 1)).decode()
    r = c.post(
        f"{dev.path}:setState", json={"state": {"binaryData": too_big}}, headers=bearer(dev.jwt())
    )
    assert error_of(r)["status"] == "INVALID_ARGUMENT"
    r = c.post(
        f"{dev.path}:publishEvent",
        json={"binaryData": "aGk=", "gatewayInfo": {"gatewayId": "gw", "delegatedDeviceId": "d"}},
        headers=bearer(dev.jwt()),
    )
    assert error_of(r)["status"] == "INVALID_ARGUMENT"


def test_gateways_act_for_bound_devices(bridge: Bridge) -> None:
    c = bridge.client
    engine = bridge.app.state.engine
    gw = add_device(
        c,
        ec.generate_private_key(ec.SECP256R1()),
        gatewayConfig={"gatewayType": "GATEWAY", "gatewayAuthMethod": "ASSOCIATION_ONLY"},
    )
    child = add_device(c, ec.generate_private_key(ec.SECP256R1()))
    stranger = add_device(c, ec.generate_private_key(ec.SECP256R1()))
    r = c.post(
        f"/v1/{REGISTRY_NAME}:bindDeviceToGateway",
        json={"gatewayId": gw.id, "deviceId": child.id},
        headers=ADMIN,
    )
    assert r.status_code == 200, r.text
    stored_child = store.get_device(engine, bridge.stored(), child.id)
    assert stored_child is not None
    device_data.modify_config(engine, bridge.stored(), stored_child, b"child-cfg")

    # The gateway's path and JWT, acting for the child.
    r = c.post(
        f"{gw.path}:publishEvent",
        json={"binaryData": "aGk=", "gatewayInfo": {"delegatedDeviceId": child.id}},
        headers=bearer(gw.jwt()),
    )
    assert r.status_code == 200, r.text
    r = c.get(
        f"{gw.path}/config?gatewayInfo.delegatedDeviceId={child.id}", headers=bearer(gw.jwt())
    )
    assert r.json() == {"version": "2", "binaryData": base64.b64encode(b"child-cfg").decode()}
    # The child's path and JWT, through the gateway (proto spelling).
    r = c.post(
        f"{child.path}:setState",
        json={"state": {"binary_data": "b2s="}, "gateway_info": {"gateway_id": gw.id}},
        headers=bearer(child.jwt()),
    )
    assert r.status_code == 200, r.text
    got = events.read_events(engine, registry=bridge.stored(), topic=None, after=0, limit=1000)
    assert [e.device_id for e in got if e.device_id in (gw.id, child.id)] == [child.id]
    assert [st.data for st in device_data.list_states(engine, child.num_id)] == [b"ok"]
    seen = store.get_device(engine, bridge.stored(), child.id)
    assert seen is not None and seen.last_accessed_gateway_id == gw.id

    # Not bound, not a gateway, the wrong JWT: refused.
    r = c.post(
        f"{gw.path}:publishEvent",
        json={"binaryData": "aGk=", "gatewayInfo": {"delegatedDeviceId": stranger.id}},
        headers=bearer(gw.jwt()),
    )
    assert r.status_code == 403 and "not bound" in error_of(r)["message"]
    r = c.post(
        f"{stranger.path}:publishEvent",
        json={"binaryData": "aGk=", "gatewayInfo": {"delegatedDeviceId": child.id}},
        headers=bearer(stranger.jwt()),
    )
    assert r.status_code == 400 and "not a gateway" in error_of(r)["message"]
    r = c.post(
        f"{gw.path}:publishEvent",
        json={"binaryData": "aGk=", "gatewayInfo": {"delegatedDeviceId": child.id}},
        headers=bearer(child.jwt()),
    )
    assert r.status_code == 401


# --- who may call -----------------------------------------------------------------------------


def test_no_jwt_is_unauthenticated(bridge: Bridge, dev: Device) -> None:
    c = bridge.client
    for r in (
        c.post(f"{dev.path}:publishEvent", json={"binaryData": "aGk="}),
        c.post(f"{dev.path}:setState", json={"state": {}}, headers={"Authorization": "Basic x"}),
        c.get(f"{dev.path}/config"),
    ):
        assert r.status_code == 401
        assert error_of(r)["status"] == "UNAUTHENTICATED"


# Times are taken when the test runs, not when the module is collected (a suite can take
# longer than the 10-minute skew between the two).
JWT_RULES: dict[str, Callable[[], dict[str, Any]]] = {
    "exp": lambda: {"iat": time.time() - 700, "exp": time.time() - 5},  # expired
    "iat": lambda: {"iat": time.time() + 900},  # more than 10 minutes ahead
    "lifetime": lambda: {"lifetime": 24 * 3600 + 601 + 60},  # over 24 h + the skew
    "aud": lambda: {"aud": "someone-elses-project"},
    "alg": lambda: {"alg": "none"},
}


@pytest.mark.parametrize("rule", [*JWT_RULES, "HS256", "signature"])
def test_each_jwt_rule_is_refused_and_named(bridge: Bridge, dev: Device, rule: str) -> None:
    if rule == "HS256":
        token, expected = dev.jwt(alg="HS256"), "alg"
    elif rule == "signature":
        token, expected = mint(ec.generate_private_key(ec.SECP256R1())), "signature"
    else:
        token, expected = dev.jwt(**JWT_RULES[rule]()), rule
    for r in (
        bridge.client.post(
            f"{dev.path}:publishEvent", json={"binaryData": "aGk="}, headers=bearer(token)
        ),
        bridge.client.get(f"{dev.path}/config", headers=bearer(token)),
    ):
        assert r.status_code == 401, (rule, r.text)
        err = error_of(r)
        assert err["status"] == "UNAUTHENTICATED"
        assert f"jwt {expected}" in err["message"], err["message"]
        assert token.split(".")[1] not in err["message"]


def test_another_devices_jwt_is_refused(bridge: Bridge, dev: Device) -> None:
    other = add_device(bridge.client, ec.generate_private_key(ec.SECP256R1()))
    r = bridge.client.post(
        f"{dev.path}:publishEvent", json={"binaryData": "aGk="}, headers=bearer(other.jwt())
    )
    assert r.status_code == 401
    assert "jwt signature" in error_of(r)["message"]
    r = bridge.client.get(f"{dev.path}/config", headers=bearer(other.jwt()))
    assert r.status_code == 401


def test_expired_and_removed_credentials_are_refused(bridge: Bridge) -> None:
    c = bridge.client
    key = ec.generate_private_key(ec.SECP256R1())
    past = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    expired = add_device(
        c, key, credentials=[credential("ES256_PEM", public_key_pem(key), expirationTime=past)]
    )
    r = c.get(f"{expired.path}/config", headers=bearer(expired.jwt()))
    assert r.status_code == 401
    assert "jwt credential" in error_of(r)["message"]

    dev = add_device(c, ec.generate_private_key(ec.SECP256R1()))
    token = dev.jwt()
    assert c.get(f"{dev.path}/config", headers=bearer(token)).status_code == 200
    new_key = ec.generate_private_key(ec.SECP256R1())
    r = c.patch(
        f"{dev.path}?updateMask=credentials",
        json={"credentials": [credential("ES256_PEM", public_key_pem(new_key))]},
        headers=ADMIN,
    )
    assert r.status_code == 200, r.text
    r = c.get(f"{dev.path}/config", headers=bearer(token))
    assert r.status_code == 401
    assert c.get(f"{dev.path}/config", headers=bearer(mint(new_key))).status_code == 200


def test_blocked_device_is_refused(bridge: Bridge) -> None:
    c = bridge.client
    dev = add_device(c, ec.generate_private_key(ec.SECP256R1()))
    r = c.patch(f"{dev.path}?updateMask=blocked", json={"blocked": True}, headers=ADMIN)
    assert r.status_code == 200, r.text
    r = c.post(
        f"{dev.path}:setState", json={"state": {"binaryData": "aGk="}}, headers=bearer(dev.jwt())
    )
    assert r.status_code == 403
    assert "blocked" in error_of(r)["message"]


def test_http_disabled_registry_is_refused(bridge: Bridge) -> None:
    c = bridge.client
    r = c.post(
        f"/v1/projects/{PROJECT}/locations/europe-west1/registries",
        json={"id": "no-http", "httpConfig": {"httpEnabledState": "HTTP_DISABLED"}},
        headers=ADMIN,
    )
    assert r.status_code == 200, r.text
    dev = add_device(c, ec.generate_private_key(ec.SECP256R1()), registry="no-http")
    path = f"/v1/projects/{PROJECT}/locations/europe-west1/registries/no-http/devices/{dev.id}"
    r = c.post(f"{path}:publishEvent", json={"binaryData": "aGk="}, headers=bearer(dev.jwt()))
    assert r.status_code == 403
    assert "HTTP bridge is disabled" in error_of(r)["message"]


def test_unknown_registry_or_device_is_not_found(bridge: Bridge, dev: Device) -> None:
    c = bridge.client
    r = c.get(f"/v1/{REGISTRY_NAME}/devices/nobody-here/config", headers=bearer(dev.jwt()))
    assert r.status_code == 404
    r = c.get(
        f"/v1/projects/{PROJECT}/locations/europe-west1/registries/nope/devices/{dev.id}/config",
        headers=bearer(dev.jwt()),
    )
    assert r.status_code == 404
