"""The registry's own database, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlmodel import SQLModel

from provisioner.cloud import store
from provisioner.cloud.credentials import Credential, PublicKeyFormat
from provisioner.db.engine import create_schema, make_engine
from tests.cloud.helpers import certificate_pem


def test_tables_stay_out_of_the_product_schema() -> None:
    ours = set(store.RegistryTable.metadata.tables)
    assert {
        "registry_registries",
        "registry_devices",
        "registry_device_configs",
        "registry_device_states",
        "registry_gateway_bindings",
    } <= ours
    assert all(t.startswith("registry_") for t in ours)
    assert not ours & set(SQLModel.metadata.tables)


def test_product_schema_does_not_create_registry_tables(db_url: str) -> None:
    engine = make_engine(db_url)
    create_schema(engine)
    from sqlalchemy import inspect

    assert not {t for t in inspect(engine).get_table_names() if t.startswith("registry_")}
    engine.dispose()


def test_round_trip(db_url: str) -> None:
    engine = store.open_store(db_url)
    reg = store.ensure_registry(engine, "p", "l", "r")
    assert store.ensure_registry(engine, "p", "l", "r") == reg
    with pytest.raises(store.AlreadyExists):
        store.create_registry(engine, "p", "l", "r")
    assert store.get_registry(engine, "p", "other", "r") is None

    pem = certificate_pem()
    cred = Credential(PublicKeyFormat.ES256_X509_PEM, pem, "2030-01-01T00:00:00Z")
    new = store.NewDevice("sn-a", (cred,), True, {"k1": "v"})
    dev = store.create_device(engine, reg, new)
    assert store.NUM_ID_MIN <= dev.num_id <= store.NUM_ID_MAX
    assert store.get_device(engine, reg, "sn-a") == dev
    assert store.get_device(engine, reg, str(dev.num_id)) == dev
    assert store.get_device(engine, reg, "9" * 40) is None  # beyond BIGINT: simply absent
    with pytest.raises(store.AlreadyExists):
        store.create_device(engine, reg, new)
    other = store.create_registry(engine, "p", "l", "r2")
    assert store.get_device(engine, other, "sn-a") is None
    assert store.create_device(engine, other, new).num_id != dev.num_id

    for i in range(3):
        store.create_device(engine, reg, store.NewDevice(f"sn-b{i}", (), False, {}))
    page, more = store.list_devices(engine, reg, None, 2)
    assert [d.device_id for d in page] == ["sn-a", "sn-b0"] and more
    page, more = store.list_devices(engine, reg, "sn-b0", 2)
    assert [d.device_id for d in page] == ["sn-b1", "sn-b2"] and not more
    engine.dispose()
