"""What the device plane keeps per device: configuration versions, state history, gateway
bindings and the ``last*Time`` stamps of the Device resource.

The registry API (``modifyCloudToDeviceConfig``, ``configVersions.list``, ``states.list``,
``bindDeviceToGateway``) and the device plane (MQTT and HTTP bridges) both read and write
through these functions, so a config set over the API is the one a device receives, and a
state a device reports is the one the API lists. Cloud IoT kept the newest 10 configs and
the newest 10 states of a device; so does this.

The tables live in :mod:`store` (on its metadata, so ``open_store`` creates them); this
module holds the rules. Every time is UTC-aware. Functions block: call them from a worker
thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from provisioner.cloud.status import ApiError, Code
from provisioner.cloud.store import (
    TIME_FIELDS,
    BindingRow,
    DeviceConfigRow,
    DeviceRow,
    DeviceStateRow,
    StoredDevice,
    StoredRegistry,
    get_device,
    utc,
)

KEEP_CONFIGS = 10
KEEP_STATES = 10
# Cloud IoT's limits on a config and a state payload.
MAX_CONFIG_BYTES = 64 * 1024
MAX_STATE_BYTES = 64 * 1024


@dataclass(frozen=True)
class DeviceConfig:
    """One configuration version (Cloud IoT's DeviceConfig)."""

    version: int
    cloud_update_time: datetime
    device_ack_time: datetime | None
    data: bytes


@dataclass(frozen=True)
class DeviceState:
    """One state a device reported (Cloud IoT's DeviceState)."""

    update_time: datetime
    data: bytes


def _aware(when: datetime) -> datetime:
    """A caller's time as UTC (a naive one is taken to be UTC already)."""
    return when.astimezone(UTC) if when.tzinfo else when.replace(tzinfo=UTC)


def _config(row: DeviceConfigRow) -> DeviceConfig:
    return DeviceConfig(
        version=int(row.version),
        cloud_update_time=utc(row.cloud_update_time),
        device_ack_time=None if row.device_ack_time is None else utc(row.device_ack_time),
        data=bytes(row.data),
    )


def _first_config(created: datetime) -> DeviceConfig:
    """Version 1, empty, from the device's creation: what every Cloud IoT device had before
    anyone configured it (not stored; see ``store.DeviceConfigRow``)."""
    return DeviceConfig(1, utc(created), None, b"")


# --- configuration ---------------------------------------------------------------------------


def latest_config(engine: Engine, device_num_id: int) -> DeviceConfig | None:
    """The device's current config; None only when there is no such device."""
    found = config_versions(engine, device_num_id, 1)
    return found[0] if found else None


def config_versions(engine: Engine, device_num_id: int, limit: int = 10) -> list[DeviceConfig]:
    """Up to ``limit`` (at most 10) configs, newest first; [] when there is no such device."""
    limit = max(1, min(limit or KEEP_CONFIGS, KEEP_CONFIGS))
    with Session(engine) as s:
        rows = s.exec(
            select(DeviceConfigRow)
            .where(DeviceConfigRow.device_num_id == device_num_id)
            .order_by(col(DeviceConfigRow.version).desc())
            .limit(limit)
        ).all()
        out = [_config(r) for r in rows]
        if len(out) < limit:
            # The implicit version 1, until it is pushed out by ten stored ones.
            dev = s.get(DeviceRow, device_num_id)
            if dev is None:
                return []
            if not out or (out[-1].version == 2):
                out.append(_first_config(dev.created))
        return out


def modify_config(
    engine: Engine,
    reg: StoredRegistry,
    device: StoredDevice,
    data: bytes,
    version_to_update: int = 0,
) -> DeviceConfig:
    """Store ``data`` as the device's next config version and return it. With
    ``version_to_update`` (not 0) the change applies only if that is still the current
    version (Cloud IoT's optimistic concurrency): otherwise FAILED_PRECONDITION, as also
    when another writer took the same version first. Keeps the newest 10 versions."""
    if len(data) > MAX_CONFIG_BYTES:
        raise ApiError(
            Code.INVALID_ARGUMENT,
            f"The config data is {len(data)} bytes; the limit is {MAX_CONFIG_BYTES}.",
        )
    if version_to_update < 0:
        raise ApiError(Code.INVALID_ARGUMENT, "versionToUpdate must not be negative.")
    current = latest_config(engine, device.num_id)
    if current is None:
        raise ApiError(
            Code.NOT_FOUND,
            f"A device with the name '{reg.name}/devices/{device.device_id}' doesn't exist.",
        )
    if version_to_update and version_to_update != current.version:
        raise _stale(version_to_update, current.version)
    row = DeviceConfigRow(
        device_num_id=device.num_id,
        version=current.version + 1,
        cloud_update_time=datetime.now(UTC),
        device_ack_time=None,
        data=data,
    )
    stored = _config(row)
    try:
        with Session(engine) as s:
            s.add(row)
            s.flush()
            _prune_configs(s, device.num_id, stored.version)
            s.commit()
    except IntegrityError:
        # Another writer stored this version between our read and insert.
        raise _stale(version_to_update or current.version, current.version + 1) from None
    return stored


def _stale(asked: int, current: int) -> ApiError:
    return ApiError(
        Code.FAILED_PRECONDITION,
        f"The config version to update ({asked}) does not match the current version ({current}).",
    )


def _prune_configs(s: Session, device_num_id: int, newest: int) -> None:
    s.execute(
        delete(DeviceConfigRow).where(
            col(DeviceConfigRow.device_num_id) == device_num_id,
            col(DeviceConfigRow.version) <= newest - KEEP_CONFIGS,
        )
    )


def ack_config(engine: Engine, device_num_id: int, version: int, when: datetime) -> None:
    """The device acknowledged ``version`` (its PUBACK on the config topic, or an HTTP
    config fetch): sets that version's ``deviceAckTime`` and the device's
    ``lastConfigAckTime``. A version no longer (or never) stored stamps only the device;
    the implicit version 1 is stored when acknowledged."""
    when = _aware(when)
    with Session(engine) as s:
        s.execute(
            update(DeviceConfigRow)
            .where(
                col(DeviceConfigRow.device_num_id) == device_num_id,
                col(DeviceConfigRow.version) == version,
            )
            .values(device_ack_time=when)
        )
        dev = s.get(DeviceRow, device_num_id)
        if version == 1 and dev is not None:
            # The implicit first version, acknowledged: stored now, so its ack time shows.
            first = s.exec(
                select(DeviceConfigRow.version).where(
                    DeviceConfigRow.device_num_id == device_num_id
                )
            ).first()
            if first is None:
                s.add(
                    DeviceConfigRow(
                        device_num_id=device_num_id,
                        version=1,
                        cloud_update_time=utc(dev.created),
                        device_ack_time=when,
                        data=b"",
                    )
                )
        s.execute(
            update(DeviceRow)
            .where(col(DeviceRow.num_id) == device_num_id)
            .values(last_config_ack_time=when)
        )
        s.commit()


# --- state -----------------------------------------------------------------------------------


def record_state(engine: Engine, device_num_id: int, data: bytes, when: datetime) -> DeviceState:
    """Append a state report (and stamp ``lastStateTime``); keeps the newest 10."""
    if len(data) > MAX_STATE_BYTES:
        raise ApiError(
            Code.INVALID_ARGUMENT,
            f"The state data is {len(data)} bytes; the limit is {MAX_STATE_BYTES}.",
        )
    when = _aware(when)
    with Session(engine) as s:
        s.add(DeviceStateRow(device_num_id=device_num_id, update_time=when, data=data))
        s.execute(
            update(DeviceRow)
            .where(col(DeviceRow.num_id) == device_num_id)
            .values(last_state_time=when)
        )
        s.flush()
        keep = s.exec(
            select(DeviceStateRow.pk)
            .where(DeviceStateRow.device_num_id == device_num_id)
            .order_by(col(DeviceStateRow.pk).desc())
            .limit(KEEP_STATES)
        ).all()
        s.execute(
            delete(DeviceStateRow).where(
                col(DeviceStateRow.device_num_id) == device_num_id,
                col(DeviceStateRow.pk).not_in(list(keep)),
            )
        )
        s.commit()
    return DeviceState(when, data)


def list_states(engine: Engine, device_num_id: int, limit: int = 10) -> list[DeviceState]:
    """Up to ``limit`` (at most 10) states, newest first."""
    limit = max(1, min(limit or KEEP_STATES, KEEP_STATES))
    with Session(engine) as s:
        rows = s.exec(
            select(DeviceStateRow)
            .where(DeviceStateRow.device_num_id == device_num_id)
            .order_by(col(DeviceStateRow.pk).desc())
            .limit(limit)
        ).all()
        return [DeviceState(utc(r.update_time), bytes(r.data)) for r in rows]


# --- device stamps ---------------------------------------------------------------------------


def touch(engine: Engine, device_num_id: int, **times: datetime) -> None:
    """Set some of the device's ``last*Time`` fields (keys: ``store.TIME_FIELDS``)."""
    unknown = set(times) - set(TIME_FIELDS)
    if unknown:
        raise ValueError(f"not a device time field: {', '.join(sorted(unknown))}")
    if not times:
        return
    _set(engine, device_num_id, {k: _aware(v) for k, v in times.items()})


def record_error(
    engine: Engine, device_num_id: int, code: int, message: str, when: datetime
) -> None:
    """The device's ``lastErrorStatus`` (a google.rpc.Status: code, message) and
    ``lastErrorTime``. The message is clipped: it may quote what a device sent."""
    status = {"code": int(code), "message": message[:500]}
    _set(engine, device_num_id, {"last_error_status": status, "last_error_time": _aware(when)})


def record_gateway_access(
    engine: Engine, device_num_id: int, gateway_id: str, when: datetime
) -> None:
    """A bound device was reached through ``gateway_id`` (gatewayConfig's
    ``lastAccessedGatewayId`` / ``lastAccessedGatewayTime``)."""
    _set(
        engine,
        device_num_id,
        {"last_accessed_gateway_id": gateway_id, "last_accessed_gateway_time": _aware(when)},
    )


def _set(engine: Engine, device_num_id: int, values: dict[str, Any]) -> None:
    """One UPDATE of the device's row (the plane's stamps: times, error status, gateway)."""
    with Session(engine) as s:
        s.execute(update(DeviceRow).where(col(DeviceRow.num_id) == device_num_id).values(values))
        s.commit()


# --- gateway bindings ------------------------------------------------------------------------


def _pair(
    engine: Engine, reg: StoredRegistry, gateway_ident: str, device_ident: str
) -> tuple[StoredDevice, StoredDevice]:
    gateway = get_device(engine, reg, gateway_ident)
    if gateway is None:
        raise ApiError(
            Code.NOT_FOUND,
            f"A gateway with the name '{reg.name}/devices/{gateway_ident[:300]}' doesn't exist.",
        )
    device = get_device(engine, reg, device_ident)
    if device is None:
        raise ApiError(
            Code.NOT_FOUND,
            f"A device with the name '{reg.name}/devices/{device_ident[:300]}' doesn't exist.",
        )
    return gateway, device


def bind(engine: Engine, reg: StoredRegistry, gateway_ident: str, device_ident: str) -> None:
    """Bind a device to a gateway of the same registry (binding twice is no error, as in
    Cloud IoT). Refused: an unknown gateway or device (NOT_FOUND), a gateway that is not
    one, or a device that is itself a gateway (INVALID_ARGUMENT)."""
    gateway, device = _pair(engine, reg, gateway_ident, device_ident)
    if not gateway.is_gateway:
        raise ApiError(
            Code.INVALID_ARGUMENT,
            f"The device `{gateway.device_id}` is not a gateway (gatewayType is NON_GATEWAY).",
        )
    if device.is_gateway:
        raise ApiError(
            Code.INVALID_ARGUMENT,
            f"The device `{device.device_id}` is a gateway and cannot be bound to another.",
        )
    try:
        with Session(engine) as s:
            if s.get(BindingRow, (gateway.num_id, device.num_id)) is None:
                s.add(
                    BindingRow(
                        gateway_num_id=gateway.num_id,
                        device_num_id=device.num_id,
                        registry_pk=reg.pk,
                    )
                )
                s.commit()
    except IntegrityError:
        pass  # bound concurrently by another request: the outcome asked for


def unbind(engine: Engine, reg: StoredRegistry, gateway_ident: str, device_ident: str) -> None:
    """Remove a binding; NOT_FOUND when either device or the binding does not exist."""
    gateway, device = _pair(engine, reg, gateway_ident, device_ident)
    with Session(engine) as s:
        row = s.get(BindingRow, (gateway.num_id, device.num_id))
        if row is None:
            raise ApiError(
                Code.NOT_FOUND,
                f"The device `{device.device_id}` is not bound to the gateway "
                f"`{gateway.device_id}`.",
            )
        s.delete(row)
        s.commit()


def is_bound(engine: Engine, gateway_num_id: int, device_num_id: int) -> bool:
    with Session(engine) as s:
        return s.get(BindingRow, (gateway_num_id, device_num_id)) is not None


def bound_devices(engine: Engine, gateway_num_id: int) -> list[int]:
    """The numIds of the devices bound to a gateway."""
    with Session(engine) as s:
        return list(
            s.exec(
                select(BindingRow.device_num_id).where(BindingRow.gateway_num_id == gateway_num_id)
            ).all()
        )
