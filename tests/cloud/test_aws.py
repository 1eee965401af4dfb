"""The AWS IoT upload backend through real boto3 against moto's server (a real HTTP server in
a thread, ``moto[server]``): the CA registered once, one thing per device with its
certificate attached (and the policy), interrupted uploads completed rather than
duplicated, someone else's thing a recorded conflict, a dead or faulty endpoint "retry
later", and 40 devices through the fault proxy landing exactly once.

moto checks no signatures and no CA chains; what is proven here is our side of the calls.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import moto.settings
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from moto.server import ThreadedMotoServer

from provisioner import batches
from provisioner.errors import RegistryUnavailableError
from provisioner.ports import DeviceAlreadyExists
from provisioner.settings import Settings
from provisioner.uploads import forwarder
from provisioner.uploads.aws import (
    FINGERPRINT_ATTRIBUTE,
    AwsIotRegistry,
    certificate_fingerprint,
)
from provisioner.uploads.backends import open_backend
from tests.cloud.fault_proxy import FaultProxy
from tests.cloud.helpers import certificate_pem
from tests.cloud.test_forwarder import _devices, _upload_rows
from tests.conftest import free_port

REGION = "eu-west-1"


@pytest.fixture
def moto_url(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    # moto accepts any credentials; keep the host's AWS configuration out of the test.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    # Certificate ids as AWS computes them (SHA-256 of the DER), not moto's default. The
    # server runs in this process and its /moto-api/config cannot set this one.
    monkeypatch.setitem(moto.settings.default_user_config, "iot", {"use_valid_cert": True})
    server.start()
    url = f"http://127.0.0.1:{port}"
    # moto's backends are module state shared by every server in this process: start empty.
    httpx.post(f"{url}/moto-api/reset").raise_for_status()
    try:
        yield url
    finally:
        server.stop()


def _iot(url: str) -> Any:
    """A plain boto3 client: the test's own view of what landed in "AWS"."""
    return boto3.client("iot", region_name=REGION, endpoint_url=url)


def _ca_pem(env: dict[str, Any]) -> str:
    return (env["settings"].ca_dir / "intermediate.pem").read_text()


def _pem_of(env: dict[str, Any], device_id: int) -> str:
    der = env["ledger"].certificate(device_id).der
    return x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM).decode()


def _principals(iot: Any, thing: str) -> list[str]:
    return list(iot.list_thing_principals(thingName=thing)["principals"])


def test_connect_registers_the_ca_once_and_active(env: dict[str, Any], moto_url: str) -> None:
    ca = _ca_pem(env)
    for _ in range(2):
        AwsIotRegistry.connect(REGION, ca, endpoint_url=moto_url).close()
    iot = _iot(moto_url)
    # (moto cannot list CA certificates: the id is AWS's, SHA-256 of the DER)
    ca_id = certificate_fingerprint(ca)
    held = iot.describe_ca_certificate(certificateId=ca_id)["certificateDescription"]
    assert held["status"] == "ACTIVE" and held["certificatePem"].strip() == ca.strip()
    # An inactive CA is an admin's decision: the backend says so instead of working around it.
    iot.update_ca_certificate(certificateId=ca_id, newStatus="INACTIVE")
    with pytest.raises(Exception, match="status INACTIVE; an admin must activate it"):
        AwsIotRegistry.connect(REGION, ca, endpoint_url=moto_url)


def test_upload_makes_a_thing_with_its_certificate_and_policy(
    env: dict[str, Any], moto_url: str
) -> None:
    iot = _iot(moto_url)
    iot.create_policy(policyName="device-connect", policyDocument='{"Version":"2012-10-17"}')
    ((dev, reg_id),) = _devices(env, 1)
    pem = _pem_of(env, dev)
    with AwsIotRegistry.connect(
        REGION, _ca_pem(env), endpoint_url=moto_url, policy_name="device-connect"
    ) as aws:
        made = aws.create_device(reg_id, pem)
        thing = iot.describe_thing(thingName=reg_id)
        assert made.num_id == thing["thingId"]
        ((cert_arn,),) = [_principals(iot, reg_id)]
        cert = iot.describe_certificate(certificateId=cert_arn.rsplit("/", 1)[1])
        desc = cert["certificateDescription"]
        assert desc["status"] == "ACTIVE" and desc["certificatePem"].strip() == pem.strip()
        by_ca = iot.list_certificates_by_ca(caCertificateId=certificate_fingerprint(_ca_pem(env)))
        assert [c["certificateArn"] for c in by_ca["certificates"]] == [cert_arn]
        policies = iot.list_attached_policies(target=cert_arn)["policies"]
        assert [p["policyName"] for p in policies] == ["device-connect"]
        got = aws.get_device(reg_id)
        assert got is not None and got.num_id == made.num_id
        assert [p.strip() for p in got.certificate_pems] == [pem.strip()]
        assert aws.get_device("sn-nobody") is None


def test_an_interrupted_upload_is_completed_not_duplicated(
    env: dict[str, Any], moto_url: str
) -> None:
    iot = _iot(moto_url)
    (dev_a, reg_a), (dev_b, reg_b) = _devices(env, 2)
    pem_a, pem_b = _pem_of(env, dev_a), _pem_of(env, dev_b)
    with AwsIotRegistry.connect(REGION, _ca_pem(env), endpoint_url=moto_url) as aws:
        ca = _ca_pem(env)
        # A: the certificate was registered, then the worker died.
        iot.register_certificate(certificatePem=pem_a, caCertificatePem=ca, status="ACTIVE")
        # B: certificate and thing made, the principal never attached.
        iot.register_certificate(certificatePem=pem_b, caCertificatePem=ca, status="ACTIVE")
        iot.create_thing(
            thingName=reg_b,
            attributePayload={
                "attributes": {FINGERPRINT_ATTRIBUTE: certificate_fingerprint(pem_b)}
            },
        )
        thing_b = iot.describe_thing(thingName=reg_b)["thingId"]
        rep = forwarder.drain(env["engine"], aws, [dev_a, dev_b])
    assert (rep.done, rep.conflicts, rep.unavailable) == (2, 0, 0)
    assert len(iot.list_certificates()["certificates"]) == 2
    assert sorted(t["thingName"] for t in iot.list_things()["things"]) == sorted([reg_a, reg_b])
    assert iot.describe_thing(thingName=reg_b)["thingId"] == thing_b  # completed, not remade
    for reg_id in (reg_a, reg_b):
        assert len(_principals(iot, reg_id)) == 1


def test_someone_elses_thing_is_a_conflict_never_overwritten(
    env: dict[str, Any], moto_url: str
) -> None:
    iot = _iot(moto_url)
    (dev_a, reg_a), (dev_b, _) = _devices(env, 2)
    squatter = certificate_pem()
    with AwsIotRegistry.connect(REGION, _ca_pem(env), endpoint_url=moto_url) as aws:
        aws.create_device(reg_a, squatter)
        with pytest.raises(DeviceAlreadyExists):
            aws.create_device(reg_a, _pem_of(env, dev_a))
        iot.create_thing(thingName="bare-thing")  # made by hand, no fingerprint
        with pytest.raises(DeviceAlreadyExists):
            aws.create_device("bare-thing", _pem_of(env, dev_b))
        rep = forwarder.drain(env["engine"], aws, [dev_a, dev_b])
        held = aws.get_device(reg_a)
    assert (rep.done, rep.conflicts) == (1, 1)
    rows = _upload_rows(env)
    assert (rows[dev_a][0], rows[dev_b][0]) == ("CONFLICT", "DONE")
    assert held is not None and [p.strip() for p in held.certificate_pems] == [squatter.strip()]
    # Our certificate for A was never registered, so it cannot connect as A.
    assert len(iot.list_certificates()["certificates"]) == 2  # the squatter's and B's


def test_a_refusal_is_parked_with_the_answer_then_completed_after_the_fix(
    env: dict[str, Any], moto_url: str
) -> None:
    """A policy the account does not have: AWS refuses the attach. The upload is parked
    with AWS's answer (visible in the batch report), not retried blindly; once an admin
    creates the policy, a sync completes the same thing instead of making a second one."""
    iot = _iot(moto_url)
    ((dev, reg_id),) = _devices(env, 1)
    with AwsIotRegistry.connect(
        REGION, _ca_pem(env), endpoint_url=moto_url, policy_name="not-yet-there"
    ) as aws:
        rep = forwarder.drain(env["engine"], aws, [dev])
        assert (rep.done, rep.refused) == (0, 1)
        assert _upload_rows(env)[dev][0] == "PARKED"
        report = batches.report(env["engine"], 1)
        assert report.uploads_parked == 1
        assert forwarder.waiting(env["engine"]) == [dev]
        thing_id = iot.describe_thing(thingName=reg_id)["thingId"]
        iot.create_policy(policyName="not-yet-there", policyDocument='{"Version":"2012-10-17"}')
        rep = forwarder.drain(env["engine"], aws, forwarder.waiting(env["engine"]))
    assert (rep.done, rep.refused) == (1, 0)
    assert _upload_rows(env)[dev][0] == "DONE"
    assert iot.describe_thing(thingName=reg_id)["thingId"] == thing_id
    assert len(iot.list_things()["things"]) == 1
    (arn,) = _principals(iot, reg_id)
    assert [p["policyName"] for p in iot.list_attached_policies(target=arn)["policies"]] == [
        "not-yet-there"
    ]


def test_a_dead_endpoint_means_retry_later(env: dict[str, Any], moto_url: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(RegistryUnavailableError, match="unreachable") as info:
        AwsIotRegistry.connect(REGION, _ca_pem(env), endpoint_url=dead, timeout_s=2.0)
    assert "testing" not in str(info.value)  # no credential in the message


@pytest.mark.slow
def test_forty_devices_through_a_faulty_proxy_land_exactly_once(
    env: dict[str, Any], moto_url: str
) -> None:
    """429, 500, answers lost after the call took effect, hangs past the timeout and resets,
    on 30 % of calls: repeated drains put every device in exactly once."""
    ids = dict(_devices(env, 40))
    proxy = FaultProxy(moto_url, free_port(), rate=0.3, hang_s=1.5, seed=11)
    proxy.start()
    try:
        url = f"http://127.0.0.1:{proxy.port}"
        aws = None
        for _ in range(20):  # the connect itself may meet a fault
            try:
                aws = AwsIotRegistry.connect(REGION, _ca_pem(env), endpoint_url=url, timeout_s=1)
                break
            except RegistryUnavailableError:
                continue
        assert aws is not None
        for _ in range(60):
            waiting = forwarder.waiting(env["engine"])
            if not waiting:
                break
            forwarder.drain(env["engine"], aws, waiting, give_up_after=10)
        aws.close()
    finally:
        proxy.close()
    assert forwarder.waiting(env["engine"]) == []
    assert {state for state, _ in _upload_rows(env).values()} == {"DONE"}
    assert sum(proxy.counts[f] for f in ("lost", "500-after", "hang")) > 0
    iot = _iot(moto_url)
    things = iot.list_things(maxResults=250)["things"]
    assert sorted(t["thingName"] for t in things) == sorted(ids.values())
    assert len(iot.list_certificates(pageSize=250)["certificates"]) == 40
    for dev, reg_id in ids.items():
        (arn,) = _principals(iot, reg_id)
        desc = iot.describe_certificate(certificateId=arn.rsplit("/", 1)[1])
        assert desc["certificateDescription"]["certificatePem"].strip() == _pem_of(env, dev).strip()


def test_the_configured_backend_is_aws_and_paced(env: dict[str, Any], moto_url: str) -> None:
    """``registry.kind = "aws"`` in the settings: what workers and ``registry sync`` open."""
    settings = Settings(
        var_dir=env["settings"].var_dir,
        registry={"kind": "aws", "aws_region": REGION, "aws_endpoint_url": moto_url},
    )
    ((dev, reg_id),) = _devices(env, 1)
    with open_backend(settings) as backend:
        assert isinstance(backend.backend, AwsIotRegistry)
        rep = forwarder.drain(env["engine"], backend, [dev])
    assert rep.done == 1
    assert _principals(_iot(moto_url), reg_id)
