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

from provisioner.cloud import resources, store
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
    registry_id = resources.check_id(body.id, "registry")
    resources.check_parent(project, location)
    cas = resources.check_registry_credentials(body.credentials or [])
    level = resources.parse_log_level(body.log_level, "device_registry")
    try:
        reg = store.create_registry(engine, project, location, registry_id, cas, level)
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
    mask = resources.parse_update_mask(
        mask_raw,
        resources.REGISTRY_UPDATABLE,
        "device_registry",
        resources.REGISTRY_UNSUPPORTED,
    )
    cas = (
        resources.check_registry_credentials(body.credentials or [])
        if "credentials" in mask
        else None
    )
    level = (
        resources.parse_log_level(body.log_level, "device_registry")
        if "log_level" in mask
        else None
    )
    updated = store.update_registry(engine, reg, cas, level)
    if updated is None:
        raise ApiError(Code.NOT_FOUND, f"A registry with the name '{reg.name}' doesn't exist.")
    return resources.registry_json(updated, how)


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
    return resources.device_json(reg, dev, how)


def get_device(
    engine: Engine, reg: store.StoredRegistry, ident: str, how: Rendering
) -> dict[str, Any]:
    dev = store.get_device(engine, reg, ident)
    if dev is None:
        raise device_not_found(reg, ident)
    return resources.device_json(reg, dev, how)


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
    return resources.device_json(reg, dev, how)


def delete_device(engine: Engine, reg: store.StoredRegistry, ident: str) -> None:
    if not store.delete_device(engine, reg, ident):
        raise device_not_found(reg, ident)


def list_devices(
    engine: Engine, reg: store.StoredRegistry, q: DeviceQuery, how: Rendering
) -> dict[str, Any]:
    devices, more = store.list_devices(engine, reg, q.after, q.size, q.ids, q.num_ids)
    out: dict[str, Any] = {
        "devices": [resources.device_json(reg, d, how, q.fields) for d in devices]
    }
    if more and devices:
        out["nextPageToken"] = resources.encode_page_token(devices[-1].device_id)
    return out
