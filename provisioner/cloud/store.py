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

from sqlalchemy import JSON, BigInteger, Column, DateTime, Integer, UniqueConstraint, inspect
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

    @property
    def name(self) -> str:
        return f"projects/{self.project}/locations/{self.location}/registries/{self.registry_id}"


@dataclass(frozen=True)
class NewDevice:
    """A validated create request (see ``resources.new_device``)."""

    device_id: str
    credentials: tuple[Credential, ...]
    blocked: bool
    metadata: dict[str, str]
    log_level: int = 0


@dataclass(frozen=True)
class DeviceChanges:
    """A validated PATCH: each field not None replaces the stored one."""

    credentials: tuple[Credential, ...] | None = None
    blocked: bool | None = None
    metadata: dict[str, str] | None = None
    log_level: int | None = None


@dataclass(frozen=True)
class StoredDevice:
    num_id: int
    device_id: str
    credentials: tuple[Credential, ...]
    blocked: bool
    metadata: dict[str, str]
    created: datetime
    log_level: int = 0


def open_store(url: str) -> Engine:
    """An engine on the registry database, with its tables created if missing."""
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
    only migration this store has needed: nullable integers, so no backfill)."""
    found = inspect(engine)
    for table in ("registry_registries", "registry_devices"):
        if "log_level" not in {c["name"] for c in found.get_columns(table)}:
            with engine.begin() as c:
                c.execute(sql_text(f"ALTER TABLE {table} ADD COLUMN log_level INTEGER"))


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(when: datetime) -> datetime:
    # SQLite hands back naive datetimes; every stored time is UTC.
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _registry(row: RegistryRow) -> StoredRegistry:
    assert row.pk is not None
    return StoredRegistry(
        row.pk,
        row.project,
        row.location,
        row.registry_id,
        _utc(row.created),
        tuple(RegistryCertificate(c["certificate"]) for c in row.credentials),
        row.log_level or 0,
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
        created=_utc(row.created),
        log_level=row.log_level or 0,
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
) -> StoredRegistry:
    """Raises AlreadyExists when the id is taken in ``projects/{project}/locations/{location}``."""
    row = RegistryRow(
        project=project,
        location=location,
        registry_id=registry_id,
        credentials=_registry_credentials_json(credentials),
        log_level=log_level,
        created=_now(),
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
    credentials: tuple[RegistryCertificate, ...] | None,
    log_level: int | None,
) -> StoredRegistry | None:
    """Replace the given fields (None: keep); None if the registry is gone meanwhile."""
    with Session(engine) as s:
        row = s.get(RegistryRow, reg.pk)
        if row is None:
            return None
        if credentials is not None:
            row.credentials = _registry_credentials_json(credentials)
        if log_level is not None:
            row.log_level = log_level
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
        s.add(row)
        s.commit()
        s.refresh(row)
        return _device(row)


def delete_device(engine: Engine, reg: StoredRegistry, ident: str) -> bool:
    """Delete the device (by id or numId); False if there was none."""
    with Session(engine) as s:
        row = _device_row(s, reg, ident)
        if row is None:
            return False
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
