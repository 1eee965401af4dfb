"""The registry's OpenAPI document, served at ``/openapi.json``.

The routes read their bodies and query strings themselves (proto3 JSON, both spellings of
each name, errors in Google's words: :mod:`resources`), so FastAPI cannot infer them; this
module describes them by hand on top of what FastAPI generates: request bodies, the query
parameters Cloud IoT defines, the resources answered, the google.rpc error of every refusal
and the bearer scheme. It also declares OpenAPI ``links`` (a registry created → its devices
created, read, patched, deleted; a device created → read, patched or deleted by id or by
numId), so clients and stateful fuzzers can follow a registry's life as a caller would.
The device-plane operations (configs, states, commands, gateway bindings) are described
without links: each has its own fuzz against a real device (``tests/cloud/test_fuzz.py``).

Only the Cloud IoT v1 paths are described: the ClearBlade-shaped paths exist for one
third-party client that never reads a schema.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from provisioner.cloud.certificates import MAX_REGISTRY_CREDENTIALS
from provisioner.cloud.clearblade import PATH as CLEARBLADE_PATH
from provisioner.cloud.credentials import MAX_CREDENTIALS, PublicKeyFormat
from provisioner.cloud.resources import (
    ID_PATTERN,
    MAX_EVENT_NOTIFICATION_CONFIGS,
    META_KEY_MAX_BYTES,
    GatewayAuthMethod,
    GatewayType,
    HttpState,
    LogLevel,
    MqttState,
)
from provisioner.cloud.store import NUM_ID_MAX

OPENAPI_PATH = "/openapi.json"
REGISTRIES = "/v1/projects/{project}/locations/{location}/registries"
REGISTRY = REGISTRIES + "/{registry}"
DEVICES = REGISTRY + "/devices"
DEVICE = DEVICES + "/{device}"
MODIFY_CONFIG = DEVICE + ":modifyCloudToDeviceConfig"
CONFIG_VERSIONS = DEVICE + "/configVersions"
STATES = DEVICE + "/states"
SEND_COMMAND = DEVICE + ":sendCommandToDevice"
BIND = REGISTRY + ":bindDeviceToGateway"
UNBIND = REGISTRY + ":unbindDeviceFromGateway"

_REF = "#/components/schemas/"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF + name}


def _enum(names: list[str], numbers: list[int]) -> dict[str, Any]:
    """A proto3 enum: its name, or its number (the official REST client sends numbers)."""
    return {"anyOf": [{"type": "string", "enum": names}, {"type": "integer", "enum": numbers}]}


_LOG_LEVEL = _enum(list(LogLevel.__members__), [int(v) for v in LogLevel])
_KEY_FORMAT = _enum(list(PublicKeyFormat.__members__), [int(v) for v in PublicKeyFormat])
_MQTT_STATE = _enum(list(MqttState.__members__), [int(v) for v in MqttState])
_HTTP_STATE = _enum(list(HttpState.__members__), [int(v) for v in HttpState])
_GATEWAY_TYPE = _enum(list(GatewayType.__members__), [int(v) for v in GatewayType])
_GATEWAY_AUTH = _enum(list(GatewayAuthMethod.__members__), [int(v) for v in GatewayAuthMethod])
_TIME = {"type": "string", "description": "RFC 3339, UTC; output only"}
_BYTES = {"type": "string", "description": "base64 (standard or URL-safe)"}
_INT64 = {"anyOf": [{"type": "string", "pattern": "^-?[0-9]{1,18}$"}, {"type": "integer"}]}
_TOPIC = {
    "type": "string",
    "pattern": r"^projects/[^/\s]{1,255}/topics/[a-zA-Z][a-zA-Z0-9\-_.~+%]{2,254}$",
}

META_KEY_PATTERN = r"^[a-zA-Z][a-zA-Z0-9\-_.+~%]+$"
# Resources are closed objects: the registry refuses unknown names (proto3 JSON), so the
# document says so, and generated requests stay within what a client could mean.
SCHEMAS: dict[str, Any] = {
    "Error": {
        "description": "google.rpc.Status as Cloud IoT sends it; the message never quotes "
        "more than a short piece of the request.",
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message", "status"],
                "properties": {
                    "code": {"type": "integer", "minimum": 400, "maximum": 599},
                    "message": {"type": "string", "maxLength": 240},
                    "status": {"type": "string"},
                },
            }
        },
    },
    "PublicKeyCredential": {
        "type": "object",
        "additionalProperties": False,
        "properties": {"format": _KEY_FORMAT, "key": {"type": "string"}},
    },
    "DeviceCredential": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "publicKey": _ref("PublicKeyCredential"),
            "expirationTime": {"type": "string"},
        },
    },
    "Device": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "id": {"type": "string", "pattern": f"^{ID_PATTERN}$"},
            "name": {"type": "string", "description": "output only"},
            "numId": {
                "type": "string",
                "pattern": "^[0-9]{1,20}$",
                "description": f"output only; uint64 as a string, at most {NUM_ID_MAX}",
            },
            "credentials": {
                "type": "array",
                "maxItems": MAX_CREDENTIALS,
                "items": _ref("DeviceCredential"),
            },
            "blocked": {"type": "boolean"},
            "metadata": {
                "type": "object",
                "propertyNames": {"pattern": META_KEY_PATTERN, "maxLength": META_KEY_MAX_BYTES},
                "additionalProperties": {"type": "string"},
            },
            "logLevel": _LOG_LEVEL,
            "gatewayConfig": _ref("GatewayConfig"),
            "lastHeartbeatTime": _TIME,
            "lastEventTime": _TIME,
            "lastStateTime": _TIME,
            "lastConfigAckTime": _TIME,
            "lastConfigSendTime": _TIME,
            "lastErrorTime": _TIME,
            "lastErrorStatus": {
                "type": "object",
                "description": "output only (google.rpc.Status)",
                "properties": {"code": {"type": "integer"}, "message": {"type": "string"}},
            },
            "config": _ref("DeviceConfig"),
            "state": _ref("DeviceState"),
        },
    },
    "GatewayConfig": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "gatewayType": _GATEWAY_TYPE,
            "gatewayAuthMethod": _GATEWAY_AUTH,
            "lastAccessedGatewayId": {"type": "string", "description": "output only"},
            "lastAccessedGatewayTime": _TIME,
        },
    },
    "DeviceConfig": {
        "type": "object",
        "description": "output only in a Device",
        "properties": {
            "version": _INT64,
            "cloudUpdateTime": _TIME,
            "deviceAckTime": _TIME,
            "binaryData": _BYTES,
        },
    },
    "DeviceState": {
        "type": "object",
        "properties": {"updateTime": _TIME, "binaryData": _BYTES},
    },
    "ModifyCloudToDeviceConfigRequest": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "versionToUpdate": {**_INT64, "description": "0: no check"},
            "binaryData": _BYTES,
        },
    },
    "SendCommandToDeviceRequest": {
        "type": "object",
        "additionalProperties": False,
        "required": ["binaryData"],
        "properties": {"binaryData": _BYTES, "subfolder": {"type": "string", "maxLength": 256}},
    },
    "BindDeviceToGatewayRequest": {
        "type": "object",
        "additionalProperties": False,
        "required": ["gatewayId", "deviceId"],
        "properties": {
            "gatewayId": {"type": "string", "description": "id or numId"},
            "deviceId": {"type": "string", "description": "id or numId"},
        },
    },
    "ListDeviceConfigVersionsResponse": {
        "type": "object",
        "properties": {"deviceConfigs": {"type": "array", "items": _ref("DeviceConfig")}},
    },
    "ListDeviceStatesResponse": {
        "type": "object",
        "properties": {"deviceStates": {"type": "array", "items": _ref("DeviceState")}},
    },
    "PublicKeyCertificate": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "format": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
            "certificate": {"type": "string"},
            "x509Details": {"type": "object", "description": "output only"},
        },
    },
    "RegistryCredential": {
        "type": "object",
        "additionalProperties": False,
        "properties": {"publicKeyCertificate": _ref("PublicKeyCertificate")},
    },
    "DeviceRegistry": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "id": {"type": "string", "pattern": f"^{ID_PATTERN}$"},
            "name": {"type": "string", "description": "output only"},
            "credentials": {
                "type": "array",
                "maxItems": MAX_REGISTRY_CREDENTIALS,
                "items": _ref("RegistryCredential"),
            },
            "logLevel": _LOG_LEVEL,
            "mqttConfig": {
                "type": "object",
                "additionalProperties": False,
                "properties": {"mqttEnabledState": _MQTT_STATE},
            },
            "httpConfig": {
                "type": "object",
                "additionalProperties": False,
                "properties": {"httpEnabledState": _HTTP_STATE},
            },
            "eventNotificationConfigs": {
                "type": "array",
                "maxItems": MAX_EVENT_NOTIFICATION_CONFIGS,
                "description": "first match wins; only the last may have no subfolderMatches",
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "subfolderMatches": {"type": "string", "maxLength": 256},
                        "pubsubTopicName": _TOPIC,
                    },
                },
            },
            "stateNotificationConfig": {
                "type": "object",
                "additionalProperties": False,
                "properties": {"pubsubTopicName": _TOPIC},
            },
        },
    },
    "ListDevicesResponse": {
        "type": "object",
        "required": ["devices"],
        "properties": {
            "devices": {"type": "array", "items": _ref("Device")},
            "nextPageToken": {"type": "string"},
        },
    },
    "ListDeviceRegistriesResponse": {
        "type": "object",
        "required": ["deviceRegistries"],
        "properties": {
            "deviceRegistries": {"type": "array", "items": _ref("DeviceRegistry")},
            "nextPageToken": {"type": "string"},
        },
    },
    "Empty": {"type": "object", "maxProperties": 0},
}


def _query(name: str, schema: dict[str, Any], what: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": what}


_PAGING = [
    _query("pageSize", {"type": "integer", "minimum": 0}, "0: the default page size"),
    _query("pageToken", {"type": "string"}, "nextPageToken of the previous page"),
]
_UPDATE_MASK = _query(
    "updateMask", {"type": "string"}, "comma-separated fields to change (required)"
)
_DEVICE_LIST = [
    *_PAGING,
    _query("fieldMask", {"type": "string"}, "comma-separated Device fields to return"),
    _query("deviceIds", {"type": "array", "items": {"type": "string"}}, "only these ids"),
    _query(
        "deviceNumIds",
        {"type": "array", "items": {"type": "string", "pattern": "^[0-9]{1,20}$"}},
        "only these numIds",
    ),
]


def _body(schema: str, *required: str) -> dict[str, Any]:
    """A request body of ``schema``; ``required``: fields a create needs (a patch does not)."""
    body: dict[str, Any] = _ref(schema)
    if required:
        body = {"allOf": [body, {"required": list(required)}]}
    return {"required": True, "content": {"application/json": {"schema": body}}}


def _answer(schema: str, links: dict[str, Any] | None = None) -> dict[str, Any]:
    ok: dict[str, Any] = {
        "description": "OK",
        "content": {"application/json": {"schema": _ref(schema)}},
    }
    if links:
        ok["links"] = links
    error = {
        "description": "a google.rpc error",
        "content": {"application/json": {"schema": _ref("Error")}},
    }
    return {"200": ok, "default": error}


def _link(operation: str, **parameters: str) -> dict[str, Any]:
    return {"operationId": operation, "parameters": parameters}


_PARENT = {"project": "$request.path.project", "location": "$request.path.location"}
_IN_REGISTRY = {**_PARENT, "registry": "$request.path.registry"}


def _registry_links() -> dict[str, Any]:
    """From a created registry to what can be done with it."""
    reg = {**_PARENT, "registry": "$response.body#/id"}
    return {
        "GetRegistry": _link("getRegistry", **reg),
        "PatchRegistry": _link("patchRegistry", **reg),
        "CreateDevice": _link("createDevice", **reg),
        "ListDevices": _link("listDevices", **reg),
        "DeleteRegistry": _link("deleteRegistry", **reg),
    }


def _device_links() -> dict[str, Any]:
    """From a created device to reading, patching and deleting it, by id and by numId."""
    by_id = {**_IN_REGISTRY, "device": "$response.body#/id"}
    by_num = {**_IN_REGISTRY, "device": "$response.body#/numId"}
    return {
        "GetDevice": _link("getDevice", **by_id),
        "GetDeviceByNumId": _link("getDevice", **by_num),
        "PatchDevice": _link("patchDevice", **by_id),
        "DeleteDevice": _link("deleteDevice", **by_id),
    }


# (path, method) → what FastAPI cannot infer.
OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {
    (REGISTRIES, "post"): {
        "operationId": "createRegistry",
        "requestBody": _body("DeviceRegistry", "id"),
        "responses": _answer("DeviceRegistry", _registry_links()),
    },
    (REGISTRIES, "get"): {
        "operationId": "listRegistries",
        "parameters": _PAGING,
        "responses": _answer("ListDeviceRegistriesResponse"),
    },
    (REGISTRY, "get"): {"operationId": "getRegistry", "responses": _answer("DeviceRegistry")},
    (REGISTRY, "patch"): {
        "operationId": "patchRegistry",
        "parameters": [_UPDATE_MASK],
        "requestBody": _body("DeviceRegistry"),
        "responses": _answer("DeviceRegistry"),
    },
    (REGISTRY, "delete"): {"operationId": "deleteRegistry", "responses": _answer("Empty")},
    (DEVICES, "post"): {
        "operationId": "createDevice",
        "requestBody": _body("Device", "id"),
        "responses": _answer("Device", _device_links()),
    },
    (DEVICES, "get"): {
        "operationId": "listDevices",
        "parameters": _DEVICE_LIST,
        "responses": _answer("ListDevicesResponse"),
    },
    (DEVICE, "get"): {"operationId": "getDevice", "responses": _answer("Device")},
    (DEVICE, "patch"): {
        "operationId": "patchDevice",
        "parameters": [_UPDATE_MASK],
        "requestBody": _body("Device"),
        "responses": _answer("Device"),
    },
    (DEVICE, "delete"): {"operationId": "deleteDevice", "responses": _answer("Empty")},
    (MODIFY_CONFIG, "post"): {
        "operationId": "modifyCloudToDeviceConfig",
        "requestBody": _body("ModifyCloudToDeviceConfigRequest"),
        "responses": _answer("DeviceConfig"),
    },
    (CONFIG_VERSIONS, "get"): {
        "operationId": "listDeviceConfigVersions",
        "parameters": [
            _query("numVersions", {"type": "integer", "minimum": 0}, "0: all (10 are kept)")
        ],
        "responses": _answer("ListDeviceConfigVersionsResponse"),
    },
    (STATES, "get"): {
        "operationId": "listDeviceStates",
        "parameters": [
            _query("numStates", {"type": "integer", "minimum": 0}, "0: all (10 are kept)")
        ],
        "responses": _answer("ListDeviceStatesResponse"),
    },
    (SEND_COMMAND, "post"): {
        "operationId": "sendCommandToDevice",
        "requestBody": _body("SendCommandToDeviceRequest"),
        "responses": _answer("Empty"),
    },
    (BIND, "post"): {
        "operationId": "bindDeviceToGateway",
        "requestBody": _body("BindDeviceToGatewayRequest"),
        "responses": _answer("Empty"),
    },
    (UNBIND, "post"): {
        "operationId": "unbindDeviceFromGateway",
        "requestBody": _body("BindDeviceToGatewayRequest"),
        "responses": _answer("Empty"),
    },
}


# Path parameters as Cloud IoT names them (the registry itself takes any project and
# location of 1 to 255 characters: it has no cloud project to check them against).
PATH_PARAMETERS: dict[str, dict[str, Any]] = {
    "project": {"type": "string", "pattern": "^[a-z][a-z0-9-]{0,62}$"},
    "location": {"type": "string", "pattern": "^[a-z][a-z0-9-]{0,62}$"},
    "registry": {"type": "string", "pattern": f"^{ID_PATTERN}$"},
    "device": {
        "description": "the device id, or its numId",
        "anyOf": [
            {"type": "string", "pattern": f"^{ID_PATTERN}$"},
            {"type": "string", "pattern": "^[0-9]{1,19}$"},
        ],
    },
}


def document(app: FastAPI) -> dict[str, Any]:
    """The app's OpenAPI document: FastAPI's (paths, path parameters) completed from
    :data:`OPERATIONS`; built once and kept on the app, as FastAPI does."""
    if app.openapi_schema:
        return app.openapi_schema
    doc = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
    )
    paths: dict[str, Any] = doc.setdefault("paths", {})
    paths.pop(CLEARBLADE_PATH, None)
    for (path, method), extra in OPERATIONS.items():
        op = paths[path][method]
        for param in op.get("parameters", []):
            if param["in"] == "path" and param["name"] in PATH_PARAMETERS:
                param["schema"] = PATH_PARAMETERS[param["name"]]
        params = op.get("parameters", []) + extra.get("parameters", [])
        op.update({k: v for k, v in extra.items() if k != "parameters"})
        if params:
            op["parameters"] = params
    doc.setdefault("components", {})["schemas"] = SCHEMAS
    doc["components"]["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer", "description": "a registry token"}
    }
    doc["security"] = [{"bearer": []}]
    health = paths.get("/healthz", {}).get("get")
    if health is not None:
        health["security"] = []  # open: readiness probes carry no token
        health["responses"] = _answer("Empty") | {"200": {"description": "the database answers"}}
    app.openapi_schema = doc
    return doc
