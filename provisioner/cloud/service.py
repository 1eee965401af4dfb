"""The registry's operations, independent of how a request arrived.

The Cloud IoT v1 routes (``app``) and the ClearBlade-style routes (``clearblade``) both call
these, so every rule (key checks, the registry CA rule, metadata limits, update masks) holds
the same whichever client is used. Functions block (database, key parsing): call them from a
worker thread. They return proto3 JSON dicts or raise :class:`ApiError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Engine
from starlette.datastructures import QueryParams

from provisioner.cloud import device_data, resources, store
from provisioner.cloud.certificates import check_device_credentials
from provisioner.cloud.resources import Rendering
from provisioner.cloud.status import ApiError, Code

DEFAULT_PAGE_SIZE = 1000
MAX_PAGE_SIZE = 10_000


def page_size(raw: str | None) -> int:
    if raw is None or raw == "":
        return DEFAULT_PAGE_SIZE
    try:
        size = int(raw)
    except ValueError:
        raise ApiError(
            Code.INVALID_ARGUMENT, f"Invalid value for pageSize: {raw[:32]!r}."
        ) from None
    if size < 0:
        raise ApiError(Code.INVALID_ARGUMENT, "pageSize must not be negative.")
    return min(size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


@dataclass(frozen=True)
class DeviceQuery:
    """A device list request: paging, filters and the field mask, already validated."""

    size: int
    after: str | None
    fields: frozenset[str]
    ids: frozenset[str] | None
    num_ids: frozenset[int] | None


def query(params: QueryParams, camel: str, snake: str) -> str | None:
    """A query parameter by its proto3 JSON name or its proto field name."""
    return params.get(camel, params.get(snake))


def device_query(params: QueryParams) -> DeviceQuery:
    """A list request's query string (names in proto3 JSON or proto form)."""
    return DeviceQuery(
        size=page_size(query(params, "pageSize", "page_size")),
        after=resources.decode_page_token(query(params, "pageToken", "page_token")),
        fields=resources.parse_field_mask(query(params, "fieldMask", "field_mask")),
        ids=resources.parse_id_filter(params.getlist("deviceIds") + params.getlist("device_ids")),
        num_ids=resources.parse_num_id_filter(
            params.getlist("deviceNumIds") + params.getlist("device_num_ids")
        ),
    )


# --- registries ------------------------------------------------------------------------------


def registry_or_404(
    engine: Engine, project: str, location: str, registry: str
) -> store.StoredRegistry:
    found = store.get_registry(engine, project, location, registry)
    if found is None:
        name = f"projects/{project}/locations/{location}/registries/{registry[:300]}"
        raise ApiError(Code.NOT_FOUND, f"A registry with the name '{name}' doesn't exist.")
    return found


def create_registry(
    engine: Engine, project: str, location: str, body: resources.DeviceRegistryIn, how: Rendering
) -> dict[str, Any]:
    registry_id = resources.check_new_id(body.id, "registry")
    resources.check_parent(project, location)
    cas = resources.check_registry_credentials(body.credentials or [])
    level = resources.parse_log_level(body.log_level, "device_registry")
    plane = resources.new_registry_settings(body)
    try:
        reg = store.create_registry(
            engine,
            project,
            location,
            registry_id,
            cas,
            level,
            mqtt_enabled=plane.mqtt_enabled,
            http_enabled=plane.http_enabled,
            event_notification_configs=plane.event_notification_configs,
            state_notification_topic=plane.state_notification_topic,
        )
    except store.AlreadyExists:
        raise ApiError(
            Code.ALREADY_EXISTS,
            f"Resource already exists in the project (resource={registry_id}).",
        ) from None
    return resources.registry_json(reg, how)


def list_registries(
    engine: Engine, project: str, location: str, size: int, after: str | None, how: Rendering
) -> dict[str, Any]:
    regs, more = store.list_registries(engine, project, location, after, size)
    out: dict[str, Any] = {"deviceRegistries": [resources.registry_json(r, how) for r in regs]}
    if more and regs:
        out["nextPageToken"] = resources.encode_page_token(regs[-1].registry_id)
    return out


def patch_registry(
    engine: Engine,
    reg: store.StoredRegistry,
    body: resources.DeviceRegistryIn,
    mask_raw: str | None,
    how: Rendering,
) -> dict[str, Any]:
    return resources.registry_json(patch_registry_stored(engine, reg, body, mask_raw), how)


def patch_registry_stored(
    engine: Engine,
    reg: store.StoredRegistry,
    body: resources.DeviceRegistryIn,
    mask_raw: str | None,
) -> store.StoredRegistry:
    """The registry after a PATCH (the caller tells the device plane about it)."""
    mask = resources.parse_update_mask(
        mask_raw,
        resources.REGISTRY_UPDATABLE,
        "device_registry",
        resources.REGISTRY_UNSUPPORTED,
    )
    updated = store.update_registry(engine, reg, changes=resources.registry_changes(body, mask))
    if updated is None:
        raise ApiError(Code.NOT_FOUND, f"A registry with the name '{reg.name}' doesn't exist.")
    return updated


def delete_registry(engine: Engine, reg: store.StoredRegistry) -> None:
    try:
        gone = store.delete_registry(engine, reg)
    except store.NotEmpty:
        raise ApiError(
            Code.FAILED_PRECONDITION,
            f"The registry '{reg.name}' is not empty; delete its devices first.",
        ) from None
    if not gone:
        raise ApiError(Code.NOT_FOUND, f"A registry with the name '{reg.name}' doesn't exist.")


# --- devices ---------------------------------------------------------------------------------


def device_not_found(reg: store.StoredRegistry, ident: str) -> ApiError:
    return ApiError(
        Code.NOT_FOUND, f"A device with the name '{reg.name}/devices/{ident[:300]}' doesn't exist."
    )


def create_device(
    engine: Engine, reg: store.StoredRegistry, body: resources.DeviceIn, how: Rendering
) -> dict[str, Any]:
    new = resources.new_device(body)
    check_device_credentials(new.credentials, reg.credentials)
    try:
        dev = store.create_device(engine, reg, new)
    except store.AlreadyExists:
        raise ApiError(
            Code.ALREADY_EXISTS,
            f"Resource already exists in the project (resource={new.device_id}).",
        ) from None
    return _device_json(engine, reg, dev, how)


def _device_json(
    engine: Engine,
    reg: store.StoredRegistry,
    dev: store.StoredDevice,
    how: Rendering,
    fields: frozenset[str] = resources.DEVICE_FIELDS,
) -> dict[str, Any]:
    """A device with its latest config and state (read only when ``fields`` asks)."""
    config = device_data.latest_config(engine, dev.num_id) if "config" in fields else None
    states = device_data.list_states(engine, dev.num_id, 1) if "state" in fields else []
    return resources.device_json(
        reg, dev, how, fields, config=config, state=states[0] if states else None
    )


def get_device(
    engine: Engine, reg: store.StoredRegistry, ident: str, how: Rendering
) -> dict[str, Any]:
    return _device_json(engine, reg, device_or_404(engine, reg, ident), how)


def device_or_404(engine: Engine, reg: store.StoredRegistry, ident: str) -> store.StoredDevice:
    dev = store.get_device(engine, reg, ident)
    if dev is None:
        raise device_not_found(reg, ident)
    return dev


def patch_device(
    engine: Engine,
    reg: store.StoredRegistry,
    ident: str,
    body: resources.DeviceIn,
    mask_raw: str | None,
    how: Rendering,
) -> dict[str, Any]:
    mask = resources.parse_update_mask(mask_raw, resources.DEVICE_UPDATABLE, "device")
    changes = resources.device_changes(body, mask)
    if changes.credentials is not None:
        check_device_credentials(changes.credentials, reg.credentials)
    dev = store.update_device(engine, reg, ident, changes)
    if dev is None:
        raise device_not_found(reg, ident)
    return _device_json(engine, reg, dev, how)


def delete_device(engine: Engine, reg: store.StoredRegistry, ident: str) -> None:
    if not store.delete_device(engine, reg, ident):
        raise device_not_found(reg, ident)


def list_devices(
    engine: Engine, reg: store.StoredRegistry, q: DeviceQuery, how: Rendering
) -> dict[str, Any]:
    devices, more = store.list_devices(engine, reg, q.after, q.size, q.ids, q.num_ids)
    out: dict[str, Any] = {
        "devices": [_device_json(engine, reg, d, how, q.fields) for d in devices]
    }
    if more and devices:
        out["nextPageToken"] = resources.encode_page_token(devices[-1].device_id)
    return out


# --- device plane: configs, states, commands, gateways ---------------------------------------


def modify_config(
    engine: Engine,
    reg: store.StoredRegistry,
    ident: str,
    body: resources.ModifyConfigIn,
) -> tuple[store.StoredDevice, device_data.DeviceConfig]:
    """``modifyCloudToDeviceConfig``: the device and its new config (the caller renders it
    with ``resources.config_json`` and hands it to the device plane)."""
    version = resources.parse_int64(body.version_to_update, "version_to_update")
    data = resources.decode_binary(body.binary_data, "binary_data")
    dev = device_or_404(engine, reg, ident)
    return dev, device_data.modify_config(engine, reg, dev, data, version)


def _count(raw: str | None, what: str) -> int:
    """``numVersions`` / ``numStates``: 0 or absent means all (at most 10 are kept)."""
    if raw is None or raw == "":
        return 10
    if not raw.isascii() or not raw.isdigit() or len(raw) > 10:
        raise ApiError(Code.INVALID_ARGUMENT, f"Invalid value for {what}: {raw[:32]!r}.")
    return int(raw) or 10


def config_versions(
    engine: Engine, reg: store.StoredRegistry, ident: str, num_raw: str | None
) -> dict[str, Any]:
    limit = _count(num_raw, "numVersions")
    dev = device_or_404(engine, reg, ident)
    configs = device_data.config_versions(engine, dev.num_id, limit)
    return {"deviceConfigs": [resources.config_json(c) for c in configs]}


def list_states(
    engine: Engine, reg: store.StoredRegistry, ident: str, num_raw: str | None
) -> dict[str, Any]:
    limit = _count(num_raw, "numStates")
    dev = device_or_404(engine, reg, ident)
    states = device_data.list_states(engine, dev.num_id, limit)
    out: dict[str, Any] = {}
    if states:  # proto3 JSON leaves an empty repeated field out
        out["deviceStates"] = [resources.state_json(s) for s in states]
    return out


@dataclass(frozen=True)
class Command:
    device: store.StoredDevice
    data: bytes
    subfolder: str


MAX_COMMAND_BYTES = 256 * 1024
_COMMAND_SUBFOLDER_MAX = 256


def command(
    engine: Engine, reg: store.StoredRegistry, ident: str, body: resources.SendCommandIn
) -> Command:
    """``sendCommandToDevice``, checked (the device plane delivers it)."""
    data = resources.decode_binary(body.binary_data, "binary_data")
    if not data:
        raise ApiError(Code.INVALID_ARGUMENT, "The command binary_data must be specified.")
    if len(data) > MAX_COMMAND_BYTES:
        raise ApiError(
            Code.INVALID_ARGUMENT,
            f"The command is {len(data)} bytes; the limit is {MAX_COMMAND_BYTES}.",
        )
    sub = body.subfolder or ""
    if len(sub) > _COMMAND_SUBFOLDER_MAX or any(c in sub for c in "#+") or sub != sub.strip():
        raise ApiError(
            Code.INVALID_ARGUMENT,
            "Invalid value at 'subfolder': at most 256 characters, no `#`, `+` or surrounding "
            "whitespace.",
        )
    if sub.startswith("/"):
        sub = sub[1:]
    return Command(device_or_404(engine, reg, ident), data, sub)


def not_subscribed(device: store.StoredDevice) -> ApiError:
    """Cloud IoT's answer to a command for a device not connected and subscribed."""
    return ApiError(
        Code.FAILED_PRECONDITION,
        f"Device `{device.device_id}` is not subscribed to the commands topic.",
    )


def _bind_ids(body: resources.BindIn) -> tuple[str, str]:
    gateway = resources.check_device_ident(body.gateway_id or "") if body.gateway_id else ""
    device = resources.check_device_ident(body.device_id or "") if body.device_id else ""
    if not gateway:
        raise ApiError(Code.INVALID_ARGUMENT, "The gateway_id must be specified.")
    if not device:
        raise ApiError(Code.INVALID_ARGUMENT, "The device_id must be specified.")
    return gateway, device


def bind(engine: Engine, reg: store.StoredRegistry, body: resources.BindIn) -> str:
    """Bind; returns the device id (for the device plane)."""
    gateway, device = _bind_ids(body)
    device_data.bind(engine, reg, gateway, device)
    return device


def unbind(engine: Engine, reg: store.StoredRegistry, body: resources.BindIn) -> str:
    gateway, device = _bind_ids(body)
    device_data.unbind(engine, reg, gateway, device)
    return device
