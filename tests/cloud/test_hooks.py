"""The external brokers' auth hooks, with requests shaped exactly as each broker sends them
(EMQX 5 HTTP authn/authz from its body templates, mosquitto-go-auth's http backend in JSON and
form modes, VerneMQ's webhooks with their ``vernemq-hook`` header), on the real registry app
and device plane: allow and deny, ``expire_at`` = the JWT's ``exp``, per-topic subscribe
answers, and callers refused by address or token. The router is included by hand until the
integrator mounts it."""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import FastAPI
from fastapi.testclient import TestClient

from provisioner.cloud.tokens import token_hash
from tests.cloud.inprocess import make_registry, served
from tests.cloud.test_http_bridge import ADMIN, Device, add_device

BRIDGE_TOKEN = "bridge-token-for-tests"
BROKER = ("127.0.0.1", 41234)


@dataclass
class Hooks:
    app: FastAPI
    client: TestClient  # calls from 127.0.0.1, inside hook_allow
    dev: Device
    other: Device


@pytest.fixture(scope="module")
def hooks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hooks]:
    # the hooks as the registry serves them (allowed callers: loopback, the default)
    app = make_registry(tmp_path_factory.mktemp("hooks"), token_hash(BRIDGE_TOKEN)).app
    with TestClient(app, client=BROKER) as c:
        dev = add_device(c, ec.generate_private_key(ec.SECP256R1()))
        other = add_device(c, ec.generate_private_key(ec.SECP256R1()))
        yield Hooks(app, c, dev, other)


def claims_exp(token: str) -> int:
    import json

    part = token.split(".")[1]
    exp: int = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))["exp"]
    return exp


# --- EMQX 5 -----------------------------------------------------------------------------------


def emqx_authn_body(dev: Device, password: str) -> dict[str, str]:
    """What EMQX posts from the body template in docs/field.md (every placeholder rendered
    as a string; ``${cert_common_name}`` is empty without a client certificate)."""
    return {
        "clientid": dev.client_id,
        "username": "unused",
        "password": password,
        "peerhost": "10.1.2.3",
        "cert_common_name": "",
    }


def test_emqx_authn_allows_a_valid_jwt_until_its_exp(hooks: Hooks) -> None:
    token = hooks.dev.jwt(lifetime=1200)
    r = hooks.client.post("/hooks/emqx/authn", json=emqx_authn_body(hooks.dev, token))
    assert r.status_code == 200
    assert r.json() == {"result": "allow", "is_superuser": False, "expire_at": claims_exp(token)}
    # EMQX may also present the bridge token.
    r = hooks.client.post(
        "/hooks/emqx/authn",
        json=emqx_authn_body(hooks.dev, token),
        headers={"Authorization": f"Bearer {BRIDGE_TOKEN}"},
    )
    assert r.json()["result"] == "allow"


def test_emqx_authn_denies(hooks: Hooks, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    expired = hooks.dev.jwt(exp=1_000_000_000, iat=999_999_000)
    for body in (
        emqx_authn_body(hooks.dev, expired),
        emqx_authn_body(hooks.dev, hooks.other.jwt()),  # another device's token
        emqx_authn_body(hooks.dev, ""),
        {**emqx_authn_body(hooks.dev, hooks.dev.jwt()), "clientid": "not-a-device"},
    ):
        r = hooks.client.post("/hooks/emqx/authn", json=body)
        assert r.status_code == 200
        assert r.json() == {"result": "deny"}
    assert expired not in caplog.text  # the password is never logged
    assert "jwt exp" in caplog.text


def test_emqx_authz(hooks: Hooks) -> None:
    d, o = hooks.dev.id, hooks.other.id

    def authz(topic: str, action: str, qos: str = "1") -> str:
        body = {
            "clientid": hooks.dev.client_id,
            "username": "unused",
            "topic": topic,
            "action": action,
            "qos": qos,
        }
        r = hooks.client.post("/hooks/emqx/authz", json=body)
        assert r.status_code == 200
        result: str = r.json()["result"]
        return result

    assert authz(f"/devices/{d}/events", "publish") == "allow"
    assert authz(f"/devices/{d}/events/climate", "publish", "0") == "allow"
    assert authz(f"/devices/{d}/state", "publish") == "allow"
    assert authz(f"/devices/{d}/events", "publish", "2") == "deny"  # QoS 2
    assert authz(f"/devices/{o}/events", "publish") == "deny"
    assert authz(f"/devices/{d}/config", "subscribe") == "allow"
    assert authz(f"/devices/{d}/commands/#", "subscribe") == "allow"
    assert authz(f"/devices/{o}/config", "subscribe") == "deny"
    assert authz("#", "subscribe") == "deny"
    assert authz(f"/devices/{d}/config", "publish") == "deny"
    # A GET template arrives as a query string.
    query = {"clientid": hooks.dev.client_id, "topic": f"/devices/{d}/state", "action": "publish"}
    assert hooks.client.get("/hooks/emqx/authz", params=query).json() == {"result": "allow"}


def test_emqx_authn_takes_no_jwt_from_the_url(hooks: Hooks) -> None:
    query = {"clientid": hooks.dev.client_id, "password": hooks.dev.jwt()}
    assert hooks.client.get("/hooks/emqx/authn", params=query).status_code == 405
    r = hooks.client.post("/hooks/emqx/authn", params=query)
    assert r.json() == {"result": "deny"}


# --- mosquitto-go-auth ------------------------------------------------------------------------


def test_goauth_user_json_and_form(hooks: Hooks) -> None:
    c, dev = hooks.client, hooks.dev
    good = {"username": "unused", "password": dev.jwt(), "clientid": dev.client_id}
    r = c.post("/hooks/goauth/user", json=good)
    assert (r.status_code, r.json()) == (200, {"Ok": True, "Error": ""})
    r = c.post("/hooks/goauth/user", data=good)  # auth_opt_http_params_mode form
    assert (r.status_code, r.json()) == (200, {"Ok": True, "Error": ""})
    bad = {**good, "password": hooks.other.jwt()}
    r = c.post("/hooks/goauth/user", json=bad)
    assert r.status_code == 403
    assert r.json()["Ok"] is False and r.json()["Error"].startswith("jwt signature")
    r = c.post("/hooks/goauth/superuser", json={"username": "unused"})
    assert r.status_code == 403 and r.json()["Ok"] is False


@pytest.mark.parametrize(
    ("topic", "acc", "ok"),
    [
        ("/devices/{d}/events", 2, True),
        ("/devices/{d}/state", 2, True),
        ("/devices/{o}/events", 2, False),
        ("/devices/{d}/config", 1, True),  # read: a delivery to the client
        ("/devices/{d}/commands/reboot", 1, True),
        ("/devices/{d}/config", 4, True),  # subscribe
        ("/devices/{d}/commands/#", 4, True),
        ("/devices/{o}/config", 4, False),
        ("/devices/{d}/config", 3, False),  # read+write: a device never writes its config
        ("/devices/{d}/config", 8, False),
    ],
)
def test_goauth_acl(hooks: Hooks, topic: str, acc: int, ok: bool) -> None:
    body = {
        "username": "unused",
        "clientid": hooks.dev.client_id,
        "topic": topic.format(d=hooks.dev.id, o=hooks.other.id),
        "acc": acc,
    }
    r = hooks.client.post("/hooks/goauth/acl", json=body)
    assert r.status_code == (200 if ok else 403)
    assert r.json()["Ok"] is ok
    r = hooks.client.post("/hooks/goauth/acl", data={**body, "acc": str(acc)})
    assert r.status_code == (200 if ok else 403)


# --- VerneMQ ----------------------------------------------------------------------------------


def verne(c: TestClient, hook: str, body: dict[str, Any]) -> Any:
    r = c.post("/hooks/vernemq", json=body, headers={"vernemq-hook": hook})
    assert r.status_code == 200, r.text
    return r.json()


def test_vernemq_auth_on_register(hooks: Hooks) -> None:
    c, dev = hooks.client, hooks.dev
    body = {
        "peer_addr": "10.1.2.3",
        "peer_port": 51234,
        "username": "unused",
        "password": dev.jwt(),
        "mountpoint": "",
        "client_id": dev.client_id,
        "clean_session": True,
    }
    assert verne(c, "auth_on_register", body) == {"result": "ok"}
    refused = {"result": {"error": "not_allowed"}}
    assert verne(c, "auth_on_register", {**body, "password": hooks.other.jwt()}) == refused
    assert verne(c, "auth_on_register", {**body, "password": None, "username": None}) == refused
    m5 = {k: v for k, v in body.items() if k != "clean_session"}
    m5 |= {"clean_start": True, "properties": {}}
    assert verne(c, "auth_on_register_m5", m5) == {"result": "ok"}


def test_vernemq_auth_on_publish(hooks: Hooks) -> None:
    c, dev = hooks.client, hooks.dev
    body = {
        "username": "unused",
        "client_id": dev.client_id,
        "mountpoint": "",
        "qos": 1,
        "topic": f"/devices/{dev.id}/events/climate",
        "payload": base64.b64encode(b"t=21").decode(),
        "retain": False,
    }
    assert verne(c, "auth_on_publish", body) == {"result": "ok"}
    refused = {"result": {"error": "not_allowed"}}
    assert (
        verne(c, "auth_on_publish", {**body, "topic": f"/devices/{hooks.other.id}/state"})
        == refused
    )
    assert verne(c, "auth_on_publish", {**body, "qos": 2}) == refused
    assert verne(c, "auth_on_publish_m5", {**body, "properties": {}}) == {"result": "ok"}


def test_vernemq_auth_on_subscribe_answers_per_topic(hooks: Hooks) -> None:
    c, d, o = hooks.client, hooks.dev.id, hooks.other.id
    topics = [
        {"topic": f"/devices/{d}/config", "qos": 1},
        {"topic": f"/devices/{d}/commands/#", "qos": 2},
        {"topic": f"/devices/{o}/config", "qos": 1},
    ]
    body = {"client_id": hooks.dev.client_id, "mountpoint": "", "username": "unused"}
    assert verne(c, "auth_on_subscribe", {**body, "topics": topics}) == {
        "result": "ok",
        "topics": [
            {"topic": f"/devices/{d}/config", "qos": 1},
            {"topic": f"/devices/{d}/commands/#", "qos": 1},  # QoS 2 granted as 1
            {"topic": f"/devices/{o}/config", "qos": 128},
        ],
    }
    m5_topics = [
        {**t, "no_local": False, "rap": False, "retain_handling": "send_retain"} for t in topics
    ]
    answer = verne(c, "auth_on_subscribe_m5", {**body, "topics": m5_topics, "properties": {}})
    assert answer["result"] == "ok"
    assert [t["qos"] for t in answer["modifiers"]["topics"]] == [1, 1, 135]


def test_vernemq_unknown_hook(hooks: Hooks) -> None:
    r = hooks.client.post(
        "/hooks/vernemq", json={"client_id": "x"}, headers={"vernemq-hook": "on_deliver"}
    )
    assert r.status_code == 400


# --- who may call -----------------------------------------------------------------------------


def test_a_caller_outside_hook_allow_is_refused(hooks: Hooks) -> None:
    dev = hooks.dev
    outsider = TestClient(hooks.app, client=("192.0.2.7", 40000))
    calls = [
        ("/hooks/emqx/authn", emqx_authn_body(dev, dev.jwt()), {}),
        ("/hooks/emqx/authz", {"clientid": dev.client_id, "topic": "t", "action": "publish"}, {}),
        (
            "/hooks/goauth/user",
            {"username": "u", "password": dev.jwt(), "clientid": dev.client_id},
            {},
        ),
        ("/hooks/goauth/acl", {"clientid": dev.client_id, "topic": "t", "acc": 1}, {}),
        (
            "/hooks/vernemq",
            {"client_id": dev.client_id, "password": dev.jwt()},
            {"vernemq-hook": "auth_on_register"},
        ),
    ]
    for path, body, headers in calls:
        r = outsider.post(path, json=body, headers=headers)
        assert r.status_code == 403, path
        assert r.json()["Ok"] is False and r.json()["result"] == "deny"
        # Even with the bridge token: the address rule holds.
        r = outsider.post(
            path, json=body, headers={**headers, "Authorization": f"Bearer {BRIDGE_TOKEN}"}
        )
        assert r.status_code == 403, path
    # From an allowed address, a wrong bearer is refused too.
    r = hooks.client.post(
        "/hooks/emqx/authn",
        json=emqx_authn_body(dev, dev.jwt()),
        headers={"Authorization": "Bearer not-the-bridge-token"},
    )
    assert r.status_code == 403
    # An IPv4-mapped IPv6 loopback is loopback.
    mapped = TestClient(hooks.app, client=("::ffff:127.0.0.1", 40001))
    r = mapped.post("/hooks/emqx/authn", json=emqx_authn_body(dev, dev.jwt()))
    assert r.json()["result"] == "allow"


def test_hooks_need_no_service_account_but_the_admin_api_still_does(hooks: Hooks) -> None:
    r = hooks.client.get(f"{hooks.dev.path}")
    assert r.status_code == 401
    assert hooks.client.get(f"{hooks.dev.path}", headers=ADMIN).status_code == 200


def test_the_caller_address_is_the_real_peer(tmp_path: Path) -> None:
    """Over a real socket (uvicorn), the address rule sees the TCP peer: loopback is refused
    when hook_allow lists only another network, and accepted when it lists loopback."""
    body = {"clientid": "x", "topic": "/devices/x/events", "action": "publish"}
    for allow, status in ((["10.0.0.0/8"], 403), (["127.0.0.0/8", "::1"], 200)):
        app = make_registry(tmp_path / str(status), hook_allow=allow).app
        with served(app) as port:
            r = httpx.post(f"http://127.0.0.1:{port}/hooks/emqx/authz", json=body)
        assert r.status_code == status, allow
        assert r.json()["result"] == "deny"  # refused caller; or no such device
