"""The built-in registry's own database: registries and their devices.

It is deliberately not the product's database. The registry stands in for a cloud service,
so it must know nothing the cloud would not, and the product must not be able to "fix" the
registry by writing to it. Its tables therefore live on their own SQLModel ``registry`` (own
metadata, ``registry_`` prefix): ``provisioner.db`` creating its schema never creates these,
and :func:`open_store` never creates the product's.

Callers get frozen values (:class:`StoredRegistry`, :class:`StoredDevice`), never ORM rows,
so no session outlives a request.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
    delete,
    inspect,
)
from sqlalchemy import func as sql_func
from sqlalchemy import text as sql_text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import registry as orm_registry
from sqlmodel import Field, Session, SQLModel, col, select

from provisioner.cloud.certificates import RegistryCertificate
from provisioner.cloud.credentials import Credential, PublicKeyFormat
from provisioner.db.engine import make_engine
from provisioner.errors import ServiceUnavailableError

# Cloud IoT numIds are server-assigned, unique across registries, and opaque to clients;
# drawing them at random (rather than counting) reveals nothing about fleet size.
NUM_ID_MIN = 10**15
NUM_ID_MAX = 2**63 - 1  # PostgreSQL BIGINT
_NUM_ID_ATTEMPTS = 5


class RegistryTable(SQLModel, registry=orm_registry()):
    """Base of the registry's tables: a metadata of their own (see the module docstring)."""


class RegistryRow(RegistryTable, table=True):
    __tablename__ = "registry_registries"
    __table_args__ = (UniqueConstraint("project", "location", "registry_id"),)

    pk: int | None = Field(default=None, primary_key=True)
    project: str = Field(max_length=255)
    location: str = Field(max_length=255)
    registry_id: str = Field(max_length=255)
    # Registry CA certificates (Cloud IoT's DeviceRegistry.credentials), PEM as sent.
    credentials: list[dict[str, Any]] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False)
    )
    # google.cloud.iot.v1.LogLevel number; 0 = unspecified. Added after the first release,
    # hence nullable and added by open_store to older databases.
    log_level: int | None = Field(default=0, sa_column=Column(Integer, nullable=True))
    created: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    # Device-plane settings (issue 16), nullable for the same reason as log_level: NULL
    # reads as Cloud IoT's default (MQTT and HTTP enabled, no notification configs).
    mqtt_enabled: bool | None = Field(default=True, sa_column=Column(Boolean, nullable=True))
    http_enabled: bool | None = Field(default=True, sa_column=Column(Boolean, nullable=True))
    event_notification_configs: list[dict[str, Any]] | None = Field(
        default=None, sa_column=Column(JSON, nullable=True)
    )
    state_notification_topic: str | None = Field(
        default=None, sa_column=Column(String(1024), nullable=True)
    )


class DeviceRow(RegistryTable, table=True):
    __tablename__ = "registry_devices"
    __table_args__ = (UniqueConstraint("registry_pk", "device_id"),)

    num_id: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    registry_pk: int = Field(foreign_key="registry_registries.pk", index=True)
    device_id: str = Field(max_length=255)
    credentials: list[dict[str, Any]] = Field(sa_column=Column(JSON, nullable=False))
    blocked: bool = False
    # ``metadata`` is SQLAlchemy's own attribute on table classes, hence ``meta``.
    meta: dict[str, str] = Field(sa_column=Column("metadata", JSON, nullable=False))
    log_level: int | None = Field(default=0, sa_column=Column(Integer, nullable=True))
    created: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    # Gateways and the device plane's bookkeeping (issue 16); all nullable (older databases
    # get them as added columns, NULL meaning a non-gateway never seen).
    gateway_type: str | None = Field(default=None, sa_column=Column(String(32), nullable=True))
    gateway_auth_method: str | None = Field(
        default=None, sa_column=Column(String(64), nullable=True)
    )
    last_heartbeat_time: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    last_event_time: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    last_state_time: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    last_config_ack_time: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    last_config_send_time: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    last_error_time: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    last_error_status: dict[str, Any] | None = Field(
        default=None, sa_column=Column(JSON, nullable=True)
    )
    # Gateway bookkeeping for a bound device: the last gateway it came through, and when.
    last_accessed_gateway_id: str | None = Field(
        default=None, sa_column=Column(String(255), nullable=True)
    )
    last_accessed_gateway_time: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )


class DeviceConfigRow(RegistryTable, table=True):
    """One version of a device's configuration (``device_data``): the newest 10 are kept, as
    Cloud IoT kept them. Version 1 is never stored: every device has it, empty, from its
    creation (what Cloud IoT showed for a device nobody configured)."""

    __tablename__ = "registry_device_configs"

    device_num_id: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    version: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    cloud_update_time: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    device_ack_time: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    data: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class DeviceStateRow(RegistryTable, table=True):
    """One state report of a device (``device_data``): the newest 10 are kept."""

    __tablename__ = "registry_device_states"

    pk: int | None = Field(default=None, primary_key=True)
    device_num_id: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))
    update_time: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    data: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class BindingRow(RegistryTable, table=True):
    """A device bound to a gateway (``bindDeviceToGateway``); both in the same registry."""

    __tablename__ = "registry_gateway_bindings"

    gateway_num_id: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    device_num_id: int = Field(
        sa_column=Column(BigInteger, primary_key=True, autoincrement=False, index=True)
    )
    registry_pk: int = Field(index=True)


# Columns added after the first release: (table, column, SQL type) for _add_missing_columns.
_ADDED_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("registry_registries", "log_level", "INTEGER"),
    ("registry_devices", "log_level", "INTEGER"),
    ("registry_registries", "mqtt_enabled", "BOOLEAN"),
    ("registry_registries", "http_enabled", "BOOLEAN"),
    ("registry_registries", "event_notification_configs", "JSON"),
    ("registry_registries", "state_notification_topic", "VARCHAR(1024)"),
    ("registry_devices", "gateway_type", "VARCHAR(32)"),
    ("registry_devices", "gateway_auth_method", "VARCHAR(64)"),
    ("registry_devices", "last_heartbeat_time", "TIMESTAMP WITH TIME ZONE"),
    ("registry_devices", "last_event_time", "TIMESTAMP WITH TIME ZONE"),
    ("registry_devices", "last_state_time", "TIMESTAMP WITH TIME ZONE"),
    ("registry_devices", "last_config_ack_time", "TIMESTAMP WITH TIME ZONE"),
    ("registry_devices", "last_config_send_time", "TIMESTAMP WITH TIME ZONE"),
    ("registry_devices", "last_error_time", "TIMESTAMP WITH TIME ZONE"),
    ("registry_devices", "last_error_status", "JSON"),
    ("registry_devices", "last_accessed_gateway_id", "VARCHAR(255)"),
    ("registry_devices", "last_accessed_gateway_time", "TIMESTAMP WITH TIME ZONE"),
)

# The device fields the device plane stamps (device_data.touch), in StoredDevice's names.
TIME_FIELDS = (
    "last_heartbeat_time",
    "last_event_time",
    "last_state_time",
    "last_config_ack_time",
    "last_config_send_time",
    "last_error_time",
)


class AlreadyExists(Exception):
    """The id is taken in its parent (a registry in its location, a device in its registry)."""


class NotEmpty(Exception):
    """A registry that still has devices cannot be deleted."""


@dataclass(frozen=True)
class StoredRegistry:
    pk: int
    project: str
    location: str
    registry_id: str
    created: datetime
    credentials: tuple[RegistryCertificate, ...] = ()
    log_level: int = 0
    mqtt_enabled: bool = True
    http_enabled: bool = True
    event_notification_configs: tuple[EventNotificationConfig, ...] = ()
    state_notification_topic: str | None = None

    @property
    def name(self) -> str:
        return f"projects/{self.project}/locations/{self.location}/registries/{self.registry_id}"


@dataclass(frozen=True)
class EventNotificationConfig:
    """Where a registry's telemetry goes: events whose subfolder equals
    ``subfolder_matches`` exactly, as Cloud IoT matched it ("" matches every event), go to
    ``topic`` (Cloud IoT's ``pubsubTopicName``; here a topic of the local event store,
    ``events``)."""

    subfolder_matches: str
    topic: str


@dataclass(frozen=True)
class RegistryChanges:
    """A validated registry PATCH: each field not None replaces the stored one
    (``state_notification_topic=""`` clears it)."""

    credentials: tuple[RegistryCertificate, ...] | None = None
    log_level: int | None = None
    mqtt_enabled: bool | None = None
    http_enabled: bool | None = None
    event_notification_configs: tuple[EventNotificationConfig, ...] | None = None
    state_notification_topic: str | None = None


@dataclass(frozen=True)
class NewDevice:
    """A validated create request (see ``resources.new_device``)."""

    device_id: str
    credentials: tuple[Credential, ...]
    blocked: bool
    metadata: dict[str, str]
    log_level: int = 0
    gateway_type: str = "NON_GATEWAY"
    gateway_auth_method: str = "ASSOCIATION_ONLY"


@dataclass(frozen=True)
class DeviceChanges:
    """A validated PATCH: each field not None replaces the stored one."""

    credentials: tuple[Credential, ...] | None = None
    blocked: bool | None = None
    metadata: dict[str, str] | None = None
    log_level: int | None = None
    gateway_auth_method: str | None = None


@dataclass(frozen=True)
class StoredDevice:
    num_id: int
    device_id: str
    credentials: tuple[Credential, ...]
    blocked: bool
    metadata: dict[str, str]
    created: datetime
    log_level: int = 0
    gateway_type: str = "NON_GATEWAY"
    gateway_auth_method: str = "ASSOCIATION_ONLY"
    last_heartbeat_time: datetime | None = None
    last_event_time: datetime | None = None
    last_state_time: datetime | None = None
    last_config_ack_time: datetime | None = None
    last_config_send_time: datetime | None = None
    last_error_time: datetime | None = None
    last_error_status: dict[str, Any] | None = None
    last_accessed_gateway_id: str | None = None
    last_accessed_gateway_time: datetime | None = None

    @property
    def is_gateway(self) -> bool:
        return self.gateway_type == "GATEWAY"


def open_store(url: str) -> Engine:
    """An engine on the registry database, with its tables created if missing."""
    # The event store's table is declared in its own module, which imports this one.
    from provisioner.cloud import events  # noqa: F401

    engine = make_engine(url)
    try:
        RegistryTable.metadata.create_all(engine)
        _add_missing_columns(engine)
    except SQLAlchemyError as exc:
        engine.dispose()
        where = engine.url.render_as_string(hide_password=True)
        raise ServiceUnavailableError(
            f"cannot open the registry database {where}: {type(exc).__name__}; check "
            "registry.database_url"
        ) from None
    return engine


def _add_missing_columns(engine: Engine) -> None:
    """Columns added since the first release, added to databases that predate them (the
    only migration this store has needed: every added column is nullable and NULL reads as
    its default, so no backfill)."""
    found = inspect(engine)
    have = {t: {c["name"] for c in found.get_columns(t)} for t in {t for t, _, _ in _ADDED_COLUMNS}}
    for table, column, sql_type in _ADDED_COLUMNS:
        if column not in have[table]:
            with engine.begin() as c:
                c.execute(sql_text(f"ALTER TABLE {table} ADD COLUMN {column} {sql_type}"))


def _now() -> datetime:
    return datetime.now(UTC)


def utc(when: datetime) -> datetime:
    """A stored time as an aware UTC time: SQLite hands back naive datetimes, and every time
    this store keeps is UTC (the device plane and the event store read theirs through this
    too)."""
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _utc_or_none(when: datetime | None) -> datetime | None:
    return None if when is None else utc(when)


def _event_configs(raw: list[dict[str, Any]] | None) -> tuple[EventNotificationConfig, ...]:
    return tuple(
        EventNotificationConfig(c.get("subfolderMatches", ""), c["topic"]) for c in raw or ()
    )


def _event_configs_json(configs: tuple[EventNotificationConfig, ...]) -> list[dict[str, Any]]:
    return [{"subfolderMatches": c.subfolder_matches, "topic": c.topic} for c in configs]


def _registry(row: RegistryRow) -> StoredRegistry:
    assert row.pk is not None
    return StoredRegistry(
        row.pk,
        row.project,
        row.location,
        row.registry_id,
        utc(row.created),
        tuple(RegistryCertificate(c["certificate"]) for c in row.credentials),
        row.log_level or 0,
        mqtt_enabled=row.mqtt_enabled is not False,
        http_enabled=row.http_enabled is not False,
        event_notification_configs=_event_configs(row.event_notification_configs),
        state_notification_topic=row.state_notification_topic or None,
    )


def _registry_credentials_json(cas: tuple[RegistryCertificate, ...]) -> list[dict[str, Any]]:
    return [{"format": "X509_CERTIFICATE_PEM", "certificate": c.certificate} for c in cas]


def _credentials_json(creds: tuple[Credential, ...]) -> list[dict[str, Any]]:
    return [
        {"format": c.format.name, "key": c.key, "expirationTime": c.expiration_time} for c in creds
    ]


def _device(row: DeviceRow) -> StoredDevice:
    return StoredDevice(
        num_id=int(row.num_id),
        device_id=row.device_id,
        credentials=tuple(
            Credential(PublicKeyFormat[c["format"]], c["key"], c["expirationTime"])
            for c in row.credentials
        ),
        blocked=bool(row.blocked),
        metadata=dict(row.meta),
        created=utc(row.created),
        log_level=row.log_level or 0,
        gateway_type=row.gateway_type or "NON_GATEWAY",
        gateway_auth_method=row.gateway_auth_method or "ASSOCIATION_ONLY",
        last_heartbeat_time=_utc_or_none(row.last_heartbeat_time),
        last_event_time=_utc_or_none(row.last_event_time),
        last_state_time=_utc_or_none(row.last_state_time),
        last_config_ack_time=_utc_or_none(row.last_config_ack_time),
        last_config_send_time=_utc_or_none(row.last_config_send_time),
        last_error_time=_utc_or_none(row.last_error_time),
        last_error_status=dict(row.last_error_status) if row.last_error_status else None,
        last_accessed_gateway_id=row.last_accessed_gateway_id,
        last_accessed_gateway_time=_utc_or_none(row.last_accessed_gateway_time),
    )


# --- registries ------------------------------------------------------------------------------


def get_registry(
    engine: Engine, project: str, location: str, registry_id: str
) -> StoredRegistry | None:
    with Session(engine) as s:
        row = s.exec(
            select(RegistryRow).where(
                RegistryRow.project == project,
                RegistryRow.location == location,
                RegistryRow.registry_id == registry_id,
            )
        ).first()
        return None if row is None else _registry(row)


def create_registry(
    engine: Engine,
    project: str,
    location: str,
    registry_id: str,
    credentials: tuple[RegistryCertificate, ...] = (),
    log_level: int = 0,
    *,
    mqtt_enabled: bool = True,
    http_enabled: bool = True,
    event_notification_configs: tuple[EventNotificationConfig, ...] = (),
    state_notification_topic: str | None = None,
) -> StoredRegistry:
    """Raises AlreadyExists when the id is taken in ``projects/{project}/locations/{location}``."""
    row = RegistryRow(
        project=project,
        location=location,
        registry_id=registry_id,
        credentials=_registry_credentials_json(credentials),
        log_level=log_level,
        created=_now(),
        mqtt_enabled=mqtt_enabled,
        http_enabled=http_enabled,
        event_notification_configs=_event_configs_json(event_notification_configs),
        state_notification_topic=state_notification_topic or None,
    )
    try:
        with Session(engine) as s:
            s.add(row)
            s.commit()
            s.refresh(row)
            return _registry(row)
    except IntegrityError:
        raise AlreadyExists(registry_id) from None


def list_registries(
    engine: Engine, project: str, location: str, after: str | None, limit: int
) -> tuple[list[StoredRegistry], bool]:
    """Up to ``limit`` registries of the location in id order after ``after``; more follow?"""
    query = select(RegistryRow).where(
        RegistryRow.project == project, RegistryRow.location == location
    )
    if after is not None:
        query = query.where(col(RegistryRow.registry_id) > after)
    query = query.order_by(col(RegistryRow.registry_id)).limit(limit + 1)
    with Session(engine) as s:
        rows = s.exec(query).all()
        return [_registry(r) for r in rows[:limit]], len(rows) > limit


def update_registry(
    engine: Engine,
    reg: StoredRegistry,
    credentials: tuple[RegistryCertificate, ...] | None = None,
    log_level: int | None = None,
    changes: RegistryChanges | None = None,
) -> StoredRegistry | None:
    """Replace the given fields (None: keep); None if the registry is gone meanwhile.
    ``credentials``/``log_level`` are the original two; ``changes`` carries any field."""
    ch = changes or RegistryChanges()
    credentials = ch.credentials if ch.credentials is not None else credentials
    log_level = ch.log_level if ch.log_level is not None else log_level
    with Session(engine) as s:
        row = s.get(RegistryRow, reg.pk)
        if row is None:
            return None
        if credentials is not None:
            row.credentials = _registry_credentials_json(credentials)
        if log_level is not None:
            row.log_level = log_level
        if ch.mqtt_enabled is not None:
            row.mqtt_enabled = ch.mqtt_enabled
        if ch.http_enabled is not None:
            row.http_enabled = ch.http_enabled
        if ch.event_notification_configs is not None:
            row.event_notification_configs = _event_configs_json(ch.event_notification_configs)
        if ch.state_notification_topic is not None:
            row.state_notification_topic = ch.state_notification_topic or None
        s.add(row)
        s.commit()
        s.refresh(row)
        return _registry(row)


def delete_registry(engine: Engine, reg: StoredRegistry) -> bool:
    """Delete an empty registry (False: already gone). Raises NotEmpty if it has devices;
    the count and the delete share a transaction, and on PostgreSQL the devices' foreign
    key also stops a device created in between."""
    try:
        with Session(engine) as s:
            count = s.exec(
                select(sql_func.count())
                .select_from(DeviceRow)
                .where(DeviceRow.registry_pk == reg.pk)
            ).one()
            if count:
                raise NotEmpty(reg.registry_id)
            row = s.get(RegistryRow, reg.pk)
            if row is None:
                return False
            s.delete(row)
            s.commit()
            return True
    except IntegrityError:
        raise NotEmpty(reg.registry_id) from None


def ensure_registry(
    engine: Engine, project: str, location: str, registry_id: str
) -> StoredRegistry:
    """The registry, created if absent: called once at service start for the configured one,
    never implicitly by a request (a typo in a client's path must be a 404, not a new
    registry)."""
    found = get_registry(engine, project, location, registry_id)
    if found is not None:
        return found
    try:
        return create_registry(engine, project, location, registry_id)
    except AlreadyExists:  # another process created it between our read and insert
        again = get_registry(engine, project, location, registry_id)
        assert again is not None
        return again


# --- devices ---------------------------------------------------------------------------------


def _new_num_id() -> int:
    return NUM_ID_MIN + secrets.randbelow(NUM_ID_MAX - NUM_ID_MIN)


def create_device(engine: Engine, reg: StoredRegistry, new: NewDevice) -> StoredDevice:
    """Store a device under a fresh numId. Raises AlreadyExists when the id is taken."""
    for _ in range(_NUM_ID_ATTEMPTS):
        row = DeviceRow(
            num_id=_new_num_id(),
            registry_pk=reg.pk,
            device_id=new.device_id,
            credentials=_credentials_json(new.credentials),
            blocked=new.blocked,
            meta=dict(new.metadata),
            log_level=new.log_level,
            created=_now(),
            gateway_type=new.gateway_type,
            gateway_auth_method=new.gateway_auth_method,
        )
        stored = _device(row)
        try:
            with Session(engine) as s:
                s.add(row)
                s.commit()
            return stored
        except IntegrityError:
            # Either the device id is taken, or (rarely) the random numId: only the first
            # is the caller's problem.
            if get_device(engine, reg, new.device_id) is not None:
                raise AlreadyExists(new.device_id) from None
    raise RuntimeError(f"no free numId after {_NUM_ID_ATTEMPTS} attempts")


def _device_row(s: Session, reg: StoredRegistry, ident: str) -> DeviceRow | None:
    """By device id or by numId, as Cloud IoT accepts both. A device id starts with a letter,
    so an all-digit ``ident`` can only be a numId."""
    if ident.isdigit():
        if int(ident) > NUM_ID_MAX:
            return None
        cond = DeviceRow.num_id == int(ident)
    else:
        cond = DeviceRow.device_id == ident
    return s.exec(select(DeviceRow).where(DeviceRow.registry_pk == reg.pk, cond)).first()


def get_device(engine: Engine, reg: StoredRegistry, ident: str) -> StoredDevice | None:
    with Session(engine) as s:
        row = _device_row(s, reg, ident)
        return None if row is None else _device(row)


def update_device(
    engine: Engine, reg: StoredRegistry, ident: str, changes: DeviceChanges
) -> StoredDevice | None:
    """Apply ``changes`` to the device (by id or numId); None if there is no such device."""
    with Session(engine) as s:
        row = _device_row(s, reg, ident)
        if row is None:
            return None
        if changes.credentials is not None:
            row.credentials = _credentials_json(changes.credentials)
        if changes.blocked is not None:
            row.blocked = changes.blocked
        if changes.metadata is not None:
            row.meta = dict(changes.metadata)
        if changes.log_level is not None:
            row.log_level = changes.log_level
        if changes.gateway_auth_method is not None:
            row.gateway_auth_method = changes.gateway_auth_method
        s.add(row)
        s.commit()
        s.refresh(row)
        return _device(row)


def delete_device(engine: Engine, reg: StoredRegistry, ident: str) -> bool:
    """Delete the device (by id or numId) with its configs, states and gateway bindings (a
    new device never inherits them: numIds are fresh, but a gateway's bindings name the
    device); False if there was none."""
    with Session(engine) as s:
        row = _device_row(s, reg, ident)
        if row is None:
            return False
        num = row.num_id
        s.execute(delete(DeviceConfigRow).where(col(DeviceConfigRow.device_num_id) == num))
        s.execute(delete(DeviceStateRow).where(col(DeviceStateRow.device_num_id) == num))
        s.execute(
            delete(BindingRow).where(
                (col(BindingRow.device_num_id) == num) | (col(BindingRow.gateway_num_id) == num)
            )
        )
        s.delete(row)
        s.commit()
        return True


def list_devices(
    engine: Engine,
    reg: StoredRegistry,
    after: str | None,
    limit: int,
    ids: frozenset[str] | None = None,
    num_ids: frozenset[int] | None = None,
) -> tuple[list[StoredDevice], bool]:
    """Up to ``limit`` devices in id order, starting after device id ``after``; and whether
    more follow. ``ids`` / ``num_ids``, when given, keep only devices matching either (Cloud
    IoT's deviceIds and deviceNumIds filters)."""
    query = select(DeviceRow).where(DeviceRow.registry_pk == reg.pk)
    if ids is not None or num_ids is not None:
        query = query.where(
            col(DeviceRow.device_id).in_(sorted(ids or ()))
            | col(DeviceRow.num_id).in_(sorted(num_ids or ()))
        )
    if after is not None:
        query = query.where(col(DeviceRow.device_id) > after)
    query = query.order_by(col(DeviceRow.device_id)).limit(limit + 1)
    with Session(engine) as s:
        rows = s.exec(query).all()
        return [_device(r) for r in rows[:limit]], len(rows) > limit
