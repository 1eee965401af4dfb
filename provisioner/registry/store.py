"""The built-in registry's own database (never the product's): registries and devices."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from provisioner.db.engine import make_engine
from provisioner.registry.credentials import Credential

metadata = MetaData()

registries = Table(
    "registry_registries",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("project", String(64), nullable=False),
    Column("location", String(64), nullable=False),
    Column("registry_id", String(64), nullable=False),
    Column("created", String(40), nullable=False),
    UniqueConstraint("project", "location", "registry_id"),
)

devices = Table(
    "registry_devices",
    metadata,
    Column("num_id", BigInteger, primary_key=True, autoincrement=False),
    Column("registry_pk", Integer, ForeignKey("registry_registries.pk"), nullable=False),
    Column("device_id", String(256), nullable=False),
    Column("credentials", Text, nullable=False),
    Column("blocked", Boolean, nullable=False, default=False),
    Column("metadata", Text, nullable=False, default="{}"),
    Column("created", String(40), nullable=False),
    UniqueConstraint("registry_pk", "device_id"),
)


class AlreadyExists(Exception):
    pass


@dataclass(frozen=True)
class StoredDevice:
    num_id: int
    device_id: str
    credentials: list[Credential]
    blocked: bool
    metadata: dict[str, str]


def open_store(url: str) -> Engine:
    engine = make_engine(url)
    metadata.create_all(engine)
    return engine


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def ensure_registry(engine: Engine, project: str, location: str, registry_id: str) -> int:
    """The registry's primary key, creating it if absent."""
    pk = get_registry(engine, project, location, registry_id)
    if pk is not None:
        return pk
    try:
        return create_registry(engine, project, location, registry_id)
    except AlreadyExists:
        again = get_registry(engine, project, location, registry_id)
        assert again is not None
        return again


def get_registry(engine: Engine, project: str, location: str, registry_id: str) -> int | None:
    with engine.connect() as c:
        row = c.execute(
            select(registries.c.pk).where(
                registries.c.project == project,
                registries.c.location == location,
                registries.c.registry_id == registry_id,
            )
        ).first()
    return None if row is None else int(row[0])


def create_registry(engine: Engine, project: str, location: str, registry_id: str) -> int:
    try:
        with engine.begin() as c:
            res = c.execute(
                registries.insert().values(
                    project=project, location=location, registry_id=registry_id, created=_now()
                )
            )
            return int(res.inserted_primary_key[0])  # type: ignore[index]
    except IntegrityError:
        raise AlreadyExists(registry_id) from None


def create_device(
    engine: Engine,
    registry_pk: int,
    device_id: str,
    creds: list[Credential],
    blocked: bool,
    meta: dict[str, str],
) -> StoredDevice:
    num_id = secrets.randbelow(2**62) + 2**52  # server-assigned, like Cloud IoT's numId
    try:
        with engine.begin() as c:
            c.execute(
                devices.insert().values(
                    num_id=num_id,
                    registry_pk=registry_pk,
                    device_id=device_id,
                    credentials=json.dumps([cr.__dict__ for cr in creds]),
                    blocked=blocked,
                    metadata=json.dumps(meta),
                    created=_now(),
                )
            )
    except IntegrityError:
        raise AlreadyExists(device_id) from None
    return StoredDevice(num_id, device_id, creds, blocked, meta)


def _device(row: Any) -> StoredDevice:
    return StoredDevice(
        num_id=int(row.num_id),
        device_id=row.device_id,
        credentials=[Credential(**c) for c in json.loads(row.credentials)],
        blocked=bool(row.blocked),
        metadata=json.loads(row.metadata),
    )


def get_device(engine: Engine, registry_pk: int, ident: str) -> StoredDevice | None:
    """By device id, or by numId (all digits), as the real API accepts both."""
    cond = devices.c.device_id == ident
    if ident.isdigit():
        cond = devices.c.num_id == int(ident)
    with engine.connect() as c:
        row = c.execute(select(devices).where(devices.c.registry_pk == registry_pk, cond)).first()
    return None if row is None else _device(row)


def list_devices(
    engine: Engine, registry_pk: int, offset: int, limit: int
) -> tuple[list[StoredDevice], bool]:
    with engine.connect() as c:
        rows = c.execute(
            select(devices)
            .where(devices.c.registry_pk == registry_pk)
            .order_by(devices.c.device_id)
            .offset(offset)
            .limit(limit + 1)
        ).all()
    return [_device(r) for r in rows[:limit]], len(rows) > limit
