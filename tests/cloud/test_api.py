"""The registry's HTTP API as Cloud IoT v1 clients see it: paths, proto3 JSON, errors."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tests.cloud.helpers import (
    RegistryProcess,
    certificate_pem,
    credential,
    public_key_pem,
    rsa_key,
)

NO_EXPIRY = "1970-01-01T00:00:00Z"
INT_ENUMS = "$alt=json;enum-encoding=int"  # what the official REST client appends


def post_device(
    rp: RegistryProcess, body: dict[str, Any], query: str = "", registry: str | None = None
) -> httpx.Response:
    with rp.http() as h:
        return h.post(f"{rp.parent_url(registry)}/devices{query}", json=body)


def get(rp: RegistryProcess, path: str, **params: Any) -> httpx.Response:
    with rp.http() as h:
        return h.get(f"{rp.parent_url()}{path}", params=params)


def assert_error(resp: httpx.Response, code: int, status: str, text: str = "") -> None:
    assert resp.status_code == code, resp.text
    err = resp.json()["error"]
    assert err["code"] == code and err["status"] == status
    assert text in err["message"], err["message"]


# --- authentication --------------------------------------------------------------------------


def test_healthz_needs_no_token(registry: RegistryProcess) -> None:
    resp = httpx.get(registry.url + "/healthz")
    assert resp.status_code == 200 and resp.json() == {"status": "ok"}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
    ],
    ids=["none", "empty", "wrong", "basic"],
)
def test_requests_without_the_token_are_unauthenticated(
    registry: RegistryProcess, headers: dict[str, str]
) -> None:
    for url in (registry.parent_url() + "/devices", registry.url + "/v1/no/such/path"):
        resp = httpx.get(url, headers=headers)
        assert_error(resp, 401, "UNAUTHENTICATED", "invalid authentication credentials")
        assert resp.headers["www-authenticate"].startswith("Bearer")


def test_scheme_is_case_insensitive(registry: RegistryProcess) -> None:
    resp = httpx.get(registry.parent_url(), headers={"Authorization": f"bearer {registry.token}"})
    assert resp.status_code == 200, resp.text


# --- devices ---------------------------------------------------------------------------------


def test_device_shape(registry: RegistryProcess, dev_id: str) -> None:
    pem = certificate_pem()
    resp = post_device(
        registry,
        {
            "id": dev_id,
            "credentials": [credential("ES256_X509_PEM", pem)],
            "blocked": True,
            "metadata": {"line": "l1", "batch-id": "7"},
        },
    )
    assert resp.status_code == 200, resp.text
    dev = resp.json()
    assert dev["id"] == dev_id
    assert dev["numId"].isdigit()  # uint64 is a string in proto3 JSON
    r = registry.station.settings.registry
    assert dev["name"] == (
        f"projects/{r.project}/locations/{r.location}/registries/{r.registry}"
        f"/devices/{dev['numId']}"
    )
    assert dev["credentials"] == [
        {"publicKey": {"format": "ES256_X509_PEM", "key": pem}, "expirationTime": NO_EXPIRY}
    ]
    assert dev["blocked"] is True and dev["metadata"] == {"line": "l1", "batch-id": "7"}
    assert get(registry, f"/devices/{dev_id}").json() == dev
    assert get(registry, f"/devices/{dev['numId']}").json() == dev


def test_duplicate_is_already_exists(registry: RegistryProcess, dev_id: str) -> None:
    body = {"id": dev_id, "credentials": [credential("ES256_X509_PEM", certificate_pem())]}
    assert post_device(registry, body).status_code == 200
    assert_error(post_device(registry, body), 409, "ALREADY_EXISTS", dev_id)


def test_missing_device_is_not_found(registry: RegistryProcess) -> None:
    assert_error(get(registry, "/devices/sn-ghost"), 404, "NOT_FOUND", "devices/sn-ghost")


def test_integer_enums_in_and_out(registry: RegistryProcess, dev_id: str) -> None:
    pem = certificate_pem()
    resp = post_device(
        registry, {"id": dev_id, "credentials": [credential(4, pem)]}, query="?" + INT_ENUMS
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["credentials"][0]["publicKey"] == {"format": 4, "key": pem}
    # Asked for names (the default), the same credential reads as its name ...
    named = get(registry, f"/devices/{dev_id}").json()
    assert named["credentials"][0]["publicKey"]["format"] == "ES256_X509_PEM"
    # ... and as its number when the query parameter arrives percent-encoded.
    numbered = get(registry, f"/devices/{dev_id}", **{"$alt": "json;enum-encoding=int"}).json()
    assert numbered["credentials"][0]["publicKey"]["format"] == 4


def test_proto_field_names_are_accepted(registry: RegistryProcess, dev_id: str) -> None:
    body = {
        "id": dev_id,
        "credentials": [
            {
                "public_key": {"format": "ES256_X509_PEM", "key": certificate_pem()},
                "expiration_time": "2031-05-06T07:08:09.5+02:00",
            }
        ],
    }
    resp = post_device(registry, body)
    assert resp.status_code == 200, resp.text
    assert resp.json()["credentials"][0]["expirationTime"] == "2031-05-06T05:08:09.500Z"


@pytest.mark.parametrize(
    ("fmt", "key", "accepted"),
    [
        ("ES256_X509_PEM", lambda: certificate_pem(), True),
        (2, lambda: public_key_pem(ec.generate_private_key(ec.SECP256R1())), True),
        ("RSA_X509_PEM", lambda: certificate_pem(rsa_key(2048)), True),
        (3, lambda: public_key_pem(rsa_key(2048)), True),
        ("ES256_X509_PEM", lambda: certificate_pem(ec.generate_private_key(ec.SECP384R1())), False),
        ("ES256_PEM", lambda: public_key_pem(ec.generate_private_key(ec.SECP384R1())), False),
        ("ES256_PEM", lambda: certificate_pem(), False),  # a certificate is not an SPKI
        ("ES256_X509_PEM", lambda: public_key_pem(ec.generate_private_key(ec.SECP256R1())), False),
        ("RSA_X509_PEM", lambda: certificate_pem(), False),  # EC key under an RSA format
        ("RSA_PEM", lambda: public_key_pem(rsa_key(1024)), False),
        ("RSA_X509_PEM", lambda: certificate_pem(rsa_key(1024)), False),
        ("ES256_X509_PEM", lambda: certificate_pem() + certificate_pem(), False),
        ("ES256_X509_PEM", lambda: "garbage", False),
        (0, lambda: certificate_pem(), False),  # UNSPECIFIED_PUBLIC_KEY_FORMAT
        (5, lambda: certificate_pem(), False),
        ("X509_CERTIFICATE_PEM", lambda: certificate_pem(), False),  # a registry format
        (True, lambda: certificate_pem(), False),
    ],
)
def test_key_rules(
    registry: RegistryProcess, dev_id: str, fmt: str | int, key: Any, accepted: bool
) -> None:
    resp = post_device(registry, {"id": dev_id, "credentials": [credential(fmt, key())]})
    if accepted:
        assert resp.status_code == 200, resp.text
    else:
        assert_error(resp, 400, "INVALID_ARGUMENT", "position 0")
        assert get(registry, f"/devices/{dev_id}").status_code == 404


def test_weak_rsa_message_names_the_rule(registry: RegistryProcess, dev_id: str) -> None:
    resp = post_device(
        registry,
        {"id": dev_id, "credentials": [credential("RSA_PEM", public_key_pem(rsa_key(1024)))]},
    )
    assert_error(resp, 400, "INVALID_ARGUMENT", "1024-bit RSA key; at least 2048")


def test_at_most_three_credentials(registry: RegistryProcess, dev_id: str) -> None:
    creds = [credential("ES256_X509_PEM", certificate_pem()) for _ in range(4)]
    resp = post_device(registry, {"id": dev_id, "credentials": creds})
    assert_error(resp, 400, "INVALID_ARGUMENT", "at most 3 credentials; 4 were given")
    resp = post_device(registry, {"id": dev_id, "credentials": creds[:3]})
    assert resp.status_code == 200 and len(resp.json()["credentials"]) == 3


@pytest.mark.parametrize(
    ("body", "text"),
    [
        ({}, "device ID must be specified"),
        ({"id": "1abc"}, "Invalid device ID"),
        ({"id": "ab"}, "Invalid device ID"),
        ({"id": "a" * 256}, "Invalid device ID"),
        ({"id": "sn-x", "gatewayKind": {}}, "Unknown name \"gatewayKind\" at 'device'"),
        (
            {"id": "sn-x", "gatewayConfig": {"type": 1}},
            "Unknown name \"type\" at 'device.gateway_config'",
        ),
        ({"id": "sn-x", "credentials": [{"publicKey": {"format": 4}}]}, "position 0 has no key"),
        ({"id": "sn-x", "credentials": [{"publicKey": {"key": "k"}}]}, "invalid public key format"),
        ({"id": "sn-x", "blocked": "yes"}, "Invalid value at 'device.blocked'"),
        ({"id": "sn-x", "metadata": {"9lives": "x"}}, "Invalid metadata key"),
        ({"id": "sn-x", "metadata": {"k1": "x" * (32 * 1024 + 1)}}, "larger than 32 KB"),
    ],
)
def test_invalid_requests(registry: RegistryProcess, body: dict[str, Any], text: str) -> None:
    assert_error(post_device(registry, body), 400, "INVALID_ARGUMENT", text)


def test_invalid_json(registry: RegistryProcess) -> None:
    with registry.http() as h:
        resp = h.post(registry.parent_url() + "/devices", content=b'{"id": ')
    assert_error(resp, 400, "INVALID_ARGUMENT", "Invalid JSON payload received")


def test_bad_expiration_time(registry: RegistryProcess, dev_id: str) -> None:
    cred = credential("ES256_X509_PEM", certificate_pem(), expirationTime="next tuesday")
    resp = post_device(registry, {"id": dev_id, "credentials": [cred]})
    assert_error(resp, 400, "INVALID_ARGUMENT", "expirationTime")


def test_output_only_fields_are_ignored(registry: RegistryProcess, dev_id: str) -> None:
    """A device read back can be sent again (to another registry) as it is."""
    first = post_device(registry, {"id": dev_id}).json()
    other = f"reg-{uuid.uuid4().hex[:8]}"
    with registry.http(registry.admin_token) as h:
        assert h.post(registry.parent_url(other)[: -len(other) - 1], json={"id": other}).is_success
    again = post_device(registry, first, registry=other)
    assert again.status_code == 200, again.text
    assert again.json()["numId"] != first["numId"]  # numIds are the server's, and unique


# --- registries ------------------------------------------------------------------------------


def test_registries(registry: RegistryProcess) -> None:
    rid = f"reg-{uuid.uuid4().hex[:8]}"
    collection = registry.parent_url(rid)[: -len(rid) - 1]
    with registry.http(registry.admin_token) as h:
        created = h.post(collection, json={"id": rid})
        assert created.status_code == 200, created.text
        assert created.json() == {
            "id": rid,
            "name": registry.parent_url(rid).split("/v1/")[1],
            # Cloud IoT's defaults when a create names neither
            "mqttConfig": {"mqttEnabledState": "MQTT_ENABLED"},
            "httpConfig": {"httpEnabledState": "HTTP_ENABLED"},
        }
        assert h.get(registry.parent_url(rid)).json() == created.json()
        assert_error(h.post(collection, json={"id": rid}), 409, "ALREADY_EXISTS", rid)
        assert_error(h.post(collection, json={"id": "x"}), 400, "INVALID_ARGUMENT", "registry ID")
        assert_error(
            h.post(collection, json={"id": "reg-ca", "mqttConfig": {"enabled": True}}),
            400,
            "INVALID_ARGUMENT",
            "Unknown name \"enabled\" at 'device_registry.mqtt_config'",
        )
    # The configured registry exists from the start; others are never created implicitly.
    assert get(registry, "").json()["id"] == registry.station.settings.registry.registry
    missing = registry.parent_url("nope-registry")
    with registry.http() as h:
        assert_error(h.get(missing), 404, "NOT_FOUND", "registries/nope-registry")
        assert_error(h.post(missing + "/devices", json={"id": "sn-1"}), 404, "NOT_FOUND")
        assert_error(h.get(registry.parent_url("nope-registry")), 404, "NOT_FOUND")


def test_device_ids_are_per_registry(registry: RegistryProcess, dev_id: str) -> None:
    rid = f"reg-{uuid.uuid4().hex[:8]}"
    with registry.http(registry.admin_token) as h:
        h.post(registry.parent_url(rid)[: -len(rid) - 1], json={"id": rid}).raise_for_status()
    a = post_device(registry, {"id": dev_id})
    b = post_device(registry, {"id": dev_id}, registry=rid)
    assert a.status_code == b.status_code == 200
    assert a.json()["numId"] != b.json()["numId"]


# --- listing ---------------------------------------------------------------------------------


def test_list_pages_through_every_device_once(registry: RegistryProcess) -> None:
    rid = f"reg-{uuid.uuid4().hex[:8]}"
    with registry.http(registry.admin_token) as h:
        h.post(registry.parent_url(rid)[: -len(rid) - 1], json={"id": rid}).raise_for_status()
        ids = {f"sn-list-{i}" for i in range(5)}
        for i in ids:
            post_device(registry, {"id": i}, registry=rid).raise_for_status()
        seen: list[str] = []
        token, pages = "", 0
        while True:
            resp = h.get(
                registry.parent_url(rid) + "/devices", params={"pageSize": 2, "pageToken": token}
            )
            assert resp.status_code == 200, resp.text
            page = resp.json()
            pages += 1
            assert len(page["devices"]) <= 2
            seen += [d["id"] for d in page["devices"]]
            token = page.get("nextPageToken", "")
            if not token:
                break
        assert pages == 3 and sorted(seen) == sorted(ids)

        # without a fieldMask: id and numId only, as Cloud IoT
        everything = h.get(registry.parent_url(rid) + "/devices").json()["devices"]
        assert {d["id"] for d in everything} == ids
        assert all(set(d) == {"id", "numId"} for d in everything)

        masked = h.get(
            registry.parent_url(rid) + "/devices", params={"fieldMask": "blocked,last_event_time"}
        ).json()["devices"]
        assert all(set(d) == {"id", "numId", "blocked"} for d in masked)


def test_list_refusals(registry: RegistryProcess) -> None:
    assert_error(get(registry, "/devices", pageToken="!!!"), 400, "INVALID_ARGUMENT", "page token")
    assert_error(get(registry, "/devices", pageSize="many"), 400, "INVALID_ARGUMENT", "pageSize")
    assert_error(get(registry, "/devices", fieldMask="colour"), 400, "INVALID_ARGUMENT", "colour")
    assert_error(get(registry, "/devices", deviceIds="1a"), 400, "INVALID_ARGUMENT", "deviceIds")


def test_oversized_body_is_refused(registry: RegistryProcess) -> None:
    with registry.http() as h:
        resp = h.post(
            registry.parent_url() + "/devices",
            content=b'{"id": "sn-big", "metadata": {"k1": "' + b"x" * (2 * 1024 * 1024) + b'"}}',
        )
    assert_error(resp, 400, "INVALID_ARGUMENT", "payload size exceeds the limit")
