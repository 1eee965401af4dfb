"""The registry API's device-plane additions (issue 16) at the HTTP level, in Cloud IoT v1
shape: registry mqttConfig/httpConfig/eventNotificationConfigs/stateNotificationConfig,
device gatewayConfig and last*Time fields, configs, states, commands and gateway bindings,
and the deviations the issue lists (list without fieldMask, ``goog`` ids, page tokens).

In process on a TestClient with a real SQLite store (one app per module: tests use their
own device ids)."""

from __future__ import annotations

import base64
import sqlite3
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from provisioner.cloud import device_data, store
from provisioner.cloud.tokens import Role
from tests.cloud.inprocess import (
    LOCATION,
    PARENT,
    PROJECT,
    REGISTRY,
    REGISTRY_NAME,
    TOKENS,
    Registry,
    make_registry,
)

REG = f"/v1/{REGISTRY_NAME}"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    return make_registry(tmp_path_factory.mktemp("plane-api"))


@pytest.fixture(scope="module")
def client(registry: Registry) -> Iterator[TestClient]:
    with TestClient(registry.app, raise_server_exceptions=False) as c:
        yield c


def auth(role: Role = Role.WRITER) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[role]}"}


def new_id(prefix: str = "sn") -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


def make_device(client: TestClient, body: dict[str, Any] | None = None) -> dict[str, Any]:
    body = {"id": new_id(), **(body or {})}
    r = client.post(f"{REG}/devices", headers=auth(), json=body)
    assert r.status_code == 200, r.text
    return dict(r.json())


def make_reg(client: TestClient, body: dict[str, Any], *, query: str = "") -> Any:
    return client.post(
        f"/v1/{PARENT}/registries{query}",
        headers=auth(Role.ADMIN),
        json={"id": new_id("r"), **body},
    )


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def error(r: Any) -> tuple[int, str, str]:
    e = r.json()["error"]
    return r.status_code, e["status"], e["message"]


# --- registry settings -----------------------------------------------------------------------


def test_registry_defaults_mqtt_and_http_enabled(client: TestClient) -> None:
    r = make_reg(client, {})
    assert r.status_code == 200, r.text
    got = client.get(f"/v1/{r.json()['name']}", headers=auth(Role.READER)).json()
    assert got["mqttConfig"] == {"mqttEnabledState": "MQTT_ENABLED"}
    assert got["httpConfig"] == {"httpEnabledState": "HTTP_ENABLED"}
    assert "eventNotificationConfigs" not in got and "stateNotificationConfig" not in got
    ints = client.get(
        f"/v1/{r.json()['name']}?$alt=json;enum-encoding=int", headers=auth(Role.READER)
    ).json()
    assert ints["mqttConfig"] == {"mqttEnabledState": 1}
    assert ints["httpConfig"] == {"httpEnabledState": 1}


def test_registry_create_with_every_plane_setting(client: TestClient) -> None:
    body = {
        "mqttConfig": {"mqttEnabledState": 2},  # an int, as the official client sends
        "httpConfig": {"httpEnabledState": "HTTP_DISABLED"},
        "eventNotificationConfigs": [
            {"subfolderMatches": "alerts", "pubsubTopicName": "projects/p1/topics/alerts"},
            {"pubsub_topic_name": "projects/p1/topics/telemetry"},  # proto spelling
        ],
        "stateNotificationConfig": {"pubsubTopicName": "projects/p1/topics/state"},
    }
    r = make_reg(client, body)
    assert r.status_code == 200, r.text
    got = client.get(f"/v1/{r.json()['name']}", headers=auth(Role.READER)).json()
    assert got["mqttConfig"] == {"mqttEnabledState": "MQTT_DISABLED"}
    assert got["httpConfig"] == {"httpEnabledState": "HTTP_DISABLED"}
    assert got["eventNotificationConfigs"] == [
        {"subfolderMatches": "alerts", "pubsubTopicName": "projects/p1/topics/alerts"},
        {"pubsubTopicName": "projects/p1/topics/telemetry"},
    ]
    assert got["stateNotificationConfig"] == {"pubsubTopicName": "projects/p1/topics/state"}


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"eventNotificationConfigs": [{"pubsubTopicName": "telemetry"}]}, "pubsub_topic_name"),
        ({"eventNotificationConfigs": [{"pubsubTopicName": "projects/p/topics/goog-x"}]}, "goog"),
        ({"stateNotificationConfig": {"pubsubTopicName": "projects/p/subs/x"}}, "topics"),
        (
            {
                "eventNotificationConfigs": [
                    {"pubsubTopicName": f"projects/p/topics/t{i:02}"} for i in range(11)
                ]
            },
            "at most 10",
        ),
        (
            {
                "eventNotificationConfigs": [
                    {"subfolderMatches": "a", "pubsubTopicName": "projects/p/topics/tp1"},
                    {"subfolderMatches": "a", "pubsubTopicName": "projects/p/topics/tp2"},
                ]
            },
            "already",
        ),
        (
            {
                "eventNotificationConfigs": [
                    {"pubsubTopicName": "projects/p/topics/tp1"},
                    {"subfolderMatches": "a", "pubsubTopicName": "projects/p/topics/tp2"},
                ]
            },
            "only the last",
        ),
        ({"mqttConfig": {"mqttEnabledState": "ON"}}, "MQTT_ENABLED"),
        ({"httpConfig": {"httpEnabledState": 7}}, "HTTP_ENABLED"),
        ({"mqttConfig": {"enabled": True}}, "Unknown name"),
    ],
)
def test_registry_plane_settings_validated(
    client: TestClient, body: dict[str, Any], words: str
) -> None:
    status, code, message = error(make_reg(client, body))
    assert (status, code) == (400, "INVALID_ARGUMENT")
    assert words in message


def test_registry_patch_plane_settings(client: TestClient) -> None:
    name = make_reg(client, {}).json()["name"]
    url = f"/v1/{name}"
    r = client.patch(
        f"{url}?updateMask=mqtt_config.mqtt_enabled_state,eventNotificationConfigs",
        headers=auth(Role.ADMIN),
        json={
            "mqttConfig": {"mqttEnabledState": "MQTT_DISABLED"},
            "eventNotificationConfigs": [{"pubsubTopicName": "projects/p/topics/all"}],
            "httpConfig": {"httpEnabledState": "HTTP_DISABLED"},  # not in the mask: ignored
        },
    )
    assert r.status_code == 200, r.text
    got = client.get(url, headers=auth(Role.READER)).json()
    assert got["mqttConfig"] == {"mqttEnabledState": "MQTT_DISABLED"}
    assert got["httpConfig"] == {"httpEnabledState": "HTTP_ENABLED"}
    assert got["eventNotificationConfigs"] == [{"pubsubTopicName": "projects/p/topics/all"}]
    # camelCase paths; state notification set, then cleared by an empty value
    r = client.patch(
        f"{url}?updateMask=httpConfig,stateNotificationConfig.pubsubTopicName",
        headers=auth(Role.ADMIN),
        json={
            "httpConfig": {"httpEnabledState": 2},
            "stateNotificationConfig": {"pubsubTopicName": "projects/p/topics/state"},
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["httpConfig"] == {"httpEnabledState": "HTTP_DISABLED"}
    assert r.json()["stateNotificationConfig"] == {"pubsubTopicName": "projects/p/topics/state"}
    r = client.patch(
        f"{url}?updateMask=state_notification_config,event_notification_configs,mqtt_config",
        headers=auth(Role.ADMIN),
        json={},
    )
    assert r.status_code == 200, r.text
    assert "stateNotificationConfig" not in r.json()
    assert "eventNotificationConfigs" not in r.json()
    assert r.json()["mqttConfig"] == {"mqttEnabledState": "MQTT_ENABLED"}  # absent: default
    status, code, _ = error(
        client.patch(
            f"{url}?updateMask=event_notification_configs",
            headers=auth(Role.ADMIN),
            json={"eventNotificationConfigs": [{"pubsubTopicName": "nope"}]},
        )
    )
    assert (status, code) == (400, "INVALID_ARGUMENT")


def test_registry_plane_settings_reach_the_store(client: TestClient, registry: Registry) -> None:
    """What the device plane and the event store read: StoredRegistry's fields."""
    rid = new_id("r")
    client.post(
        f"/v1/{PARENT}/registries",
        headers=auth(Role.ADMIN),
        json={
            "id": rid,
            "mqttConfig": {"mqttEnabledState": "MQTT_DISABLED"},
            "eventNotificationConfigs": [
                {"subfolderMatches": "a/b", "pubsubTopicName": "projects/p/topics/abc"}
            ],
            "stateNotificationConfig": {"pubsubTopicName": "projects/p/topics/state"},
        },
    )
    engine = store.open_store(registry.db_url)
    try:
        reg = store.get_registry(engine, PROJECT, LOCATION, rid)
    finally:
        engine.dispose()
    assert reg is not None
    assert (reg.mqtt_enabled, reg.http_enabled) == (False, True)
    assert reg.event_notification_configs == (
        store.EventNotificationConfig("a/b", "projects/p/topics/abc"),
    )
    assert reg.state_notification_topic == "projects/p/topics/state"


# --- devices: gateway config and the plane's fields -----------------------------------------


def test_device_gateway_config_on_create_and_get(client: TestClient) -> None:
    gw = make_device(
        client,
        {"gatewayConfig": {"gatewayType": 1, "gatewayAuthMethod": "DEVICE_AUTH_TOKEN_ONLY"}},
    )
    assert gw["gatewayConfig"] == {
        "gatewayType": "GATEWAY",
        "gatewayAuthMethod": "DEVICE_AUTH_TOKEN_ONLY",
    }
    plain = make_device(client)
    got = client.get(f"{REG}/devices/{plain['id']}", headers=auth(Role.READER)).json()
    assert got["gatewayConfig"] == {
        "gatewayType": "NON_GATEWAY",
        "gatewayAuthMethod": "ASSOCIATION_ONLY",
    }
    # the gateway type cannot be changed; the auth method can
    status, code, _ = error(
        client.patch(
            f"{REG}/devices/{gw['id']}?updateMask=gateway_config.gateway_type",
            headers=auth(),
            json={"gatewayConfig": {"gatewayType": "NON_GATEWAY"}},
        )
    )
    assert (status, code) == (400, "INVALID_ARGUMENT")
    r = client.patch(
        f"{REG}/devices/{gw['id']}?updateMask=gatewayConfig.gatewayAuthMethod",
        headers=auth(),
        json={"gatewayConfig": {"gatewayAuthMethod": "ASSOCIATION_AND_DEVICE_AUTH_TOKEN"}},
    )
    assert r.status_code == 200, r.text
    assert r.json()["gatewayConfig"] == {
        "gatewayType": "GATEWAY",
        "gatewayAuthMethod": "ASSOCIATION_AND_DEVICE_AUTH_TOKEN",
    }
    status, code, _ = error(
        client.post(
            f"{REG}/devices",
            headers=auth(),
            json={"id": new_id(), "gatewayConfig": {"gatewayType": "BRIDGE"}},
        )
    )
    assert (status, code) == (400, "INVALID_ARGUMENT")


def test_device_json_shows_times_error_config_and_state(
    client: TestClient, registry: Registry
) -> None:
    dev = make_device(client)
    num = int(dev["numId"])
    # a new device has config version 1, empty, as in Cloud IoT; no times yet
    assert dev["config"]["version"] == "1" and "binaryData" not in dev["config"]
    assert "lastHeartbeatTime" not in dev and "state" not in dev
    engine = store.open_store(registry.db_url)
    t0 = datetime(2026, 1, 2, 3, 4, 5, 600000, tzinfo=UTC)
    try:
        device_data.touch(
            engine,
            num,
            last_heartbeat_time=t0,
            last_event_time=t0 + timedelta(seconds=1),
            last_config_send_time=t0 + timedelta(seconds=2),
        )
        device_data.record_state(engine, num, b"state-1", t0 + timedelta(seconds=3))
        device_data.ack_config(engine, num, 1, t0 + timedelta(seconds=4))
        device_data.record_error(engine, num, 9, "no such subfolder", t0 + timedelta(seconds=5))
    finally:
        engine.dispose()
    got = client.get(f"{REG}/devices/{dev['id']}", headers=auth(Role.READER)).json()
    assert got["lastHeartbeatTime"] == "2026-01-02T03:04:05.600000Z"
    assert got["lastEventTime"] == "2026-01-02T03:04:06.600000Z"
    assert got["lastConfigSendTime"] == "2026-01-02T03:04:07.600000Z"
    assert got["lastStateTime"] == "2026-01-02T03:04:08.600000Z"
    assert got["lastConfigAckTime"] == "2026-01-02T03:04:09.600000Z"
    assert got["lastErrorTime"] == "2026-01-02T03:04:10.600000Z"
    assert got["lastErrorStatus"] == {"code": 9, "message": "no such subfolder"}
    assert got["state"] == {
        "updateTime": "2026-01-02T03:04:08.600000Z",
        "binaryData": b64(b"state-1"),
    }
    assert got["config"]["deviceAckTime"] == "2026-01-02T03:04:09.600000Z"
    # a device read back (output-only fields and all) can be sent again as a PATCH body
    r = client.patch(f"{REG}/devices/{dev['id']}?updateMask=blocked", headers=auth(), json=got)
    assert r.status_code == 200, r.text


# --- configs ---------------------------------------------------------------------------------


def test_modify_config_versions_and_history(client: TestClient) -> None:
    dev = make_device(client)
    url = f"{REG}/devices/{dev['id']}"
    r = client.post(
        f"{url}:modifyCloudToDeviceConfig", headers=auth(), json={"binaryData": b64(b"v2")}
    )
    assert r.status_code == 200, r.text
    cfg = r.json()
    assert cfg["version"] == "2" and cfg["binaryData"] == b64(b"v2")
    assert cfg["cloudUpdateTime"].endswith("Z") and "deviceAckTime" not in cfg
    # versionToUpdate: the current version applies (as a string int64), a stale one does not
    r = client.post(
        f"{url}:modifyCloudToDeviceConfig",
        headers=auth(),
        json={"versionToUpdate": "2", "binaryData": b64(b"v3")},
    )
    assert r.json()["version"] == "3"
    status, code, message = error(
        client.post(
            f"{url}:modifyCloudToDeviceConfig",
            headers=auth(),
            json={"versionToUpdate": 2, "binaryData": b64(b"late")},
        )
    )
    assert (status, code) == (400, "FAILED_PRECONDITION") and "(3)" in message
    # URL-safe base64 (Google's HTTP sample) is accepted too
    r = client.post(
        f"{url}:modifyCloudToDeviceConfig",
        headers=auth(),
        json={"binaryData": base64.urlsafe_b64encode(b"\xfb\xff").decode().rstrip("=")},
    )
    assert r.status_code == 200 and base64.b64decode(r.json()["binaryData"]) == b"\xfb\xff"
    for i in range(5, 14):
        client.post(
            f"{url}:modifyCloudToDeviceConfig", headers=auth(), json={"binaryData": b64(b"%d" % i)}
        )
    versions = client.get(f"{url}/configVersions", headers=auth(Role.READER)).json()
    assert [c["version"] for c in versions["deviceConfigs"]] == [str(v) for v in range(13, 3, -1)]
    two = client.get(f"{url}/configVersions?numVersions=2", headers=auth(Role.READER)).json()
    assert [c["version"] for c in two["deviceConfigs"]] == ["13", "12"]
    got = client.get(url, headers=auth(Role.READER)).json()
    assert got["config"]["version"] == "13"
    assert base64.b64decode(got["config"]["binaryData"]) == b"13"


def test_a_new_device_lists_version_one(client: TestClient) -> None:
    dev = make_device(client)
    versions = client.get(
        f"{REG}/devices/{dev['numId']}/configVersions", headers=auth(Role.READER)
    ).json()
    assert [c["version"] for c in versions["deviceConfigs"]] == ["1"]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"binaryData": "not base64!"}, "INVALID_ARGUMENT"),
        ({"binaryData": b64(b"x" * (64 * 1024 + 1))}, "INVALID_ARGUMENT"),
        ({"versionToUpdate": "two", "binaryData": ""}, "INVALID_ARGUMENT"),
        ({"versionToUpdate": -1, "binaryData": ""}, "INVALID_ARGUMENT"),
        ({"data": "eA=="}, "INVALID_ARGUMENT"),
    ],
)
def test_modify_config_refusals(client: TestClient, body: dict[str, Any], status: str) -> None:
    dev = make_device(client)
    r = client.post(
        f"{REG}/devices/{dev['id']}:modifyCloudToDeviceConfig", headers=auth(), json=body
    )
    assert error(r)[:2] == (400, status)


def test_config_methods_on_a_missing_device_are_404(client: TestClient) -> None:
    for r in (
        client.post(
            f"{REG}/devices/nobody-here:modifyCloudToDeviceConfig", headers=auth(), json={}
        ),
        client.get(f"{REG}/devices/nobody-here/configVersions", headers=auth()),
        client.get(f"{REG}/devices/nobody-here/states", headers=auth()),
        client.post(
            f"{REG}/devices/nobody-here:sendCommandToDevice",
            headers=auth(),
            json={"binaryData": b64(b"x")},
        ),
    ):
        assert error(r)[:2] == (404, "NOT_FOUND")


def test_config_and_state_roles(client: TestClient) -> None:
    dev = make_device(client)
    url = f"{REG}/devices/{dev['id']}"
    r = client.post(f"{url}:modifyCloudToDeviceConfig", headers=auth(Role.READER), json={})
    assert error(r)[:2] == (403, "PERMISSION_DENIED")
    r = client.post(f"{url}:sendCommandToDevice", headers=auth(Role.READER), json={})
    assert error(r)[:2] == (403, "PERMISSION_DENIED")
    assert client.get(f"{url}/configVersions", headers=auth(Role.READER)).status_code == 200
    assert client.get(f"{url}/states", headers=auth(Role.READER)).status_code == 200
    assert client.get(f"{url}/states").status_code == 401


# --- states ----------------------------------------------------------------------------------


def test_states_newest_first_ten_kept(client: TestClient, registry: Registry) -> None:
    dev = make_device(client)
    url = f"{REG}/devices/{dev['id']}/states"
    assert client.get(url, headers=auth(Role.READER)).json() == {}
    engine = store.open_store(registry.db_url)
    t0 = datetime.now(UTC)
    try:
        for i in range(12):
            device_data.record_state(
                engine, int(dev["numId"]), b"s%d" % i, t0 + timedelta(seconds=i)
            )
    finally:
        engine.dispose()
    states = client.get(url, headers=auth(Role.READER)).json()["deviceStates"]
    assert [base64.b64decode(s["binaryData"]) for s in states] == [
        b"s%d" % i for i in range(11, 1, -1)
    ]
    three = client.get(f"{url}?numStates=3", headers=auth(Role.READER)).json()["deviceStates"]
    assert len(three) == 3 and three[0] == states[0]
    assert error(client.get(f"{url}?numStates=x", headers=auth(Role.READER)))[:2] == (
        400,
        "INVALID_ARGUMENT",
    )


# --- commands --------------------------------------------------------------------------------


def test_command_to_a_device_not_connected_is_failed_precondition(client: TestClient) -> None:
    dev = make_device(client)
    r = client.post(
        f"{REG}/devices/{dev['id']}:sendCommandToDevice",
        headers=auth(),
        json={"binaryData": b64(b"reboot"), "subfolder": "ops"},
    )
    status, code, message = error(r)
    assert (status, code) == (400, "FAILED_PRECONDITION")
    assert message == f"Device `{dev['id']}` is not subscribed to the commands topic."


@pytest.mark.parametrize(
    "body",
    [{}, {"binaryData": b64(b"x"), "subfolder": "a/#"}, {"binaryData": b64(b"x" * 262145)}],
)
def test_command_refusals(client: TestClient, body: dict[str, Any]) -> None:
    dev = make_device(client)
    r = client.post(f"{REG}/devices/{dev['id']}:sendCommandToDevice", headers=auth(), json=body)
    assert error(r)[:2] == (400, "INVALID_ARGUMENT")


# --- gateways --------------------------------------------------------------------------------


def test_bind_and_unbind(client: TestClient, registry: Registry) -> None:
    gw = make_device(client, {"gatewayConfig": {"gatewayType": "GATEWAY"}})
    dev = make_device(client)
    plain = make_device(client)
    body = {"gatewayId": gw["id"], "deviceId": dev["id"]}
    # binding is a device write (Cloud IoT's cloudiot.devices.bindGateway)
    r = client.post(f"{REG}:bindDeviceToGateway", headers=auth(Role.WRITER), json=body)
    assert r.status_code == 200 and r.json() == {}
    again = client.post(f"{REG}:bindDeviceToGateway", headers=auth(Role.ADMIN), json=body)
    assert again.status_code == 200  # idempotent
    engine = store.open_store(registry.db_url)
    try:
        assert device_data.is_bound(engine, int(gw["numId"]), int(dev["numId"]))
        refusals = [
            ({"gatewayId": plain["id"], "deviceId": dev["id"]}, 400, "not a gateway"),
            ({"gatewayId": gw["id"], "deviceId": gw["id"]}, 400, "is a gateway"),
            ({"gatewayId": gw["id"], "deviceId": "nobody-here"}, 404, "doesn't exist"),
            ({"gatewayId": "nobody-here", "deviceId": dev["id"]}, 404, "doesn't exist"),
            ({"deviceId": dev["id"]}, 400, "gateway_id"),
        ]
        for bad, status, words in refusals:
            r = client.post(f"{REG}:bindDeviceToGateway", headers=auth(Role.ADMIN), json=bad)
            assert r.status_code == status and words in r.json()["error"]["message"], bad
        r = client.post(f"{REG}:unbindDeviceFromGateway", headers=auth(Role.ADMIN), json=body)
        assert r.status_code == 200 and r.json() == {}
        assert not device_data.is_bound(engine, int(gw["numId"]), int(dev["numId"]))
        r = client.post(f"{REG}:unbindDeviceFromGateway", headers=auth(Role.ADMIN), json=body)
        assert error(r)[:2] == (404, "NOT_FOUND")
        # by numId too; a deleted device takes its bindings with it
        body_num = {"gatewayId": gw["numId"], "deviceId": dev["numId"]}
        client.post(f"{REG}:bindDeviceToGateway", headers=auth(Role.ADMIN), json=body_num)
        assert device_data.is_bound(engine, int(gw["numId"]), int(dev["numId"]))
        client.delete(f"{REG}/devices/{dev['id']}", headers=auth(Role.ADMIN))
        assert not device_data.is_bound(engine, int(gw["numId"]), int(dev["numId"]))
    finally:
        engine.dispose()
    r = client.post(f"{REG}:bindDeviceToGateway", headers=auth(Role.READER), json=body)
    assert error(r)[:2] == (403, "PERMISSION_DENIED")
    assert "cloudiot.devices.bindGateway" in r.json()["error"]["message"]


# --- the device plane is told --------------------------------------------------------------


class RecordingPlane:
    """Records the hooks the API calls (the real plane is helper A's; its behaviour is
    tested with it). ``send_command`` refuses as the plane does for an unsubscribed device."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def config_changed(self, *args: Any) -> None:
        self.calls.append(("config_changed", args))

    def device_changed(self, *args: Any) -> None:
        self.calls.append(("device_changed", args))

    def registry_changed(self, *args: Any) -> None:
        self.calls.append(("registry_changed", args))

    async def send_command(self, *args: Any) -> None:
        self.calls.append(("send_command", args))


def test_the_device_plane_hears_of_changes(tmp_path: Path) -> None:
    app = make_registry(tmp_path).app
    with TestClient(app, raise_server_exceptions=False) as c:
        plane = RecordingPlane()
        app.state.plane = plane
        dev = make_device(c)
        r = c.post(
            f"{REG}/devices/{dev['id']}:modifyCloudToDeviceConfig",
            headers=auth(),
            json={"binaryData": b64(b"cfg")},
        )
        name, (reg, device, config) = plane.calls[-1]
        assert name == "config_changed" and reg.registry_id == REGISTRY
        assert device.device_id == dev["id"] and config.version == 2 and config.data == b"cfg"
        assert r.json()["version"] == "2"
        r = c.post(
            f"{REG}/devices/{dev['id']}:sendCommandToDevice",
            headers=auth(),
            json={"binaryData": b64(b"go"), "subfolder": "/ops"},
        )
        assert r.status_code == 200 and r.json() == {}
        name, (reg, device, data, sub) = plane.calls[-1]
        assert (name, device.device_id, data, sub) == ("send_command", dev["id"], b"go", "ops")
        c.patch(
            f"{REG}/devices/{dev['numId']}?updateMask=blocked",
            headers=auth(),
            json={"blocked": True},
        )
        assert plane.calls[-1][0] == "device_changed" and plane.calls[-1][1][1] == dev["id"]
        c.patch(
            f"{REG}?updateMask=mqtt_config",
            headers=auth(Role.ADMIN),
            json={"mqttConfig": {"mqttEnabledState": 2}},
        )
        name, (reg,) = plane.calls[-1]
        assert name == "registry_changed" and reg.mqtt_enabled is False
        c.delete(f"{REG}/devices/{dev['numId']}", headers=auth(Role.ADMIN))
        assert plane.calls[-1][0] == "device_changed" and plane.calls[-1][1][1] == dev["id"]


# --- deviations the issue lists --------------------------------------------------------------


def test_device_list_without_field_mask_returns_id_and_num_id(client: TestClient) -> None:
    dev = make_device(client, {"metadata": {"line": "l1"}})
    listed = client.get(
        f"{REG}/devices", headers=auth(Role.READER), params={"deviceIds": dev["id"]}
    ).json()["devices"]
    assert listed == [{"id": dev["id"], "numId": dev["numId"]}]
    masked = client.get(
        f"{REG}/devices",
        headers=auth(Role.READER),
        params={"deviceIds": dev["id"], "fieldMask": "metadata,gatewayConfig,config"},
    ).json()["devices"]
    assert masked[0]["metadata"] == {"line": "l1"}
    assert masked[0]["gatewayConfig"]["gatewayType"] == "NON_GATEWAY"
    assert masked[0]["config"]["version"] == "1"
    assert set(masked[0]) == {"id", "numId", "metadata", "gatewayConfig", "config"}


@pytest.mark.parametrize("ident", ["goog-device", "googthing", "GOOG-x"])
def test_goog_ids_refused(client: TestClient, ident: str) -> None:
    r = client.post(f"{REG}/devices", headers=auth(), json={"id": ident})
    status, code, message = error(r)
    assert (status, code) == (400, "INVALID_ARGUMENT") and "goog" in message
    r = client.post(f"/v1/{PARENT}/registries", headers=auth(Role.ADMIN), json={"id": ident})
    status, code, message = error(r)
    assert (status, code) == (400, "INVALID_ARGUMENT") and "goog" in message


@pytest.mark.parametrize("token", ["é", "%C3%A9", "%FF%FE", "%ED%A0%80", "Zm9v%C3%A9", "8J+Ygg"])
def test_undecodable_page_tokens_are_invalid_argument(client: TestClient, token: str) -> None:
    for url in (f"{REG}/devices", f"/v1/{PARENT}/registries"):
        r = client.get(f"{url}?pageToken={token}", headers=auth(Role.READER))
        assert error(r)[:2] == (400, "INVALID_ARGUMENT"), (url, token)


# --- older databases -------------------------------------------------------------------------


def test_older_database_gets_the_new_columns(tmp_path: Path) -> None:
    """A registry database from before issue 16 (no plane columns) opens, reads with the
    defaults and takes the new fields."""
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.executescript(
            """
            CREATE TABLE registry_registries (pk INTEGER PRIMARY KEY, project VARCHAR(255)
              NOT NULL, location VARCHAR(255) NOT NULL, registry_id VARCHAR(255) NOT NULL,
              credentials JSON NOT NULL, created DATETIME NOT NULL,
              UNIQUE (project, location, registry_id));
            CREATE TABLE registry_devices (num_id BIGINT PRIMARY KEY, registry_pk INTEGER NOT
              NULL REFERENCES registry_registries (pk), device_id VARCHAR(255) NOT NULL,
              credentials JSON NOT NULL, blocked BOOLEAN NOT NULL, metadata JSON NOT NULL,
              created DATETIME NOT NULL, UNIQUE (registry_pk, device_id));
            INSERT INTO registry_registries VALUES (1, 'p', 'l', 'old', '[]',
              '2025-01-01 00:00:00');
            INSERT INTO registry_devices VALUES (1000000000000001, 1, 'dev-old', '[]', 0, '{}',
              '2025-01-01 00:00:00');
            """
        )
    engine = store.open_store(f"sqlite:///{path}")
    try:
        reg = store.get_registry(engine, "p", "l", "old")
        assert reg is not None and reg.mqtt_enabled and reg.http_enabled
        assert reg.event_notification_configs == () and reg.state_notification_topic is None
        dev = store.get_device(engine, reg, "dev-old")
        assert dev is not None and dev.gateway_type == "NON_GATEWAY"
        assert dev.last_event_time is None and dev.last_error_status is None
        when = datetime(2026, 5, 5, tzinfo=UTC)
        device_data.touch(engine, dev.num_id, last_event_time=when)
        cfg = device_data.modify_config(engine, reg, dev, b"new")
        assert cfg.version == 2
        again = store.get_device(engine, reg, "dev-old")
        assert again is not None and again.last_event_time == when
        assert again.last_event_time.tzinfo is not None
    finally:
        engine.dispose()


# --- wiring ----------------------------------------------------------------------------------


def test_create_app_builds_the_plane_and_serves_the_bridge_contract(tmp_path: Path) -> None:
    """``app.state.plane`` is a DevicePlane; with ``bridge_token_hash`` the ``/bridge/v1``
    routes are served for that token only; without it they do not exist."""
    from provisioner.cloud.app import create_app
    from provisioner.cloud.plane.service import DevicePlane
    from provisioner.cloud.tokens import token_hash

    roles = {token_hash(t): r for r, t in TOKENS.items()}
    db_url = make_registry(tmp_path).db_url
    app = create_app(db_url, roles, bridge_token_hash=token_hash("bridge-secret"))
    assert isinstance(app.state.plane, DevicePlane)
    sync = {"messages": [], "disconnected": []}
    with TestClient(app, raise_server_exceptions=False) as c:
        ok = c.post("/bridge/v1/sync", json=sync, headers={"Authorization": "Bearer bridge-secret"})
        assert ok.status_code == 200 and ok.json() == {"kick": [], "deliver": []}
        wrong = c.post("/bridge/v1/sync", json=sync, headers=auth(Role.ADMIN))
        assert wrong.status_code == 401
    without = create_app(db_url, roles)
    with TestClient(without, raise_server_exceptions=False) as c:
        r = c.post("/bridge/v1/sync", json=sync, headers={"Authorization": "Bearer bridge-secret"})
        assert r.status_code == 404
