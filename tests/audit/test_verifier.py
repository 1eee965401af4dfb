"""The standalone verifier (provisioner/audit/verifier.py) on inputs the product made: a
proof file, a consistency file and an exported log segment, each good, edited, truncated,
with the wrong key and as wrong input, each with its own message and exit status.

The log is a real SQLite database written by the product's own append, signed by a
software P-256 key through the product's Checkpointer (no HSM needed for the audit key
here: tests/audit/test_proofs.py covers the token-held key). Here the verifier runs
in-process; tests/audit/test_verifier_venv.py runs the same file in a virtualenv that has
only `cryptography`.
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy.engine import Engine

from provisioner.audit import chain, query, verifier
from provisioner.audit.checkpointer import Checkpointer
from provisioner.audit.proofs import build, build_consistency
from provisioner.db.engine import create_schema, make_engine, transaction
from provisioner.settings import AuditSettings, Settings
from tests.conftest import run_cli

ORIGIN = "factory.test/audit"
CHIP = "0123AAAAAAAAAAAAEE"
OTHER_CHIP = "0123BBBBBBBBBBBBEE"
VERIFIER = Path(verifier.__file__)


def pem(key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def append(engine: Engine, serial: str, n: int, start: int = 0) -> None:
    with transaction(engine) as s:
        for i in range(start, start + n):
            chain.append(
                s,
                f"device.step{i}",
                actor="station:line1",
                station_id="line1",
                socket=i % 4,
                batch_id=1,
                chip_serial=serial,
                payload={"step": i, "note": "ünïcode"},
            )


@dataclass
class Factory:
    """What the factory hands an auditor, as files in ``box``."""

    box: Path
    engine: Engine
    key: Path  # the right audit public key (PEM)
    wrong_key: Path  # another P-256 public key
    wrong_key_sha256: str
    signer: ec.EllipticCurvePrivateKey
    proof: dict[str, Any]  # chip CHIP under the checkpoint at size 15
    consistency: dict[str, Any]  # 10 -> 15
    checkpoint: Path  # the note at size 15 (C2SP text)
    notes: dict[int, str]
    export: list[str]  # JSONL lines of all 20 events (5 after the checkpoint)

    def write(self, name: str, data: str | bytes | dict[str, Any] | list[str]) -> Path:
        path = self.box / name
        if isinstance(data, dict):
            data = json.dumps(data, indent=1)
        elif isinstance(data, list):
            data = "".join(data)
        if isinstance(data, str):
            data = data.encode()
        path.write_bytes(data)
        return path


def make_factory(root: Path, signer: ec.EllipticCurvePrivateKey | None = None) -> Factory:
    """A log of 20 events: checkpoints at 10 and 15, 5 events after the last one."""
    root.mkdir(parents=True, exist_ok=True)
    engine = make_engine(f"sqlite:///{root / 'audit.db'}")
    create_schema(engine)
    settings = Settings(var_dir=root / "var", audit=AuditSettings(origin=ORIGIN))
    signer = signer or ec.generate_private_key(ec.SECP256R1())
    cp = Checkpointer(engine, settings, signer)
    notes = {}
    append(engine, CHIP, 4)
    append(engine, OTHER_CHIP, 6)
    notes[10] = cp.write("manual").note  # type: ignore[union-attr]
    append(engine, CHIP, 5, start=4)
    notes[15] = cp.write("manual").note  # type: ignore[union-attr]
    append(engine, CHIP, 5, start=9)
    with transaction(engine) as s:
        proof = build(s, CHIP)
        consistency = build_consistency(s, 10, 15)
    export = list(query.jsonl_lines(query.iterate(engine, query.EventFilter())))
    box = root / "auditor"
    box.mkdir()
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    f = Factory(
        box,
        engine,
        box / "audit-key.pem",
        box / "other-key.pem",
        verifier.key_sha256(other),
        signer,
        proof,
        consistency,
        box / "checkpoint.txt",
        notes,
        export,
    )
    f.key.write_bytes(pem(signer.public_key()))
    f.wrong_key.write_bytes(pem(other))
    f.checkpoint.write_text(notes[15])
    return f


@pytest.fixture
def factory(tmp_path: Path) -> Factory:
    return make_factory(tmp_path / "factory")


@dataclass
class Run:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err

    def json(self) -> dict[str, Any]:
        return json.loads(self.out)  # type: ignore[no-any-return]


def run(*args: str | Path) -> Run:
    out, err = io.StringIO(), io.StringIO()
    code = verifier.main([str(a) for a in args], out, err)
    return Run(code, out.getvalue(), err.getvalue())


def edited_line(line: str, **changes: Any) -> str:
    obj = json.loads(line)
    obj.update(changes)
    return json.dumps(obj) + "\n"


def no_alarm(r: Run) -> None:
    """A wrong input is never reported as a problem with the log."""
    assert r.code == 2, r.text
    assert "does NOT verify" not in r.text and "BROKEN" not in r.text
    assert "nothing was checked" in r.text


# --- the single file ---------------------------------------------------------------------


def test_the_verifier_imports_nothing_of_the_product() -> None:
    src = VERIFIER.read_text()
    imports = [
        line.split()[1]
        for line in src.splitlines()
        if line.startswith(("import ", "from ")) and not line.startswith("from __future__")
    ]
    allowed = {"argparse", "base64", "binascii", "hashlib", "json", "re", "sys"}
    for name in imports:
        top = name.split(".")[0]
        assert top in allowed | {"collections", "dataclasses", "typing", "cryptography"}, name
    assert "provisioner" not in " ".join(imports)


def test_the_product_uses_the_verifiers_code() -> None:
    from provisioner.audit import checkpoint, entry, merkle

    assert merkle.leaf_hash is verifier.leaf_hash and merkle.node_hash is verifier.node_hash
    assert entry.Entry is verifier.Entry and checkpoint.Checkpoint is verifier.Checkpoint
    assert checkpoint.key_id is verifier.key_id


# --- proof files ----------------------------------------------------------------------------


def test_proof_good(factory: Factory) -> None:
    f = factory
    assert f.proof["format"] == "provisioner-audit-proof/2"
    item = f.proof["events"][0]
    assert all(len(bytes.fromhex(h)) == 32 for h in item["inclusion_proof"])
    assert item["leaf_hash"] == verifier.leaf_hash(verifier.Entry(**item["event"]).encode()).hex()
    r = run("proof", f.write("proof.json", f.proof), "--key", f.key)
    assert r.code == 0, r.text
    assert r.out.startswith(f"proof verified: 9 events of chip {CHIP} are in log {ORIGIN}")
    assert "at size 15" in r.out and verifier.key_sha256(_pub(f.key)) in r.out
    assert "5 newer events" in r.out
    j = run("proof", f.box / "proof.json", "--key", f.key, "--json").json()
    assert j["ok"] and j["verdict"] == "verified" and j["tree_size"] == 15
    assert [e["seq"] for e in j["events"]] == [1, 2, 3, 4, 11, 12, 13, 14, 15]


def test_proof_of_the_old_base64_format_is_still_read(factory: Factory) -> None:
    old = json.loads(json.dumps(factory.proof))
    old["format"] = "provisioner-audit-proof/1"
    for item in old["events"]:
        del item["leaf_hash"]
        item["inclusion_proof"] = [
            base64.b64encode(bytes.fromhex(h)).decode() for h in item["inclusion_proof"]
        ]
    r = run("proof", factory.write("v1.json", old), "--key", factory.key)
    assert r.code == 0, r.text
    # ...but a /1 file with hex in it is malformed, not silently misread.
    old["events"][0]["inclusion_proof"] = factory.proof["events"][0]["inclusion_proof"]
    no_alarm(run("proof", factory.write("v1-hex.json", old), "--key", factory.key))


def test_proof_edited_event_names_it(factory: Factory) -> None:
    doc = json.loads(json.dumps(factory.proof))
    doc["events"][5]["event"]["actor"] = "operator:mallory"  # event 12
    r = run("proof", factory.write("edited.json", doc), "--key", factory.key)
    assert r.code == 1
    assert "does NOT verify: event 12 (device.step5) was changed after it was signed" in r.err
    assert "what to do: preserve the database" in r.err
    j = run("proof", factory.box / "edited.json", "--key", factory.key, "--json").json()
    assert (j["ok"], j["verdict"], j["seq"]) == (False, "edited_event", 12)
    # Without the stated leaf hash (or with it edited too) the event is still named.
    del doc["events"][5]["leaf_hash"]
    r = run("proof", factory.write("edited2.json", doc), "--key", factory.key)
    assert r.code == 1 and "event 12 (device.step5): inclusion proof does not lead" in r.err


def test_proof_truncated(factory: Factory) -> None:
    # A proof path cut short: the event cannot reach the signed root.
    doc = json.loads(json.dumps(factory.proof))
    doc["events"][1]["inclusion_proof"].pop()
    r = run("proof", factory.write("short.json", doc), "--key", factory.key)
    assert r.code == 1 and "event 2 (device.step1): inclusion proof is shorter" in r.err
    # A file cut short in transfer is not a proof file at all (exit 2, no alarm).
    text = json.dumps(factory.proof)
    cut = factory.write("cut.json", text[: len(text) // 2])
    r = run("proof", cut, "--key", factory.key)
    no_alarm(r)
    assert f"{cut} is not a proof file: it is not JSON" in r.err


def test_proof_wrong_key_blames_the_key(factory: Factory) -> None:
    r = run("proof", factory.write("proof.json", factory.proof), "--key", factory.wrong_key)
    assert r.code == 1
    assert (
        "the checkpoint is not signed by this key: check you have the right audit public key "
        f"(its SHA-256 is {factory.wrong_key_sha256}) — this says nothing about the log yet"
    ) in r.err
    assert "was changed" not in r.err
    j = run("proof", factory.box / "proof.json", "--key", factory.wrong_key, "--json").json()
    assert j["verdict"] == "wrong_key"


def test_proof_wrong_inputs_say_what_the_file_is(factory: Factory) -> None:
    f = factory
    cons = f.write("cons.json", f.consistency)
    r = run("proof", cons, "--key", f.key)
    no_alarm(r)
    assert f"{cons} is not a proof file: it is a consistency file" in r.err
    r = run("proof", f.checkpoint, "--key", f.key)
    no_alarm(r)
    assert "is not a proof file: it is not JSON" in r.err
    r = run("proof", f.write("other.json", {"format": "x"}), "--key", f.key)
    no_alarm(r)
    assert "its format is 'x'" in r.err
    broken_note = dict(f.proof, checkpoint=f.notes[15].replace("\n\n", "\n"))
    r = run("proof", f.write("bad-note.json", broken_note), "--key", f.key)
    no_alarm(r)
    assert "its checkpoint is malformed: it has no blank line" in r.err
    r = run("proof", f.box / "missing.json", "--key", f.key)
    no_alarm(r)
    assert "cannot read" in r.err


def test_wrong_key_files(factory: Factory) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    secret = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    proof = factory.write("proof.json", factory.proof)
    r = run("proof", proof, "--key", factory.write("private.pem", secret))
    no_alarm(r)
    assert "holds a PRIVATE key" in r.err
    for line in secret.decode().splitlines()[1:-1]:
        assert line not in r.text  # never echo key material
    r = run("proof", proof, "--key", factory.write("junk.pem", "hello"))
    no_alarm(r)
    assert "junk.pem is not an audit public key (PEM)" in r.err
    other = pem(rsa.generate_private_key(65537, 2048).public_key())
    r = run("proof", proof, "--key", factory.write("rsa.pem", other))
    no_alarm(r)
    assert "not an EC P-256 key" in r.err


# --- consistency files -------------------------------------------------------------------


def test_consistency_good(factory: Factory) -> None:
    doc = factory.consistency
    assert doc["format"] == "provisioner-audit-consistency/2"
    assert all(len(h) == 64 for h in doc["proof"])
    r = run("consistency", factory.write("c.json", doc), "--key", factory.key)
    assert r.code == 0, r.text
    assert f"consistent: log {ORIGIN} at size 15 extends its checkpoint at size 10" in r.out
    assert "events 11..15 were added" in r.out
    old = dict(doc, format="provisioner-audit-consistency/1")
    old["proof"] = [base64.b64encode(bytes.fromhex(h)).decode() for h in doc["proof"]]
    assert run("consistency", factory.write("c1.json", old), "--key", factory.key).code == 0


def test_consistency_edited_log_does_not_extend(factory: Factory, tmp_path: Path) -> None:
    # The same key signs a rewritten history (its first 10 events differ): its checkpoint
    # at 15 does not extend the one the auditor kept at 10, whatever proof comes with it.
    rewritten = make_factory(tmp_path / "rewritten", factory.signer)
    with transaction(rewritten.engine) as s:
        doc = build_consistency(s, 10, 15)
    forked = dict(doc, old=factory.notes[10])
    r = run("consistency", factory.write("forked.json", forked), "--key", factory.key)
    assert r.code == 1
    assert "does NOT verify: the checkpoint at size 15 does not extend the one at size 10" in r.err
    assert "the log was rewritten or forked" in r.err
    assert run("consistency", factory.write("own.json", doc), "--key", factory.key).code == 0
    bent = json.loads(json.dumps(factory.consistency))
    bent["proof"][0] = ("0" if bent["proof"][0][0] != "0" else "1") + bent["proof"][0][1:]
    r = run("consistency", factory.write("bent.json", bent), "--key", factory.key)
    assert r.code == 1 and "does not extend" in r.err


def test_consistency_truncated_log(factory: Factory) -> None:
    # The "newer" checkpoint covers fewer events than the one kept: the log shrank.
    doc = dict(factory.consistency, old=factory.notes[15], new=factory.notes[10], proof=[])
    r = run("consistency", factory.write("shrunk.json", doc), "--key", factory.key)
    assert r.code == 1
    assert "the log was truncated: the newer checkpoint covers 10 events" in r.err
    j = run("consistency", factory.box / "shrunk.json", "--key", factory.key, "--json").json()
    assert j["verdict"] == "truncated"


def test_consistency_wrong_key_and_wrong_input(factory: Factory) -> None:
    c = factory.write("c.json", factory.consistency)
    r = run("consistency", c, "--key", factory.wrong_key)
    assert r.code == 1 and "not signed by this key" in r.err and "says nothing" in r.err
    p = factory.write("p.json", factory.proof)
    r = run("consistency", p, "--key", factory.key)
    no_alarm(r)
    assert f"{p} is not a consistency file: it is a proof file" in r.err


# --- exported segments -----------------------------------------------------------------------


def segment(f: Factory, lines: list[str], key: Path | None = None, *extra: str) -> Run:
    export = f.write("export.jsonl", lines)
    return run("segment", export, "--checkpoint", f.checkpoint, "--key", key or f.key, *extra)


def as_objects(lines: list[str]) -> list[str]:
    """Export lines in the spreadsheet-friendly form: the payload as a JSON object and the
    exact hashed text under payload_text."""
    out = []
    for line in lines:
        obj = json.loads(line)
        text = obj.get("payload_text", obj["payload"])
        obj["payload_text"], obj["payload"] = text, json.loads(text)
        out.append(json.dumps(obj) + "\n")
    return out


def test_segment_good(factory: Factory) -> None:
    for lines in (factory.export, as_objects(factory.export)):
        r = segment(factory, lines)
        assert r.code == 0, r.text
        assert r.out.startswith(
            f"segment verified: events 1..15 of the export are exactly the log {ORIGIN}"
        )
        assert "20 events re-hashed" in r.out and "the hash chain" in r.out
        assert "events 16..20 are after this checkpoint" in r.out
    j = segment(factory, factory.export, None, "--json").json()
    assert j["ok"] and (j["tree_size"], j["events"]) == (15, 20)
    # Exactly the checkpoint's events, and an export without chain hashes, verify too.
    bare = [edited_line(x, hash=None, prev_hash=None) for x in factory.export[:15]]
    r = segment(factory, bare)
    assert r.code == 0 and "no hash chain" in r.out


def test_segment_edited_event_names_it(factory: Factory) -> None:
    lines = list(factory.export)
    obj = json.loads(lines[6])
    hashed = "payload_text" if "payload_text" in obj else "payload"  # older exports: payload
    payload = json.loads(obj[hashed])
    payload["step"] += 100
    edit = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    assert edit != obj[hashed]
    lines[6] = edited_line(lines[6], **{hashed: edit})
    r = segment(factory, lines)
    assert r.code == 1
    assert "event 7 (device.step2) was changed after it was recorded" in r.err
    assert (
        "under the signed checkpoint (size 15): the record was changed after it was signed" in r.err
    )
    assert segment(factory, lines, None, "--json").json()["seq"] == 7
    # After the checkpoint the same edit is named, but not as a signed record.
    late = list(factory.export)
    late[17] = edited_line(late[17], actor="operator:mallory")
    r = segment(factory, late)
    assert r.code == 1 and "event 18" in r.err and "not signed yet" in r.err


def test_segment_edited_and_relinked_fails_on_the_signed_root(factory: Factory) -> None:
    lines = [json.loads(x) for x in factory.export]
    lines[3]["actor"] = "operator:mallory"
    prev = verifier.GENESIS_HASH
    for obj in lines:  # the insider recomputes the whole chain
        obj["prev_hash"] = prev
        obj["hash"] = prev = verifier.link_hash(prev, verifier.entry_from_export(obj).encode())
    r = segment(factory, [json.dumps(o) + "\n" for o in lines])
    assert r.code == 1
    assert "events 1..15 do not rebuild the root the checkpoint signed" in r.err
    assert "the hash chain was rewritten to hide it" in r.err


def test_segment_truncated(factory: Factory) -> None:
    r = segment(factory, factory.export[:12])
    assert r.code == 1
    assert (
        "the log is truncated: the export has 12 events but the checkpoint covers 15: "
        "events 13..15 are missing"
    ) in r.err
    j = segment(factory, factory.export[:12], None, "--json").json()
    assert (j["verdict"], j["seq"]) == ("truncated", 13)
    gap = factory.export[:6] + factory.export[7:]
    r = segment(factory, gap)
    assert r.code == 1 and "event 7 is missing (the next event in the export is 8)" in r.err


def test_segment_wrong_key(factory: Factory) -> None:
    r = segment(factory, factory.export, factory.wrong_key)
    assert r.code == 1
    assert "not signed by this key: check you have the right audit public key" in r.err
    assert f"(its SHA-256 is {factory.wrong_key_sha256})" in r.err


def test_segment_wrong_inputs(factory: Factory) -> None:
    f = factory
    r = segment(f, f.export[4:])
    no_alarm(r)
    assert "is not a log segment from event 1: it starts at event 5" in r.err
    r = segment(f, [json.dumps(f.proof)])
    no_alarm(r)
    assert "export.jsonl is not an audit export" in r.err and "lacks the event field" in r.err
    r = segment(f, ["not json\n"])
    no_alarm(r)
    assert "line 1 is not JSON" in r.err
    objects = as_objects(f.export)
    stripped = [edited_line(x, payload_text=None) for x in objects]
    r = segment(f, stripped)
    no_alarm(r)
    assert "no payload_text" in r.err
    export = f.write("export.jsonl", f.export)
    for bad, why in (
        (f.write("cp.json", {"checkpoint": f.notes[15]}), "it is JSON; save the checkpoint"),
        (f.write("cp-crlf.txt", f.notes[15].replace("\n", "\r\n")), "Windows line ends"),
        (f.write("cp-size.txt", f.notes[15].replace("\n15\n", "\nfifteen\n")), "line 2"),
    ):
        r = run("segment", export, "--checkpoint", bad, "--key", f.key)
        assert r.code in (1, 2), r.text
        if why == "line 2":  # the edited size is caught by the signature before parsing
            assert r.code == 1 and "signature" in r.err and "was changed" in r.err
            continue
        no_alarm(r)
        assert f"{bad} is not a signed checkpoint: " in r.err and why in r.err


# --- the product's commands use the verifier ---------------------------------------------------


def test_check_proof_in_the_product(factory: Factory) -> None:
    f = factory
    proof = f.write("proof.json", f.proof)
    env = {"PATH": "/usr/bin", "HOME": str(f.box)}
    ok = run_cli("audit", "check-proof", str(proof), "--key", str(f.key), env=env, cwd=f.box)
    assert ok.returncode == 0 and ok.stdout.startswith("proof verified"), ok.stderr
    bad = run_cli("audit", "check-proof", str(proof), "--key", str(f.wrong_key), env=env, cwd=f.box)
    assert bad.returncode == 1
    assert "not signed by this key" in bad.stderr and "says nothing about the log" in bad.stderr
    wrong = run_cli(
        "audit", "check-proof", str(f.checkpoint), "--key", str(f.key), env=env, cwd=f.box
    )
    assert wrong.returncode == 2 and f"{f.checkpoint} is not a proof file" in wrong.stderr
    cons = f.write("c.json", f.consistency)
    r = run_cli("audit", "check-consistency", str(cons), "--key", str(f.key), env=env, cwd=f.box)
    assert r.returncode == 0 and "extends its checkpoint at size 10 unchanged" in r.stdout


def test_audit_verifier_hands_out_the_file(factory: Factory) -> None:
    out = factory.box / "verifier.py"
    env = {"PATH": "/usr/bin", "HOME": str(factory.box)}
    r = run_cli("audit", "verifier", "-o", str(out), env=env, cwd=factory.box)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == VERIFIER.read_bytes()
    assert "SHA-256" in r.stderr and "pip install cryptography" in r.stderr
    again = run_cli("audit", "verifier", "-o", str(out), env=env, cwd=factory.box)
    assert again.returncode != 0 and "--force" in again.stderr


def _pub(path: Path) -> ec.EllipticCurvePublicKey:
    return verifier.load_public_key(path.read_bytes())
