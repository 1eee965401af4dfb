"""The CA, audit and manifest keys are neither modifiable nor destroyable (issue 20): with
the user PIN nobody can relabel the intermediate (a signer finds its key by label) or destroy
it. ``ca show`` reports how each key is protected, as the token says. ``ca init --force``
keeps the old keys it may not destroy and gives the new ones the next free labels."""

from __future__ import annotations

import json

import pytest
from pkcs11 import Attribute, ObjectClass
from pkcs11 import exceptions as p11e

from hsm.keys import key_protection
from provisioner.ca.ceremony import (
    CaInfo,
    factory_pin,
    init_ca,
    load_ca,
    open_module,
    rotate,
    store_of,
)
from provisioner.ca.overview import key_protections
from provisioner.settings import Settings
from provisioner.uploads.manifest import KEY_LABEL
from tests.conftest import Station
from tests.e2e.test_end_to_end import cli


def _objects(ts: object, label: str) -> list[object]:
    session = ts.session  # type: ignore[attr-defined]
    return list(session.get_objects({Attribute.LABEL: label}))


def test_the_intermediate_cannot_be_relabelled_or_destroyed_with_the_user_pin(
    ca_settings: Settings, ca: CaInfo
) -> None:
    name = ca_settings.hsm.ca_key_label
    with open_module(ca_settings) as mod:
        ts = mod.open_token(ca_settings.hsm.factory_token, factory_pin(ca_settings))
        try:
            objects = _objects(ts, name)
            assert {o.object_class for o in objects} == {  # type: ignore[attr-defined]
                ObjectClass.PRIVATE_KEY,
                ObjectClass.PUBLIC_KEY,
            }
            for obj in objects:
                with pytest.raises(p11e.PKCS11Error):  # CKR_ACTION_PROHIBITED
                    obj[Attribute.LABEL] = "renamed"  # type: ignore[index]
                with pytest.raises(p11e.PKCS11Error):
                    obj.destroy()  # type: ignore[attr-defined]
            assert len(_objects(ts, name)) == 2 and _objects(ts, "renamed") == []
            for label in (name, ca_settings.audit.key_label, KEY_LABEL):
                prot = key_protection(ts, label)
                assert (prot.sensitive, prot.extractable) == (True, False), label
                assert (prot.modifiable, prot.destroyable) == (False, False), label
        finally:
            ts.close()
        root_ts = mod.open_token(ca_settings.hsm.root_token, ca_settings.root_pin_file)
        try:
            assert key_protection(root_ts, ca_settings.hsm.root_key_label).immutable
            with pytest.raises(p11e.PKCS11Error):
                _objects(root_ts, ca_settings.hsm.root_key_label)[0].destroy()  # type: ignore[attr-defined]
        finally:
            root_ts.close()
    # The CA still signs after the attempts.
    loaded = load_ca(ca_settings)
    try:
        assert loaded.key.public_key() == loaded.intermediate_cert.public_key()
    finally:
        loaded.close()


def test_force_keeps_the_old_keys_and_the_new_ca_rotates(ca_settings: Settings, ca: CaInfo) -> None:
    forced = init_ca(ca_settings, force=True)
    assert forced.created and forced.intermediate_name == "intermediate-ca-2"
    assert set(forced.kept_keys) == {"root-ca", "intermediate-ca"}
    assert forced.root_fingerprint_sha256 != ca.root_fingerprint_sha256
    # The rotation finds the new root key among the kept ones by its public key.
    rotated = rotate(ca_settings)
    assert rotated.intermediate_name == "intermediate-ca-3"
    store = store_of(ca_settings)
    store.intermediate().verify_directly_issued_by(store.root())
    report = key_protections(ca_settings)
    assert report["unavailable"] == []
    by_role = {(k["role"], k["label"]) for k in report["keys"]}
    assert ("root", "root-ca-2") in by_role and ("intermediate", "intermediate-ca-3") in by_role
    assert ("previous", "intermediate-ca-2") in by_role


def test_ca_show_reports_each_keys_protection(station: Station) -> None:
    cli(station, "ca", "init")
    data = json.loads(cli(station, "ca", "show", "--json").stdout)
    keys = {k["role"]: k for k in data["key_protection"]["keys"]}
    assert set(keys) == {"root", "intermediate", "audit", "manifest"}
    for role, k in keys.items():
        assert (k["sensitive"], k["extractable"]) == (True, False), role
        assert (k["modifiable"], k["destroyable"]) == (False, False), role
    assert data["key_protection"]["unavailable"] == []
    text = cli(station, "ca", "show").stdout
    assert (
        "intermediate-ca (token 'factory'): sensitive, not extractable, not modifiable, "
        "not destroyable" in text
    )
    pin = station.settings.pin_file.read_text().strip()
    assert pin not in text and pin not in json.dumps(data)
