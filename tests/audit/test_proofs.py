"""Checkpoints signed by the audit key in the real SoftHSM token, proofs of a chip's events
checked offline in a fresh process, and consistency between checkpoints."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy.engine import Engine

from hsm.keys import key_attributes
from provisioner.audit import chain, checkpoint, merkle, tree
from provisioner.audit.checkpointer import Checkpointer, audit_key_file, load_audit_key
from provisioner.audit.proofs import build, build_consistency
from provisioner.audit.verify import verify_log
from provisioner.ca.ceremony import LoadedCa, factory_pin, open_module
from provisioner.db.engine import create_schema, make_engine, transaction
from provisioner.errors import ProofError
from provisioner.settings import Settings
from tests.conftest import run_cli

SERIAL_A = "0123AAAAAAAAAAAAEE"
SERIAL_B = "0123BBBBBBBBBBBBEE"


@pytest.fixture
def engine(ca_settings: Settings) -> Engine:
    e = make_engine(ca_settings.db_url)
    create_schema(e)
    return e


def _events(engine: Engine, serial: str, n: int, batch: int = 1) -> None:
    with transaction(engine) as s:
        for i in range(n):
            chain.append(
                s,
                f"device.step{i}",
                actor="station:line1",
                station_id="line1",
                socket=1,
                batch_id=batch,
                chip_serial=serial,
                payload={"step": i},
            )


def _cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, env=env, cwd=cwd)


def test_the_audit_key_lives_in_the_token_apart_from_the_ca_key(
    ca_settings: Settings, loaded: LoadedCa
) -> None:
    with open_module(ca_settings) as mod:
        ts = mod.open_token(ca_settings.hsm.factory_token, factory_pin(ca_settings))
        try:
            attrs = key_attributes(ts, ca_settings.audit.key_label)
        finally:
            ts.close()
    assert attrs == {
        "sensitive": True,
        "extractable": False,
        "always_sensitive": True,
        "never_extractable": True,
        "token": True,
    }
    audit = load_audit_key(ca_settings)
    assert audit is not None
    ca_pub = loaded.intermediate_cert.public_key()
    assert isinstance(ca_pub, ec.EllipticCurvePublicKey)
    assert audit.public_key.public_numbers() != ca_pub.public_numbers()


def test_hsm_signed_checkpoints_and_what_makes_them_due(
    ca_settings: Settings, loaded: LoadedCa, engine: Engine
) -> None:
    now = [1000.0]
    cp = Checkpointer.for_provider(engine, ca_settings, loaded.pool)
    cp._clock = lambda: now[0]  # a test clock for the interval rule
    cp._started = now[0]
    assert cp.due() is None and cp.write("manual") is None  # an empty log
    _events(engine, SERIAL_A, 3)
    assert cp.due() is None  # 3 events, no batch end, no time passed
    now[0] += ca_settings.audit.checkpoint_every_s
    assert cp.due() == "interval"
    first = cp.tick()
    assert first is not None and (first.size, first.reason) == (3, "interval")
    assert cp.due() is None
    with transaction(engine) as s:
        chain.append(s, "batch.finished", actor="registry", batch_id=1)
    assert cp.due() == "batch_end"
    assert cp.tick() is not None
    _events(engine, SERIAL_B, ca_settings.audit.checkpoint_every_events)
    assert cp.due() == "events"
    last = cp.tick()
    assert last is not None and last.size == 4 + ca_settings.audit.checkpoint_every_events

    key = load_audit_key(ca_settings)
    assert key is not None
    parsed = checkpoint.open_signed(last.note, key.name, key.public_key, key.origin)
    assert parsed.size == last.size and parsed.root.hex() == last.root_hash
    # The CA key did not sign it (a different key; its note signature does not verify).
    ca_pub = loaded.intermediate_cert.public_key()
    assert isinstance(ca_pub, ec.EllipticCurvePublicKey)
    with pytest.raises(ProofError):
        checkpoint.open_signed(last.note, key.name, ca_pub, key.origin)
    with transaction(engine) as s:
        res = verify_log(s, key)
    assert res.ok and res.checkpoints == 3, res.reason


def test_a_proof_file_verifies_offline_in_a_fresh_process(
    ca_settings: Settings, loaded: LoadedCa, engine: Engine, tmp_path: Path
) -> None:
    _events(engine, SERIAL_A, 4)
    _events(engine, SERIAL_B, 37)
    _events(engine, SERIAL_A, 2, batch=2)
    cp = Checkpointer.for_provider(engine, ca_settings, loaded.pool).write("manual")
    assert cp is not None
    _events(engine, SERIAL_A, 1, batch=3)  # after the checkpoint: not provable yet
    with transaction(engine) as s:
        doc = build(s, SERIAL_A.lower())
    assert len(doc["events"]) == 6 and doc["events_after_checkpoint"] == 1

    # The auditor's machine: an empty directory, no config, no database, no token.
    box = tmp_path / "auditor"
    box.mkdir()
    proof, pem = box / "proof.json", box / "audit-key.pem"
    proof.write_text(json.dumps(doc))
    pem.write_bytes(audit_key_file(ca_settings).read_bytes())
    env = {"PATH": os.environ["PATH"], "HOME": str(box)}
    ok = _cli("audit", "check-proof", str(proof), "--key", str(pem), "--json", cwd=box, env=env)
    assert ok.returncode == 0, ok.stderr
    report = json.loads(ok.stdout)
    assert report["ok"] and report["chip_serial"] == SERIAL_A and report["tree_size"] == 43
    assert [e["seq"] for e in report["events"]] == [1, 2, 3, 4, 42, 43]
    assert sorted(p.name for p in box.iterdir()) == ["audit-key.pem", "proof.json"]

    def refused(d: dict, key: Path = pem) -> str:
        proof.write_text(json.dumps(d))
        r = _cli("audit", "check-proof", str(proof), "--key", str(key), cwd=box, env=env)
        assert r.returncode == 1, r.stdout
        return r.stderr

    edited = json.loads(json.dumps(doc))
    edited["events"][1]["event"]["payload"] = '{"step":7}'
    assert "event 2 (device.step1)" in refused(edited)
    moved = json.loads(json.dumps(doc))
    moved["events"][0]["leaf_index"] = 1
    assert "claims leaf index 1" in refused(moved)
    bent = json.loads(json.dumps(doc))
    first = bytes.fromhex(bent["events"][4]["inclusion_proof"][0])
    bent["events"][4]["inclusion_proof"][0] = (bytes([first[0] ^ 1]) + first[1:]).hex()
    assert "event 42" in refused(bent)
    other = box / "other.pem"
    other.write_bytes(
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    # The wrong key is blamed, not the log.
    assert "not signed by this key" in refused(doc, other)


def test_consistency_between_checkpoints(
    ca_settings: Settings, loaded: LoadedCa, engine: Engine
) -> None:
    cp = Checkpointer.for_provider(engine, ca_settings, loaded.pool)
    notes = []
    for n in (5, 8, 21):
        _events(engine, SERIAL_A, n)
        row = cp.write("manual")
        assert row is not None
        notes.append(row)
    key = load_audit_key(ca_settings)
    assert key is not None
    heads = [checkpoint.open_signed(r.note, key.name, key.public_key) for r in notes]
    with transaction(engine) as s:
        for a in heads:
            for b in heads:
                if a.size > b.size:
                    continue
                proof = tree.consistency_proof(s, a.size, b.size)
                merkle.verify_consistency(a.size, b.size, proof, a.root, b.root)
        proof = tree.consistency_proof(s, 5, 34)
    with pytest.raises(ProofError):
        merkle.verify_consistency(5, 34, proof, heads[1].root, heads[2].root)


def test_consistency_file_checked_offline(
    ca_settings: Settings, loaded: LoadedCa, engine: Engine, tmp_path: Path
) -> None:
    cp = Checkpointer.for_provider(engine, ca_settings, loaded.pool)
    _events(engine, SERIAL_A, 6)
    cp.write("manual")
    _events(engine, SERIAL_B, 11)
    cp.write("manual")
    with transaction(engine) as s:
        doc = build_consistency(s, 6)
    box = tmp_path / "auditor"
    box.mkdir()
    f, pem = box / "c.json", box / "k.pem"
    f.write_text(json.dumps(doc))
    pem.write_bytes(audit_key_file(ca_settings).read_bytes())
    env = {"PATH": os.environ["PATH"], "HOME": str(box)}
    ok = _cli("audit", "check-consistency", str(f), "--key", str(pem), cwd=box, env=env)
    assert ok.returncode == 0, ok.stderr
    assert "at size 17 extends its checkpoint at size 6 unchanged" in ok.stdout
    # A forked history: the old note swapped for one of a different tree of 6 events.
    other = make_engine(f"sqlite:///{tmp_path / 'other.db'}")
    create_schema(other)
    _events(other, SERIAL_B, 6)
    forked = Checkpointer.for_provider(other, ca_settings, loaded.pool).write("manual")
    assert forked is not None
    f.write_text(json.dumps({**doc, "old": forked.note}))
    bad = _cli("audit", "check-consistency", str(f), "--key", str(pem), cwd=box, env=env)
    assert bad.returncode == 1 and "does NOT verify" in bad.stderr
