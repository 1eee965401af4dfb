"""The official Cloud IoT client (``google-cloud-iot``, REST transport) and ClearBlade's
drop-in (``clearblade-cloud-iot``) against our registry served by a real uvicorn: no mocks,
the clients' own request building and response parsing."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.api_core import exceptions as gexc
from google.auth.exceptions import RefreshError
from google.oauth2.credentials import Credentials
from google.protobuf.field_mask_pb2 import FieldMask

from provisioner.cloud.tokens import Role
from tests.cloud.helpers import certificate_pem
from tests.cloud.inprocess import (
    LOCATION,
    PARENT,
    PROJECT,
    REGISTRY,
    REGISTRY_NAME,
    TOKENS,
    make_registry,
    served,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)  # api_core's Python-version notice
    from google.cloud import iot_v1
    from google.cloud.iot_v1.services.device_manager.transports.rest import (
        DeviceManagerRestTransport,
    )


@pytest.fixture
def google_client(tmp_path: Path) -> Iterator[iot_v1.DeviceManagerClient]:
    with served(make_registry(tmp_path).app) as port:
        yield google_client_for(port, TOKENS[Role.WRITER])


def google_client_for(port: int, token: str) -> iot_v1.DeviceManagerClient:
    transport = DeviceManagerRestTransport(
        host=f"127.0.0.1:{port}", credentials=Credentials(token=token), url_scheme="http"
    )
    return iot_v1.DeviceManagerClient(transport=transport)


def es256_credential(pem: str) -> iot_v1.DeviceCredential:
    return iot_v1.DeviceCredential(
        public_key=iot_v1.PublicKeyCredential(format=iot_v1.PublicKeyFormat.ES256_X509_PEM, key=pem)
    )


def test_google_client_create_get_list_patch(google_client: iot_v1.DeviceManagerClient) -> None:
    c = google_client
    pem = certificate_pem()
    created = c.create_device(
        parent=REGISTRY_NAME,
        device=iot_v1.Device(
            id="sn-g1", credentials=[es256_credential(pem)], metadata={"line": "l1"}
        ),
    )
    assert created.num_id >= 10**15
    assert created.name == f"{REGISTRY_NAME}/devices/{created.num_id}"
    assert created.credentials[0].public_key.format == iot_v1.PublicKeyFormat.ES256_X509_PEM
    assert created.credentials[0].public_key.key == pem
    assert dict(created.metadata) == {"line": "l1"}
    assert c.get_device(name=f"{REGISTRY_NAME}/devices/sn-g1") == created
    assert c.get_device(name=created.name) == created  # by numId

    with pytest.raises(gexc.Conflict, match="already exists"):
        c.create_device(parent=REGISTRY_NAME, device=iot_v1.Device(id="sn-g1"))
    with pytest.raises(gexc.NotFound):
        c.get_device(name=f"{REGISTRY_NAME}/devices/sn-nobody")

    c.create_device(parent=REGISTRY_NAME, device=iot_v1.Device(id="sn-g2"))
    c.create_device(parent=REGISTRY_NAME, device=iot_v1.Device(id="sn-g3"))
    listed = c.list_devices(request={"parent": REGISTRY_NAME, "page_size": 2})
    assert [d.id for d in listed] == ["sn-g1", "sn-g2", "sn-g3"]  # the pager follows tokens
    by_id = c.list_devices(
        request={
            "parent": REGISTRY_NAME,
            "device_ids": ["sn-g1", "sn-g3"],
            "field_mask": FieldMask(paths=["blocked", "metadata"]),
        }
    )
    got = list(by_id)
    assert [d.id for d in got] == ["sn-g1", "sn-g3"]
    assert dict(got[0].metadata) == {"line": "l1"} and not got[0].credentials  # masked out
    by_num = c.list_devices(request={"parent": REGISTRY_NAME, "device_num_ids": [created.num_id]})
    assert [d.id for d in by_num] == ["sn-g1"]

    patched = c.update_device(
        device=iot_v1.Device(name=created.name, blocked=True, metadata={"line": "ignored"}),
        update_mask=FieldMask(paths=["blocked"]),
    )
    assert patched.blocked and dict(patched.metadata) == {"line": "l1"}  # outside the mask
    second = certificate_pem()
    patched = c.update_device(
        device=iot_v1.Device(
            name=created.name, credentials=[es256_credential(pem), es256_credential(second)]
        ),
        update_mask=FieldMask(paths=["credentials"]),
    )
    assert [x.public_key.key for x in patched.credentials] == [pem, second]
    assert c.get_device(name=created.name) == patched


def test_google_client_registries_and_roles(tmp_path: Path) -> None:
    with served(make_registry(tmp_path).app) as port:
        admin = google_client_for(port, TOKENS[Role.ADMIN])
        writer = google_client_for(port, TOKENS[Role.WRITER])
        reader = google_client_for(port, TOKENS[Role.READER])
        with pytest.raises(gexc.Forbidden, match=r"cloudiot\.registries\.create"):
            writer.create_device_registry(
                parent=PARENT, device_registry=iot_v1.DeviceRegistry(id="reg-2")
            )
        made = admin.create_device_registry(
            parent=PARENT, device_registry=iot_v1.DeviceRegistry(id="reg-2")
        )
        assert made.name == f"{PARENT}/registries/reg-2"
        assert [r.id for r in reader.list_device_registries(parent=PARENT)] == [REGISTRY, "reg-2"]
        with pytest.raises(gexc.Forbidden, match=r"cloudiot\.devices\.create"):
            reader.create_device(parent=made.name, device=iot_v1.Device(id="sn-r"))
        writer.create_device(parent=made.name, device=iot_v1.Device(id="sn-r"))
        with pytest.raises(gexc.Forbidden, match=r"cloudiot\.devices\.delete"):
            writer.delete_device(name=f"{made.name}/devices/sn-r")
        with pytest.raises(gexc.BadRequest, match="not empty"):
            admin.delete_device_registry(name=made.name)
        admin.delete_device(name=f"{made.name}/devices/sn-r")
        admin.delete_device_registry(name=made.name)
        with pytest.raises(gexc.NotFound):
            reader.get_device_registry(name=made.name)
        # An unknown token gets 401, on which the client tries to refresh its credentials.
        with pytest.raises(RefreshError):
            google_client_for(port, "tok-unknown").get_device_registry(name=REGISTRY_NAME)


# --- ClearBlade ------------------------------------------------------------------------------


@pytest.fixture
def clearblade_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Our registry on 127.0.0.1:443 (the client appends :443 to any URL) and the client's
    environment pointing at it, authenticated with the writer (upload) token."""
    config = tmp_path / "clearblade.json"
    config.write_text(
        json.dumps(
            {
                "systemKey": "unused",
                "token": "unused",
                "url": "http://127.0.0.1",
                "project": PROJECT,
            }
        )
    )
    monkeypatch.setenv("CLEARBLADE_CONFIGURATION", str(config))
    monkeypatch.setenv("REGISTRY_URL", "http://127.0.0.1")
    monkeypatch.setenv("REGISTRY_SYSKEY", f"{PROJECT}:{LOCATION}:{REGISTRY}")
    monkeypatch.setenv("REGISTRY_TOKEN", TOKENS[Role.WRITER])
    with served(make_registry(tmp_path).app, port=443):
        yield


def test_clearblade_client_create_get_list_patch(clearblade_env: None) -> None:
    from clearblade.cloud import iot_v1 as cb

    c = cb.DeviceManagerClient()
    pem = certificate_pem()
    cred = {"publicKey": {"format": cb.PublicKeyFormat.ES256_X509_PEM, "key": pem}}
    created = c.create_device(
        request=cb.CreateDeviceRequest(
            parent=REGISTRY_NAME,
            device=cb.Device(id="sn-cb1", credentials=[cred], meta_data={"line": "l1"}),
        )
    )
    assert isinstance(created, cb.Device), created
    assert created.id == "sn-cb1" and int(created.num_id) >= 10**15
    assert created.meta_data == {"line": "l1"}
    assert created.credentials[0].public_key.key == pem
    assert created.credentials[0].public_key.format == cb.PublicKeyFormat.ES256_X509_PEM

    # On a failed create the client returns the error body instead of raising.
    dup = c.create_device(
        request=cb.CreateDeviceRequest(parent=REGISTRY_NAME, device=cb.Device(id="sn-cb1"))
    )
    assert dup["error"]["status"] == "ALREADY_EXISTS", dup

    got = c.get_device(request=cb.GetDeviceRequest(name=f"{REGISTRY_NAME}/devices/sn-cb1"))
    assert got.id == "sn-cb1" and got.num_id == created.num_id and got.blocked is False

    c.create_device(
        request=cb.CreateDeviceRequest(parent=REGISTRY_NAME, device=cb.Device(id="sn-cb2"))
    )
    everything = c.list_devices(request=cb.ListDevicesRequest(parent=REGISTRY_NAME, pageSize=1))
    assert [d.id for d in everything] == ["sn-cb1", "sn-cb2"]
    only = c.list_devices(request=cb.ListDevicesRequest(parent=REGISTRY_NAME, deviceIds=["sn-cb2"]))
    assert [d.id for d in only] == ["sn-cb2"]

    patched = c.update_device(
        request=cb.UpdateDeviceRequest(
            parent=f"{REGISTRY_NAME}/devices/sn-cb1",
            device=cb.Device(id="sn-cb1", blocked=True),
            updateMask="blocked",
        )
    )
    assert isinstance(patched, cb.Device) and patched.blocked is True
    assert patched.meta_data == {"line": "l1"}  # outside the mask: kept
    again = c.get_device(request=cb.GetDeviceRequest(name=f"{REGISTRY_NAME}/devices/sn-cb1"))
    assert again.blocked is True
