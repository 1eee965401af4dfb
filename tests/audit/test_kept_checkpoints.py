"""Checkpoints an auditor keeps: ``audit checkpoint save FILE`` writes exactly the signed
note, and ``audit verify --since-checkpoint FILE`` proves today's log extends it — after
more events (consistent) and not after a rewrite or a truncation that the HSM then signed
afresh, which no check inside the database can see. A file in the wrong form, of another
log or signed by another key is reported as such, never as the log being broken."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy.engine import Engine

from provisioner.audit import chain, explain, kept
from provisioner.audit import checkpoint as cpmod
from provisioner.audit.checkpointer import Checkpointer, audit_key_file
from provisioner.audit.verify import AuditKey, verify_log
from provisioner.db.engine import create_schema, make_engine, transaction
from provisioner.errors import InvalidInputError
from tests.audit.test_tamper import _rebuild_nodes, _relink, insider
from tests.conftest import Station, make_station, run_cli


@dataclass
class Line:
    """A station's database with events signed by a software audit key (as the HSM would)."""

    station: Station
    engine: Engine
    signer: ec.EllipticCurvePrivateKey
    key: AuditKey
    pem: Path  # the auditor's pinned copy of the public key

    def append(self, n: int) -> None:
        with transaction(self.engine) as s:
            for i in range(n):
                chain.append(s, "test.event", actor="operator:alice", payload={"i": i})

    def sign(self) -> str:
        cp = Checkpointer(self.engine, self.station.settings, self.signer).write("manual")
        assert cp is not None
        return cp.note

    def cli(self, *args: str) -> tuple[int, str, str]:
        r = run_cli(*args, env=self.station.env(), cwd=self.station.root)
        return r.returncode, r.stdout, r.stderr

    def check(self, note: str) -> kept.KeptResult:
        with transaction(self.engine) as s:
            return kept.check(s, self.key, kept.parse(note.encode(), "kept.txt"))


def _pem(key: ec.EllipticCurvePublicKey, path: Path) -> Path:
    path.write_bytes(
        key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path


@pytest.fixture
def line(tmp_path: Path) -> Line:
    st = make_station(tmp_path / "station")
    engine = make_engine(st.settings.db_url)
    create_schema(engine)
    signer = ec.generate_private_key(ec.SECP256R1())
    audit_key_file(st.settings).parent.mkdir(parents=True, exist_ok=True)
    _pem(signer.public_key(), audit_key_file(st.settings))  # the installed copy
    auditor = tmp_path / "auditor"
    auditor.mkdir()
    origin = st.settings.audit.origin
    key = AuditKey(signer.public_key(), origin, origin)
    return Line(st, engine, signer, key, _pem(signer.public_key(), auditor / "audit-key.pem"))


def _counts(engine: Engine) -> tuple[int, int]:
    with engine.connect() as c:
        events = c.exec_driver_sql("SELECT count(*) FROM audit_event").scalar_one()
        cps = c.exec_driver_sql("SELECT count(*) FROM audit_checkpoint").scalar_one()
    return int(events), int(cps)


def test_save_writes_exactly_the_signed_note_and_never_overwrites(
    line: Line, tmp_path: Path
) -> None:
    code, _, err = line.cli("audit", "checkpoint", "save", str(tmp_path / "none.txt"))
    assert code == 3 and "no signed checkpoint yet" in err
    line.append(10)
    first = line.sign()
    line.append(5)
    latest = line.sign()
    before = _counts(line.engine)
    out = tmp_path / "kept.txt"
    code, stdout, err = line.cli("audit", "checkpoint", "save", str(out))
    assert code == 0, err
    assert out.read_bytes() == latest.encode()
    assert "over 15 events" in stdout and explain.key_sha256(line.key.public_key) in stdout
    assert _counts(line.engine) == before  # saving writes nothing to the database
    code, _, err = line.cli("audit", "checkpoint", "save", str(out), "--size", "10")
    assert code == 2 and "exists: not overwritten" in err
    assert out.read_bytes() == latest.encode()
    code, _, err = line.cli("audit", "checkpoint", "save", str(out), "--size", "10", "--force")
    assert code == 0, err
    assert out.read_bytes() == first.encode()
    # What was saved is a checkpoint the key signed, of this log.
    cp = cpmod.open_signed(out.read_text(), line.key.name, line.key.public_key, line.key.origin)
    assert cp.size == 10


def test_a_kept_checkpoint_then_more_events_is_consistent(line: Line, tmp_path: Path) -> None:
    line.append(7)
    line.sign()
    saved = tmp_path / "week1.txt"
    assert line.cli("audit", "checkpoint", "save", str(saved))[0] == 0
    line.append(30)
    line.sign()
    line.append(3)  # not yet under a checkpoint
    code, out, err = line.cli(
        "audit", "verify", "--since-checkpoint", str(saved), "--key", str(line.pem)
    )
    assert code == 0, err
    assert "today's log extends each of the 1 kept checkpoints" in out
    assert f"kept checkpoint {saved} (size 7" in out
    assert "consistency proof to the latest signed checkpoint (size 37) verified" in out
    assert explain.key_sha256(line.key.public_key) in out
    assert "events 38..40 are not yet under a signed checkpoint" in out
    code, out, _ = line.cli(
        "audit", "verify", "--since-checkpoint", str(saved), "--key", str(line.pem), "--json"
    )
    doc = json.loads(out)
    assert code == 0 and doc["ok"] and doc["events"] == 40
    assert doc["kept_checkpoints"][0]["kind"] == "consistent"
    assert doc["kept_checkpoints"][0]["latest_checkpoint_size"] == 37


def test_a_rewritten_log_re_signed_by_the_hsm_does_not_extend_the_kept_one(
    line: Line, tmp_path: Path
) -> None:
    """The insider edits event 3, recomputes chain and tree, deletes the checkpoints and
    lets the signer sign the result: the database alone looks perfect."""
    line.append(10)
    note = line.sign()
    saved = tmp_path / "kept.txt"
    saved.write_text(note)
    line.append(10)
    line.sign()
    with insider(line.engine) as c:
        c.exec_driver_sql("UPDATE audit_event SET payload = '{\"i\":99}' WHERE seq = 3")
        _relink(c, 3)
        _rebuild_nodes(c)
        c.exec_driver_sql("DELETE FROM audit_checkpoint")
    line.sign()
    with transaction(line.engine) as s:
        assert verify_log(s, line.key).ok  # nothing in the database betrays it ...
    res = line.check(note)  # ... the kept checkpoint does
    assert (res.ok, res.kind, res.latest_size) == (False, "rewritten", 20)
    assert "consistency proof from size 10 to size 20 fails" in res.detail
    code, out, err = line.cli(
        "audit", "verify", "--since-checkpoint", str(saved), "--key", str(line.pem)
    )
    assert code == 1 and out == ""
    assert "audit trail BROKEN" in err
    assert f"Today's log does not extend your kept checkpoint {saved}" in err
    assert "Do not change anything in the database" in err


def test_a_truncated_log_is_named(line: Line) -> None:
    line.append(10)
    note = line.sign()
    with insider(line.engine) as c:
        c.exec_driver_sql("DELETE FROM audit_event WHERE seq > 6")
        c.exec_driver_sql("DELETE FROM audit_checkpoint")
        _rebuild_nodes(c)
    line.sign()
    res = line.check(note)
    assert (res.kind, res.detail) == (
        "truncated",
        "the log has 6 events, the checkpoint covers 10",
    )


def test_deleted_checkpoint_rows_are_named(line: Line) -> None:
    line.append(10)
    note = line.sign()
    with insider(line.engine) as c:
        c.exec_driver_sql("DELETE FROM audit_checkpoint")
    res = line.check(note)
    assert res.kind == "checkpoints_missing" and res.about_the_log
    assert "first 10 events still match your checkpoint" in res.detail


def test_another_logs_checkpoint_and_an_edited_file_are_not_about_the_log(line: Line) -> None:
    line.append(4)
    note = line.sign()
    other = cpmod.sign(
        cpmod.Checkpoint("other.invalid/log", 4, b"\x07" * 32), line.key.name, line.signer
    )
    res = line.check(other)
    assert (res.kind, res.about_the_log) == ("other_log", False)
    assert "'other.invalid/log'" in res.detail
    edited = note.replace("\n4\n", "\n3\n", 1)  # the size changed after signing
    res = line.check(edited)
    assert (res.kind, res.about_the_log) == ("bad_signature", False)


def test_a_kept_checkpoint_with_the_wrong_key_blames_the_key(line: Line, tmp_path: Path) -> None:
    line.append(5)
    saved = tmp_path / "kept.txt"
    saved.write_text(line.sign())
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    wrong = _pem(other, tmp_path / "wrong.pem")
    code, out, err = line.cli(
        "audit", "verify", "--since-checkpoint", str(saved), "--key", str(wrong)
    )
    assert code == 1
    assert "BROKEN" not in out + err
    assert f"{saved} is not signed by this key" in err
    assert f"its SHA-256 is {explain.key_sha256(other)}" in err
    assert "this says nothing about the log yet" in err
    assert "could NOT check the signed checkpoints: none is signed by this key" in err


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "it is empty"),
        ('{"format": "provisioner-audit-proof/1"}', "it is JSON"),
        ("\nx\n", "line 1 must be the log's origin"),
        ("log\nten\nAAAA\n\n\u2014 log AAAAAAAA\n", "line 2 must be the tree size"),
        ("log\n10\nnot-base64\n\n\u2014 log AAAAAAAA\n", "line 3 must be the root hash"),
        ("log\n10\nAAAA\n\n\u2014 log AAAAAAAA\n", "line 3 must be the root hash"),
        (f"log\n10\n{'A' * 43}=\n", "it has no signature"),
        (f"log\n10\n{'A' * 43}=\n\nsigned by me\n", "line 5 must be a signature line"),
        (f"log\n10\n{'A' * 43}=\n\n\u2014 log !!\n", "line 5 must be a signature line"),
    ],
)
def test_wrong_form_is_named(text: str, why: str) -> None:
    with pytest.raises(InvalidInputError, match=f"^f.txt is not a checkpoint: {why}"):
        kept.parse(text.encode(), "f.txt")


def test_windows_line_endings_and_a_missing_final_newline_are_accepted(line: Line) -> None:
    line.append(3)
    note = line.sign()
    assert line.check(note.replace("\n", "\r\n")).ok
    assert line.check(note.rstrip("\n")).ok


def test_wrong_form_on_the_command_line_exits_2_and_never_says_broken(
    line: Line, tmp_path: Path
) -> None:
    line.append(3)
    line.sign()
    bad = tmp_path / "bad.txt"
    bad.write_text(f"{line.key.origin}\nthree\nxyz\n")
    code, out, err = line.cli(
        "audit", "verify", "--since-checkpoint", str(bad), "--key", str(line.pem)
    )
    assert code == 2 and "BROKEN" not in out + err
    assert f"{bad} is not a checkpoint: line 2 must be the tree size" in err
    # The older option name reads kept files the same way.
    code, _, err = line.cli("audit", "verify", "--checkpoint", str(bad), "--key", str(line.pem))
    assert code == 2 and "is not a checkpoint" in err


def test_checkpoint_is_a_group_and_bare_checkpoint_still_signs_with_the_hsm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The audit key in the real SoftHSM token: `audit checkpoint` (as the docs and alerts
    say) and `audit checkpoint sign` both sign; `checkpoint save` keeps what they signed."""
    monkeypatch.setenv("SOFTHSM2_CONF", "/nonexistent")
    st = make_station(tmp_path / "station")
    env = st.env()

    def cli(*args: str) -> tuple[int, str, str]:
        r = run_cli(*args, env=env, cwd=st.root, timeout=300)
        return r.returncode, r.stdout, r.stderr

    assert cli("ca", "init")[0] == 0
    engine = make_engine(st.settings.db_url)
    with transaction(engine) as s:
        chain.append(s, "test.event", actor="operator:alice")
    code, out, err = cli("audit", "checkpoint")
    assert code == 0 and "checkpoint signed at size" in out, err
    first = int(out.split("at size ")[1].split()[0])
    with transaction(engine) as s:
        chain.append(s, "test.event", actor="operator:alice")
    code, out, err = cli("audit", "checkpoint", "sign")
    assert code == 0 and f"checkpoint signed at size {first + 1}" in out, err
    assert cli("audit", "checkpoint", "sign")[1].startswith("nothing new")
    saved = tmp_path / "kept.txt"
    assert cli("audit", "checkpoint", "save", str(saved), "--size", str(first))[0] == 0
    code, out, err = cli("audit", "verify", "--since-checkpoint", str(saved))
    assert code == 0, err
    assert f"checkpoint (size {first + 1}) verified" in out
