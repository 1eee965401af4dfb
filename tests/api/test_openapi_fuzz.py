"""A schema fuzz of the provisioner's API, in-process (ASGI, no network), with an admin
token: every operation of its ``/openapi.json``, valid and invalid parameters and bodies.
Checks: no 5xx, and every response conforms to the document (refusals included: the
API's ``Error`` shape, never FastAPI's 422). The number of requests sent is part of the
assertion message and of the ``fuzz`` log line.

The API's resources (batches, users) are created by operations whose answers the document
does not describe field by field, so there are no links to follow here; the registry's
fuzz (tests/cloud/test_fuzz.py) is the stateful one.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as fuzz_settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from provisioner.api.app import create_app
from provisioner.auth import users
from provisioner.db.engine import create_schema, make_engine
from provisioner.settings import Settings

log = logging.getLogger("fuzz")

CASES = 300  # ~15 s on one core


def test_api_schema_fuzz(tmp_path: Path) -> None:
    settings = Settings(var_dir=tmp_path / "var")
    engine = make_engine(settings.db_url)
    create_schema(engine)
    token = users.add_user(engine, "ada", "admin", "admin:root")
    app = create_app(settings)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    auth = {"Authorization": f"Bearer {token}"}
    seen: dict[str, int] = {}
    client = TestClient(app)

    @given(case=schema.as_strategy())
    @fuzz_settings(
        max_examples=CASES,
        deadline=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case: Any) -> None:
        case.headers = {**(case.headers or {}), **auth}
        response = case.call(session=client)
        key = f"{case.method} {case.path} {response.status_code}"
        seen[key] = seen.get(key, 0) + 1
        case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])

    fuzz()
    total = sum(seen.values())
    summary = f"API fuzz: {total} requests; " + ", ".join(
        f"{k}: {n}" for k, n in sorted(seen.items())
    )
    log.warning(summary)
    assert total >= CASES // 2, summary
    assert [k for k in seen if k.endswith(" 200") or k.endswith(" 201")], summary
    assert not [k for k in seen if k.split()[-1].startswith("5")], summary
