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
from hypothesis import HealthCheck, given, settings
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
PLANE_OPERATIONS = (
    "modifyCloudToDeviceConfig",
    "listDeviceConfigVersions",
    "listDeviceStates",
    "sendCommandToDevice",
    "bindDeviceToGateway",
    "unbindDeviceFromGateway",
)
PLANE_EXAMPLES = 40  # per operation


def test_registry_stateful_fuzz(tmp_path: Path) -> None:
    reg = make_registry(tmp_path)
    # The device-plane operations have a fuzz of their own (below): here they would only
    # dilute the steps that follow links.
    schema = schemathesis.openapi.from_asgi("/openapi.json", reg.app).exclude(
        operation_id=list(PLANE_OPERATIONS)
    )
    auth = {"Authorization": f"Bearer {TOKENS[Role.ADMIN]}"}
    seen: dict[str, int] = {}  # "METHOD path-template status" -> count

    engine = reg.app.state.engine

    class Machine(schema.as_state_machine()):  # type: ignore[misc]
        def setup(self) -> None:
            # Each scenario starts from the same empty registry: Hypothesis replays
            # scenarios while shrinking and requires them to behave the same each time.
            with engine.begin() as c:
                for table in (
                    "registry_device_configs",
                    "registry_device_states",
                    "registry_gateway_bindings",
                ):
                    c.execute(text(f"DELETE FROM {table}"))
                c.execute(text("DELETE FROM registry_devices"))
                c.execute(text("DELETE FROM registry_registries"))
            store.ensure_registry(engine, PROJECT, LOCATION, REGISTRY)

        def before_call(self, case: Any) -> None:
            # A valid token on every call (the generated ones are random): the fuzz is
            # about what a signed-in caller can send; tokens have tests of their own.
            case.headers = {**(case.headers or {}), **auth}
            # Device operations under a registry that does not exist can only end in 404
            # (test_rules covers that): they go to an existing one instead, so devices get
            # created and the links from them followed. Registry operations keep their
            # generated ids.
            params = case.path_parameters or {}
            if "/devices" in case.path and "registry" in params:
                found = store.get_registry(
                    engine,
                    str(params.get("project")),
                    str(params.get("location")),
                    str(params["registry"]),
                )
                if found is None:
                    case.path_parameters = {
                        **params,
                        "project": PROJECT,
                        "location": LOCATION,
                        "registry": REGISTRY,
                    }

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


def test_device_plane_operations_fuzz(tmp_path: Path) -> None:
    """Each device-plane operation with generated (valid and invalid) bodies and query
    strings, on a real gateway and device (random path ids would only ever meet 404):
    no 5xx, and every answer conforms to the document."""
    reg = make_registry(tmp_path)
    engine = reg.app.state.engine
    registry = store.get_registry(engine, PROJECT, LOCATION, REGISTRY)
    assert registry is not None
    device = store.create_device(engine, registry, store.NewDevice("fuzz-dev", (), False, {}))
    store.create_device(
        engine, registry, store.NewDevice("fuzz-gw", (), False, {}, gateway_type="GATEWAY")
    )
    schema = schemathesis.openapi.from_asgi("/openapi.json", reg.app).include(
        operation_id=list(PLANE_OPERATIONS)
    )
    pinned = {"project": PROJECT, "location": LOCATION, "registry": REGISTRY}
    auth = {"Authorization": f"Bearer {TOKENS[Role.ADMIN]}"}
    seen: dict[str, int] = {}
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(
            max_examples=PLANE_EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def run(case: Any) -> None:
            params = {**case.path_parameters, **pinned}
            if "device" in params:
                params["device"] = str(device.num_id) if len(seen) % 2 else device.device_id
            case.path_parameters = params
            case.headers = {**(case.headers or {}), **auth}
            response = case.call()
            key = f"{case.method} {case.path} {response.status_code}"
            seen[key] = seen.get(key, 0) + 1
            case.validate_response(
                response, checks=[not_a_server_error, response_schema_conformance]
            )

        run()
    summary = ", ".join(f"{k}: {n}" for k, n in sorted(seen.items()))
    log.warning("device-plane fuzz: %s", summary)
    assert not [k for k in seen if k.split()[-1].startswith("5")], summary
    # Valid requests got through too, not only refusals.
    assert {k.split()[1].rsplit("/", 1)[-1] for k in seen if k.endswith(" 200")} >= {
        "{device}:modifyCloudToDeviceConfig",
        "configVersions",
        "states",
    }, summary
