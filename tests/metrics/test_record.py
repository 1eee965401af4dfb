"""The instrumented code counts what it does: the pipeline's steps (through real chips, a
real SoftHSM signer and a real database), the signer's results, chip errors by status, the
breaker, the registry client's answers and the pacer's waits."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from hsm.breaker import CircuitBreaker
from provisioner import batches, pipeline
from provisioner.chips.device import CryptoAuthChip
from provisioner.chips.library import ATCA_EXECUTION_ERROR, ATCA_SUCCESS
from provisioner.db.models import Step
from provisioner.errors import (
    ChipAbsentError,
    ChipCommandError,
    DeviceStopped,
    HsmUnavailableError,
    PolicyViolationError,
    RegistryError,
    RegistryUnavailableError,
)
from provisioner.metrics.record import StepMeter, http_result
from provisioner.ports import DeviceAlreadyExists
from provisioner.uploads.client import CloudIotRegistry
from provisioner.uploads.ratelimit import LocalPacer
from tests.conftest import free_port
from tests.core.test_pipeline_resume import PulledAfter
from tests.metrics.helpers import value

STATION_STEPS = ("identified", "key_generated", "pop_verified", "cert_issued", "cert_written",
                 "cert_verified")  # fmt: skip


def _steps(station: str, outcome: str) -> dict[str, float]:
    return {
        s: value("provisioner_device_steps_total", station=station, step=s, outcome=outcome)
        for s in STATION_STEPS
    }


def test_a_device_through_the_pipeline_counts_each_step_once(
    env: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROVISIONER_WORKER_STATION", "metrics-a")
    ok_before = _steps("metrics-a", "ok")
    timed_before = {
        s: value("provisioner_step_duration_seconds_count", step=s) for s in STATION_STEPS
    }
    signed_before = value("provisioner_signatures_total", result="ok")
    repeat_before = value("provisioner_signatures_total", result="repeat")
    latency_before = value("provisioner_signing_duration_seconds_count")

    bid = batches.create_batch(
        env["engine"], env["settings"], station_id="line1", count=1, actor="t"
    )
    dev_id = batches.mark_started(env["engine"], bid, actor="t")[0]
    env["jig"].insert_blank(0)
    with env["connector"].open("emulated:line1/0") as chip:
        done = pipeline.provision_device(dev_id, chip, env["signer"], env["ledger"])
        assert done.step == Step.CERT_VERIFIED
        pipeline.provision_device(dev_id, chip, env["signer"], env["ledger"])  # nothing to do

    after = _steps("metrics-a", "ok")
    assert {s: after[s] - ok_before[s] for s in STATION_STEPS} == dict.fromkeys(STATION_STEPS, 1)
    for s in STATION_STEPS:
        assert value("provisioner_step_duration_seconds_count", step=s) == timed_before[s] + 1
    assert value("provisioner_signatures_total", result="ok") == signed_before + 1
    assert value("provisioner_signing_duration_seconds_count") == latency_before + 1
    # The second run found the device verified: it asked nothing of the signer.
    assert value("provisioner_signatures_total", result="repeat") == repeat_before


def test_a_pulled_chip_counts_a_failed_attempt_then_the_resumed_steps(
    env: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROVISIONER_WORKER_STATION", "metrics-b")
    bid = batches.create_batch(
        env["engine"], env["settings"], station_id="line1", count=1, actor="t"
    )
    dev_id = batches.mark_started(env["engine"], bid, actor="t")[0]
    path = env["jig"].insert_blank(0)
    with env["connector"].open("emulated:line1/0") as chip, pytest.raises(ChipAbsentError):
        pipeline.provision_device(
            dev_id, PulledAfter(chip, env["jig"], 0, "lock_data_zone"), env["signer"], env["ledger"]
        )
    # The key was recorded before the chip went missing: the attempt that failed is the
    # next one's (reading the public key back, on the way to the proof of possession).
    failed = _steps("metrics-b", "failed")
    assert failed == {**dict.fromkeys(STATION_STEPS, 0), "pop_verified": 1}
    reason = {"station": "metrics-b", "step": "pop_verified", "reason": "ChipAbsentError"}
    assert value("provisioner_device_failures_total", **reason) == 1
    assert _steps("metrics-b", "ok") == {
        **dict.fromkeys(STATION_STEPS, 0), "identified": 1, "key_generated": 1,
    }  # fmt: skip

    env["jig"].insert(1, path)
    with env["connector"].open("emulated:line1/1") as chip:
        pipeline.provision_device(dev_id, chip, env["signer"], env["ledger"])
    assert _steps("metrics-b", "ok") == dict.fromkeys(STATION_STEPS, 1)


def test_the_signer_counts_refusals(env: dict[str, Any]) -> None:
    from tests.core.test_issuance_policy import _ready_device

    bid = batches.create_batch(
        env["engine"], env["settings"], station_id="line1", count=2, actor="t"
    )
    first, second = batches.mark_started(env["engine"], bid, actor="t")
    req = _ready_device(env["ledger"], first, 1)
    ok, repeat, refused = (
        value("provisioner_signatures_total", result=r) for r in ("ok", "repeat", "refused")
    )
    env["signer"].sign(req)
    env["signer"].sign(req)  # the same certificate again
    clone = _ready_device(env["ledger"], second, 2)
    with pytest.raises(PolicyViolationError):
        env["signer"].sign(dataclasses.replace(clone, chip_serial_hex="0123000000000000EE"))
    assert value("provisioner_signatures_total", result="ok") == ok + 1
    assert value("provisioner_signatures_total", result="repeat") == repeat + 1
    assert value("provisioner_signatures_total", result="refused") == refused + 1


def test_step_meter_outcomes() -> None:
    labels = {"station": "metrics-c", "step": "cert_issued"}
    meter = StepMeter(station="metrics-c")
    meter.start(Step.CERT_ISSUED)
    meter.failed(HsmUnavailableError("token gone"))
    meter.start(Step.CERT_ISSUED)
    meter.failed(DeviceStopped("paused"))  # the batch stopped it: not an attempt that ended
    meter.failed(ChipCommandError("no step in progress", 0x0F))  # counts nothing
    assert value("provisioner_device_steps_total", **labels, outcome="unavailable") == 1
    assert value("provisioner_device_steps_total", **labels, outcome="failed") == 0


def test_chip_command_errors_by_status(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROVISIONER_WORKER_STATION", "metrics-d")
    chip = object.__new__(CryptoAuthChip)  # the status check only, without a library handle
    chip.locator, chip._keepalive = "emulated:metrics-d/0", None
    status = "0xf4"  # ATCA_EXECUTION_ERROR as C writes it (the chip answered 0x0F)
    before = value("provisioner_chip_command_errors_total", station="metrics-d", status=status)
    chip._check(ATCA_SUCCESS, "Info")
    with pytest.raises(ChipCommandError):
        chip._check(ATCA_EXECUTION_ERROR, "GenKey")
    after = value("provisioner_chip_command_errors_total", station="metrics-d", status=status)
    assert after == before + 1


def test_breaker_gauge_follows_the_token() -> None:
    back = threading.Event()

    def reconnect() -> None:
        if not back.is_set():
            raise OSError("still gone")

    b = CircuitBreaker("metrics-token", reconnect, base_delay_s=0.0)
    gauge = "provisioner_signer_breaker_open"
    assert value(gauge, token="metrics-token") == 0
    b.trip(OSError("pulled"))
    assert value(gauge, token="metrics-token") == 1
    assert not b.try_reconnect()
    assert value(gauge, token="metrics-token") == 1
    back.set()
    assert b.try_reconnect()
    assert value(gauge, token="metrics-token") == 0


class _Scripted(BaseHTTPRequestHandler):
    """Answers each request with the next status of the server's script (0: hang up)."""

    def _answer(self) -> None:
        code = self.server.script.pop(0)  # type: ignore[attr-defined]
        if code == 0:
            self.connection.close()
            return
        body = b'{"id": "snx", "numId": "1", "credentials": []}' if code == 200 else b"{}"
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PATCH = _answer

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def scripted() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _Scripted)
    server.script = []  # type: ignore[attr-defined]
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield server
    server.shutdown()
    server.server_close()


def test_registry_calls_by_result(scripted: ThreadingHTTPServer) -> None:
    url = f"http://127.0.0.1:{scripted.server_address[1]}"
    client = CloudIotRegistry(url, "p", "l", "r", "tok", timeout_s=5)
    results = ("ok", "4xx", "throttled", "5xx", "error")
    before = {
        r: value("provisioner_registry_calls_total", backend="cloudiot", operation="create",
                 result=r)
        for r in results
    }  # fmt: skip
    scripted.script.extend([200, 409, 429, 503, 0])  # type: ignore[attr-defined]
    client.create_device("snx", "pem")
    with pytest.raises(DeviceAlreadyExists):
        client.create_device("snx", "pem")
    for _ in range(3):
        with pytest.raises(RegistryUnavailableError):
            client.create_device("snx", "pem")
    scripted.script.append(403)  # type: ignore[attr-defined]
    with pytest.raises(RegistryError):
        client.get_device("snx")
    client.close()
    for r in results:
        got = value("provisioner_registry_calls_total", backend="cloudiot", operation="create",
                    result=r)  # fmt: skip
        assert got == before[r] + 1, r
    assert value("provisioner_registry_calls_total", backend="cloudiot", operation="get",
                 result="4xx") >= 1  # fmt: skip


def test_http_result_labels() -> None:
    assert [http_result(c) for c in (None, 200, 204, 404, 409, 429, 500, 503, 302)] == [
        "error", "ok", "ok", "4xx", "4xx", "throttled", "5xx", "5xx", "error",
    ]  # fmt: skip


def test_pacer_waits_are_observed() -> None:
    now = [100.0]
    slept: list[float] = []
    pacer = LocalPacer(60.0, clock=lambda: now[0], sleep=slept.append)  # one a second
    count = value("provisioner_registry_pace_wait_seconds_count")
    total = value("provisioner_registry_pace_wait_seconds_sum")
    pacer.wait()  # free slot: no wait
    pacer.wait()  # the next slot is a second later
    assert value("provisioner_registry_pace_wait_seconds_count") == count + 2
    assert value("provisioner_registry_pace_wait_seconds_sum") == pytest.approx(total + 1.0)
    assert slept == [pytest.approx(1.0)]
