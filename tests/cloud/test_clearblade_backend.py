"""The ClearBlade upload backend, through the real ``clearblade-cloud-iot`` client, against
our registry's ClearBlade-compatible route on 127.0.0.1:443 (the client always adds :443)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from provisioner.cloud.tokens import Role
from provisioner.errors import RegistryUnavailableError
from provisioner.ports import DeviceAlreadyExists
from provisioner.uploads import forwarder
from provisioner.uploads.clearblade_backend import ClearBladeRegistry
from tests.cloud.helpers import certificate_pem
from tests.cloud.inprocess import LOCATION, PROJECT, REGISTRY, TOKENS, make_registry, served
from tests.cloud.test_forwarder import _devices, _upload_rows


def _backend() -> ClearBladeRegistry:
    return ClearBladeRegistry(
        "http://127.0.0.1",
        PROJECT,
        LOCATION,
        REGISTRY,
        f"{PROJECT}:{LOCATION}:{REGISTRY}",
        TOKENS[Role.WRITER],
    )


def test_create_get_exists_and_absent(tmp_path: Path) -> None:
    reg = make_registry(tmp_path)
    pem = certificate_pem()
    with served(reg.app, port=443), _backend() as cb:
        made = cb.create_device("sn-cb-1", pem)
        assert made.device_id == "sn-cb-1" and made.num_id
        with pytest.raises(DeviceAlreadyExists):
            cb.create_device("sn-cb-1", certificate_pem())
        got = cb.get_device("sn-cb-1")
        assert got is not None and got.certificate_pems[0].strip() == pem.strip()
        assert cb.get_device("sn-nobody") is None
    import os

    assert "REGISTRY_TOKEN" not in os.environ  # set only around each call


def test_uploads_through_the_pipeline_and_a_dead_registry(
    env: dict[str, Any], tmp_path: Path
) -> None:
    reg = make_registry(tmp_path)
    (dev_a, reg_a), (dev_b, _) = _devices(env, 2)
    with _backend() as cb:
        with pytest.raises(RegistryUnavailableError, match="unreachable"):
            cb.get_device(reg_a)  # nothing on :443 yet
        with served(reg.app, port=443):
            cb.create_device(reg_a, certificate_pem())  # someone else's certificate
            rep = forwarder.drain(env["engine"], cb, [dev_a, dev_b])
    assert (rep.done, rep.conflicts) == (1, 1)
    rows = _upload_rows(env)
    assert (rows[dev_a][0], rows[dev_b][0]) == ("CONFLICT", "DONE")
