"""Numbers and identifiers beyond what either HTTP service can hold are the caller's
mistake: 400 in the service's own error shape, never a 5xx (an OverflowError from the
database driver), and no error body echoes more than a short piece of the request (a 20 MB
body must not come back). Both OpenAPI documents are served without a token."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from provisioner.api.app import create_app
from provisioner.auth import users
from provisioner.cloud.tokens import Role
from provisioner.db.engine import create_schema, make_engine
from provisioner.settings import Settings
from tests.cloud.inprocess import REGISTRY_NAME, TOKENS, make_registry

HUGE = "99999999999999999999999"  # > 2**64
JUST_OVER = str(2**63)  # one past SQLite's (and PostgreSQL BIGINT's) largest integer
MB20 = 20 * 1024 * 1024
# The longest piece of a request an error may quote (problems.MAX_MESSAGE, status.MAX_MESSAGE
# bound whole messages to 240 characters).
ECHO_MAX = 240


@pytest.fixture
def api(tmp_path: Path) -> tuple[TestClient, dict[str, str], Engine]:
    settings = Settings(var_dir=tmp_path / "var")
    engine = make_engine(settings.db_url)
    create_schema(engine)
    token = users.add_user(engine, "ada", "admin", "admin:root")
    client = TestClient(create_app(settings), raise_server_exceptions=False)
    return client, {"Authorization": f"Bearer {token}"}, engine


def _is_api_400(r: object, where: str) -> None:
    status, text = r.status_code, r.text  # type: ignore[attr-defined]
    assert status == 400, (where, status, text[:300])
    err = json.loads(text)["error"]
    assert (err["code"], err["status"]) == (400, "INVALID_ARGUMENT"), (where, err)
    assert len(err["message"]) <= ECHO_MAX, (where, err)


# What the issue names, then every other number and name of the API's paths and queries.
API_QUERIES = [
    f"/audit/events?batch={HUGE}",
    f"/audit/events?batch={JUST_OVER}",
    f"/audit/events?after={HUGE}",
    "/audit/events?after=-1",
    f"/audit/events?station={'s' * 1000}",
    f"/audit/events?serial={'A' * 1000}",
    f"/audit/events?actor={'a' * 1000}",
    f"/audit/events?type={'t' * 1000}",
    f"/audit/events?since={'2' * 1000}",
    f"/audit/export?batch={HUGE}",
    f"/audit/consistency?old={HUGE}&new=1",
    f"/audit/consistency?old=1&new={JUST_OVER}",
    f"/audit/proof/{'A' * 1000}",
    f"/batches/{HUGE}",
    f"/batches/{JUST_OVER}",
    f"/batches/1?devices=all&offset={HUGE}",
    f"/batches/1?step={'x' * 1000}",
]


@pytest.mark.parametrize("path", API_QUERIES)
def test_api_numbers_and_names_beyond_range_are_400(
    api: tuple[TestClient, dict[str, str], Engine], path: str
) -> None:
    client, auth, _ = api
    _is_api_400(client.get(path, headers=auth), path)


API_BODIES = [
    ("POST", "/batches", {"station": "line1", "count": int(HUGE)}),
    ("POST", "/batches", {"station": "line1", "count": 2, "quota": int(HUGE)}),
    ("POST", "/batches", {"station": "s" * 1000, "count": 2}),
    ("PUT", "/batches/1/quota", {"quota": int(HUGE)}),
    ("POST", "/users", {"name": "n" * 5000, "role": "operator"}),
    ("POST", f"/users/{'n' * 1000}/role", {"role": "operator"}),
    ("POST", "/users/nobody/role", {"role": "r" * 5000}),
    ("POST", "/batches/1/retry", {"devices": ["d" * 5000]}),
]


@pytest.mark.parametrize(("method", "path", "body"), API_BODIES)
def test_api_bodies_beyond_range_are_400(
    api: tuple[TestClient, dict[str, str], Engine], method: str, path: str, body: dict[str, Any]
) -> None:
    client, auth, _ = api
    r = client.request(method, path, json=body, headers=auth)
    _is_api_400(r, f"{method} {path}")
    assert "nnnnnnnnnn" * 10 not in r.text and "ddddddddddd" * 10 not in r.text


def test_api_20mb_body_gets_a_short_error(api: tuple[TestClient, dict[str, str], Engine]) -> None:
    client, auth, _ = api
    junk = b'{"station": "' + b"x" * MB20 + b'", "count": 1}'
    for path in ("/batches", "/users"):
        r = client.post(path, content=junk, headers={**auth, "Content-Type": "application/json"})
        _is_api_400(r, path)
        assert len(r.content) < 1000, len(r.content)
    r = client.post("/batches", content=b"{" * MB20, headers=auth)  # not even JSON
    _is_api_400(r, "malformed")
    assert len(r.content) < 1000


def test_api_largest_batch_id_is_just_unknown(
    api: tuple[TestClient, dict[str, str], Engine],
) -> None:
    client, auth, _ = api
    r = client.get(f"/batches/{2**63 - 1}", headers=auth)
    assert r.status_code == 404 and r.json()["error"]["status"] == "NOT_FOUND"


def test_api_serves_its_openapi_document_publicly(
    api: tuple[TestClient, dict[str, str], Engine],
) -> None:
    client, _, _ = api
    r = client.get("/openapi.json")  # no token
    assert r.status_code == 200, r.text[:200]
    doc = r.json()
    assert "/batches/{batch_id}" in doc["paths"]
    assert not [p for p in doc["paths"] if p.startswith("/ui")]  # the dashboard stays out
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert client.post("/openapi.json").status_code == 405  # read-only


# --- the registry ---------------------------------------------------------------------------


@pytest.fixture
def registry(tmp_path: Path) -> tuple[TestClient, dict[str, str], str]:
    reg = make_registry(tmp_path)
    client = TestClient(reg.app, raise_server_exceptions=False)
    auth = {"Authorization": f"Bearer {TOKENS[Role.ADMIN]}"}
    base = f"/v1/{REGISTRY_NAME}"
    assert client.post(f"{base}/devices", json={"id": "dev-1"}, headers=auth).status_code == 200
    return client, auth, base


def _is_registry_400(r: object, where: str) -> None:
    status, text = r.status_code, r.text  # type: ignore[attr-defined]
    assert status == 400, (where, status, text[:300])
    err = json.loads(text)["error"]
    assert (err["code"], err["status"]) == (400, "INVALID_ARGUMENT"), (where, err)
    assert len(err["message"]) <= ECHO_MAX, (where, err)


REGISTRY_QUERIES = [
    f"devices?deviceNumIds={HUGE}",
    f"devices?deviceNumIds={JUST_OVER}",
    "devices?deviceNumIds=%C2%B2",  # '²': str.isdigit() says yes, int() says no
    f"devices?device_num_ids=1,{JUST_OVER}",
    "devices?pageToken=%C3%A9t%C3%A9",  # non-ASCII: base64 decoding raises ValueError
    "devices?pageSize=-1",
    "devices?pageSize=" + "9" * 5000,  # beyond int()'s digit limit
    f"devices/{HUGE}",
    f"devices/{JUST_OVER}",
    "devices/%C2%B2",
    "devices/" + "d" * 5000,
    "devices?fieldMask=" + "f" * 5000,
    "devices?deviceIds=" + "i" * 5000,
]


@pytest.mark.parametrize("query", REGISTRY_QUERIES)
def test_registry_numbers_and_ids_beyond_range_are_400(
    registry: tuple[TestClient, dict[str, str], str], query: str
) -> None:
    client, auth, base = registry
    _is_registry_400(client.get(f"{base}/{query}", headers=auth), query)


@pytest.mark.parametrize("method", ["PATCH", "DELETE"])
@pytest.mark.parametrize("device", [HUGE, JUST_OVER, "%C2%B2"])
def test_registry_device_paths_beyond_range_are_400(
    registry: tuple[TestClient, dict[str, str], str], method: str, device: str
) -> None:
    client, auth, base = registry
    r = client.request(
        method, f"{base}/devices/{device}?updateMask=blocked", json={"blocked": True}, headers=auth
    )
    _is_registry_400(r, f"{method} {device}")


def test_registry_largest_num_id_is_just_unknown(
    registry: tuple[TestClient, dict[str, str], str],
) -> None:
    client, auth, base = registry
    assert client.get(f"{base}/devices/{2**63 - 1}", headers=auth).status_code == 404
    r = client.get(f"{base}/devices?deviceNumIds={2**63 - 1}", headers=auth)
    assert r.status_code == 200 and r.json()["devices"] == []


def test_registry_errors_never_echo_long_input(
    registry: tuple[TestClient, dict[str, str], str],
) -> None:
    client, auth, base = registry
    key = "k" * 900_000  # a field name inside the 1 MB body limit: echoed as "Unknown name"
    r = client.post(f"{base}/devices", content=json.dumps({key: 1}), headers=auth)
    assert r.status_code == 400 and len(r.content) < 1000, len(r.content)
    r = client.get(f"/v1/projects/{'p' * 5000}/locations/l/registries/r", headers=auth)
    assert r.status_code == 404 and len(r.content) < 1000, len(r.content)
    r = client.post(f"{base}/devices", content=b"x" * MB20, headers=auth)
    assert r.status_code == 400 and len(r.content) < 1000, len(r.content)


def test_registry_serves_its_openapi_document_publicly(
    registry: tuple[TestClient, dict[str, str], str],
) -> None:
    client, _, base = registry
    r = client.get("/openapi.json")  # no token
    assert r.status_code == 200, r.text[:200]
    doc = r.json()
    create = doc["paths"]["/v1/projects/{project}/locations/{location}/registries"]["post"]
    assert {"CreateDevice", "GetRegistry"} <= set(create["responses"]["200"]["links"])
    assert client.get(f"{base}/devices").status_code == 401  # everything else still needs one
