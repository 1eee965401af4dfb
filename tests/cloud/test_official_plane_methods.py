"""The official ``google-cloud-iot`` client (REST transport, its own request building and
response parsing) against the registry's device-plane methods (issue 16), served by a real
uvicorn: configs, config versions, states, commands, gateway bindings, the new device and
registry fields, and a registry created as Google's own sample creates one."""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from google.api_core import exceptions as gexc
from google.protobuf.field_mask_pb2 import FieldMask

from provisioner.cloud import device_data, store
from provisioner.cloud.tokens import Role
from tests.cloud.inprocess import (
    PARENT,
    PROJECT,
    REGISTRY_NAME,
    TOKENS,
    Registry,
    make_registry,
    served,
)
from tests.cloud.test_official_clients import google_client_for

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)  # api_core's Python-version notice
    from google.cloud import iot_v1


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    return make_registry(tmp_path_factory.mktemp("official-plane"))


@pytest.fixture(scope="module")
def port(registry: Registry) -> Iterator[int]:
    with served(registry.app) as p:
        yield p


@pytest.fixture(scope="module")
def client(port: int) -> iot_v1.DeviceManagerClient:
    return google_client_for(port, TOKENS[Role.WRITER])


@pytest.fixture(scope="module")
def admin(port: int) -> iot_v1.DeviceManagerClient:
    return google_client_for(port, TOKENS[Role.ADMIN])


def rpc_status(exc: gexc.GoogleAPICallError) -> str:
    """The google.rpc status of a refusal. Over REST, api_core picks the exception class from
    the HTTP status alone (FAILED_PRECONDITION and INVALID_ARGUMENT are both 400, hence
    BadRequest, as they were from Cloud IoT); the body says which."""
    assert exc.response is not None
    return str(exc.response.json()["error"]["status"])


def new_device(c: iot_v1.DeviceManagerClient, **fields: object) -> iot_v1.Device:
    return c.create_device(
        parent=REGISTRY_NAME, device=iot_v1.Device(id=f"sn{uuid.uuid4().hex[:12]}", **fields)
    )


def test_modify_config_and_list_versions(client: iot_v1.DeviceManagerClient) -> None:
    dev = new_device(client)
    first = client.list_device_config_versions(name=dev.name).device_configs
    assert [c.version for c in first] == [1]
    cfg = client.modify_cloud_to_device_config(name=dev.name, binary_data=b"\x00\x01cfg")
    assert cfg.version == 2 and cfg.binary_data == b"\x00\x01cfg"
    assert cfg.cloud_update_time.year >= 2026  # a proto Timestamp the client parsed
    cfg3 = client.modify_cloud_to_device_config(
        request={"name": dev.name, "version_to_update": 2, "binary_data": b"three"}
    )
    assert cfg3.version == 3
    with pytest.raises(gexc.BadRequest, match="does not match") as stale:
        client.modify_cloud_to_device_config(
            request={"name": dev.name, "version_to_update": 2, "binary_data": b"stale"}
        )
    assert rpc_status(stale.value) == "FAILED_PRECONDITION"
    versions = client.list_device_config_versions(name=dev.name).device_configs
    assert [(c.version, c.binary_data) for c in versions] == [
        (3, b"three"),
        (2, b"\x00\x01cfg"),
        (1, b""),
    ]
    two = client.list_device_config_versions(
        request={"name": dev.name, "num_versions": 2}
    ).device_configs
    assert [c.version for c in two] == [3, 2]
    got = client.get_device(name=dev.name)
    assert got.config.version == 3 and got.config.binary_data == b"three"
    with pytest.raises(gexc.NotFound):
        client.modify_cloud_to_device_config(
            name=f"{REGISTRY_NAME}/devices/nobody-here", binary_data=b"x"
        )


def test_list_device_states(client: iot_v1.DeviceManagerClient, registry: Registry) -> None:
    dev = new_device(client)
    assert list(client.list_device_states(name=dev.name).device_states) == []
    engine = store.open_store(registry.db_url)
    try:
        for i in range(3):
            device_data.record_state(
                engine, dev.num_id, b"state-%d" % i, datetime(2026, 3, 1, 0, 0, i, tzinfo=UTC)
            )
    finally:
        engine.dispose()
    states = client.list_device_states(name=dev.name).device_states
    assert [s.binary_data for s in states] == [b"state-2", b"state-1", b"state-0"]
    assert states[0].update_time.second == 2
    one = client.list_device_states(request={"name": dev.name, "num_states": 1})
    assert [s.binary_data for s in one.device_states] == [b"state-2"]
    got = client.get_device(name=dev.name)
    assert got.state.binary_data == b"state-2"
    assert got.last_state_time.second == 2


def test_send_command_to_a_device_not_connected(client: iot_v1.DeviceManagerClient) -> None:
    dev = new_device(client)
    with pytest.raises(gexc.BadRequest, match="not subscribed to the commands topic") as refused:
        client.send_command_to_device(name=dev.name, binary_data=b"reboot", subfolder="ops")
    assert rpc_status(refused.value) == "FAILED_PRECONDITION"
    with pytest.raises(gexc.NotFound):
        client.send_command_to_device(name=f"{REGISTRY_NAME}/devices/nobody-here", binary_data=b"x")


def test_gateways_bind_and_unbind(
    client: iot_v1.DeviceManagerClient, admin: iot_v1.DeviceManagerClient, registry: Registry
) -> None:
    gw = new_device(
        client,
        gateway_config=iot_v1.GatewayConfig(
            gateway_type=iot_v1.GatewayType.GATEWAY,
            gateway_auth_method=iot_v1.GatewayAuthMethod.ASSOCIATION_ONLY,
        ),
    )
    assert gw.gateway_config.gateway_type == iot_v1.GatewayType.GATEWAY
    dev = new_device(client)
    assert dev.gateway_config.gateway_type == iot_v1.GatewayType.NON_GATEWAY
    admin.bind_device_to_gateway(parent=REGISTRY_NAME, gateway_id=gw.id, device_id=dev.id)
    engine = store.open_store(registry.db_url)
    try:
        assert device_data.is_bound(engine, gw.num_id, dev.num_id)
        with pytest.raises(gexc.BadRequest, match="not a gateway"):
            admin.bind_device_to_gateway(parent=REGISTRY_NAME, gateway_id=dev.id, device_id=gw.id)
        admin.unbind_device_from_gateway(parent=REGISTRY_NAME, gateway_id=gw.id, device_id=dev.id)
        assert not device_data.is_bound(engine, gw.num_id, dev.num_id)
        with pytest.raises(gexc.NotFound):
            admin.unbind_device_from_gateway(
                parent=REGISTRY_NAME, gateway_id=gw.id, device_id=dev.id
            )
    finally:
        engine.dispose()


def test_get_device_shows_the_plane_fields(
    client: iot_v1.DeviceManagerClient, registry: Registry
) -> None:
    dev = new_device(client)
    engine = store.open_store(registry.db_url)
    when = datetime(2026, 4, 1, 12, 0, 0, 250000, tzinfo=UTC)
    try:
        device_data.touch(
            engine,
            dev.num_id,
            last_heartbeat_time=when,
            last_event_time=when,
            last_config_send_time=when,
        )
        device_data.ack_config(engine, dev.num_id, 1, when)
        device_data.record_error(engine, dev.num_id, 5, "unknown subfolder", when)
    finally:
        engine.dispose()
    got = client.get_device(name=dev.name)
    for field in (
        got.last_heartbeat_time,
        got.last_event_time,
        got.last_config_send_time,
        got.last_config_ack_time,
        got.last_error_time,
    ):
        assert (field.year, field.hour, field.microsecond) == (2026, 12, 250000)
    assert got.last_error_status.code == 5
    assert got.last_error_status.message == "unknown subfolder"
    assert got.config.version == 1 and got.config.device_ack_time.year == 2026
    assert got.gateway_config.gateway_auth_method == iot_v1.GatewayAuthMethod.ASSOCIATION_ONLY
    # the device read back goes back as an update (output-only fields included)
    got.blocked = True
    updated = client.update_device(device=got, update_mask=FieldMask(paths=["blocked"]))
    assert updated.blocked
    # a list without field mask: id and num_id only, as Cloud IoT
    listed = list(client.list_devices(request={"parent": REGISTRY_NAME, "device_ids": [dev.id]}))
    assert [(d.id, d.num_id, d.blocked, len(d.credentials)) for d in listed] == [
        (dev.id, dev.num_id, False, 0)
    ]
    assert "gateway_config" not in listed[0] and "config" not in listed[0]


def test_create_registry_as_googles_sample_does(admin: iot_v1.DeviceManagerClient) -> None:
    """python-docs-samples iot/api-client manager.py create_registry: eventNotificationConfigs
    with a Pub/Sub topic; and the settings every registry has (MQTT, HTTP, state topic)."""
    rid = f"reg{uuid.uuid4().hex[:10]}"
    topic = f"projects/{PROJECT}/topics/device-events"
    created = admin.create_device_registry(
        request={
            "parent": PARENT,
            "device_registry": {
                "id": rid,
                "event_notification_configs": [{"pubsub_topic_name": topic}],
                "mqtt_config": {"mqtt_enabled_state": iot_v1.MqttState.MQTT_ENABLED},
                "http_config": {"http_enabled_state": iot_v1.HttpState.HTTP_DISABLED},
                "state_notification_config": {"pubsub_topic_name": topic + "-state"},
            },
        }
    )
    got = admin.get_device_registry(name=created.name)
    assert got.mqtt_config.mqtt_enabled_state == iot_v1.MqttState.MQTT_ENABLED
    assert got.http_config.http_enabled_state == iot_v1.HttpState.HTTP_DISABLED
    assert [c.pubsub_topic_name for c in got.event_notification_configs] == [topic]
    assert got.state_notification_config.pubsub_topic_name == topic + "-state"
    # the bare sample (no mqtt/http config): both enabled, as Cloud IoT created them
    bare = admin.create_device_registry(
        parent=PARENT,
        device_registry=iot_v1.DeviceRegistry(
            id=rid + "b",
            event_notification_configs=[iot_v1.EventNotificationConfig(pubsub_topic_name=topic)],
        ),
    )
    assert bare.mqtt_config.mqtt_enabled_state == iot_v1.MqttState.MQTT_ENABLED
    assert bare.http_config.http_enabled_state == iot_v1.HttpState.HTTP_ENABLED
    changed = admin.update_device_registry(
        device_registry=iot_v1.DeviceRegistry(
            name=bare.name, mqtt_config={"mqtt_enabled_state": iot_v1.MqttState.MQTT_DISABLED}
        ),
        update_mask=FieldMask(paths=["mqtt_config.mqtt_enabled_state"]),
    )
    assert changed.mqtt_config.mqtt_enabled_state == iot_v1.MqttState.MQTT_DISABLED
    with pytest.raises(gexc.BadRequest, match="goog"):
        admin.create_device_registry(
            parent=PARENT, device_registry=iot_v1.DeviceRegistry(id="goog-registry")
        )
    with pytest.raises(gexc.BadRequest, match="pubsub_topic_name"):
        admin.create_device_registry(
            parent=PARENT,
            device_registry=iot_v1.DeviceRegistry(
                id=rid + "c",
                event_notification_configs=[
                    iot_v1.EventNotificationConfig(pubsub_topic_name="device-events")
                ],
            ),
        )
