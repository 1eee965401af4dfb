"""A stateful schema fuzz of the built-in registry, in-process (ASGI, no network).

Schemathesis reads the registry's own ``/openapi.json`` and follows its ``links``: it
creates registries, then devices under them, then reads, patches, lists and deletes those,
with generated (valid and invalid) bodies, ids and query strings in between. Checks: no
5xx, and every response (the google.rpc errors included) conforms to the document. The
number of requests sent is part of the assertion message and of the ``fuzz`` log line.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance
from sqlalchemy import text

from provisioner.cloud import store
from provisioner.cloud.tokens import Role
from tests.cloud.inprocess import LOCATION, PROJECT, REGISTRY, TOKENS, make_registry

log = logging.getLogger("fuzz")

# ~20 s on one core: 80 scenarios of up to 10 steps (~800 requests).
SCENARIOS = 80
STEPS = 10
MIN_REQUESTS = 100  # a fuzz that stopped at the first step proves nothing


def test_registry_stateful_fuzz(tmp_path: Path) -> None:
    reg = make_registry(tmp_path)
    schema = schemathesis.openapi.from_asgi("/openapi.json", reg.app)
    auth = {"Authorization": f"Bearer {TOKENS[Role.ADMIN]}"}
    seen: dict[str, int] = {}  # "METHOD path-template status" -> count

    engine = reg.app.state.engine

    class Machine(schema.as_state_machine()):  # type: ignore[misc]
        def setup(self) -> None:
            # Each scenario starts from the same empty registry: Hypothesis replays
            # scenarios while shrinking and requires them to behave the same each time.
            with engine.begin() as c:
                c.execute(text("DELETE FROM registry_devices"))
                c.execute(text("DELETE FROM registry_registries"))
            store.ensure_registry(engine, PROJECT, LOCATION, REGISTRY)

        def before_call(self, case: Any) -> None:
            # A valid token on every call (the generated ones are random): the fuzz is
            # about what a signed-in caller can send; tokens have tests of their own.
            case.headers = {**(case.headers or {}), **auth}

        def after_call(self, response: Any, case: Any) -> None:
            super().after_call(response, case)
            key = f"{case.method} {case.path} {response.status_code}"
            seen[key] = seen.get(key, 0) + 1

        def validate_response(self, response: Any, case: Any, **kwargs: Any) -> None:
            case.validate_response(
                response, checks=[not_a_server_error, response_schema_conformance]
            )

    Machine.run(
        settings=settings(
            max_examples=SCENARIOS,
            stateful_step_count=STEPS,
            deadline=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
    )
    total = sum(seen.values())
    created = sum(n for k, n in seen.items() if k.startswith("POST") and k.endswith(" 200"))
    device_ok = sum(n for k, n in seen.items() if "/devices/{device}" in k and k.endswith(" 200"))
    summary = f"registry fuzz: {total} requests in {SCENARIOS} scenarios; " + ", ".join(
        f"{k}: {n}" for k, n in sorted(seen.items())
    )
    log.warning(summary)
    assert total >= MIN_REQUESTS, summary
    # The links were followed: resources created, then a created device read or patched.
    assert created and device_ok, summary
    assert not [k for k in seen if k.split()[-1].startswith("5")], summary
