"""``audit verify`` in plain words: what was checked, and on failure what it means and what
to do — "BROKEN" only when the log itself fails, never for the wrong key or a missing one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from provisioner.audit import explain
from provisioner.audit.checkpointer import Checkpointer, audit_key_file
from provisioner.audit.explain import Explanation
from provisioner.audit.verify import AuditKey, verify_log
from provisioner.db.engine import transaction
from tests.audit.test_kept_checkpoints import Line
from tests.audit.test_kept_checkpoints import line as line  # the fixture
from tests.audit.test_tamper import _relink, insider


def _words(line: Line, key: AuditKey | None = None) -> Explanation:
    with transaction(line.engine) as s:
        res = verify_log(s, key or line.key)
    sha = explain.key_sha256((key or line.key).public_key)
    return explain.explanation(res, sha)


@pytest.fixture
def log20(line: Line) -> Line:
    line.append(10)
    line.sign()
    line.append(10)
    line.sign()
    return line


def test_an_intact_log_says_what_was_checked(log20: Line) -> None:
    log20.append(1)
    w = _words(log20)
    assert (w.ok, w.broken, w.means, w.todo) == (True, False, [], [])
    assert w.headline == "audit trail intact: 21 events verified, 2 signed checkpoints match"
    text = "\n".join(w.lines())
    assert "events: all 21 recomputed from their fields" in text
    assert "hash chain: each of the 21 events links to the one before it" in text
    assert "Merkle tree: the stored hash tree over the 21 events matches them" in text
    sha = explain.key_sha256(log20.key.public_key)
    assert (
        f"signed checkpoints: 2 match the events; signatures checked with the audit key "
        f"whose SHA-256 is {sha}" in text
    )
    assert "limit: events 21..21 are not yet under a signed checkpoint" in text


def test_without_a_key_the_words_say_signatures_were_not_checked(log20: Line) -> None:
    with transaction(log20.engine) as s:
        res = verify_log(s, None)
    text = "\n".join(explain.explain(res))
    assert res.ok and "signatures NOT checked: no audit public key" in text


def test_an_edited_event_is_named_with_what_it_means_and_what_to_do(log20: Line) -> None:
    with insider(log20.engine) as c:
        c.exec_driver_sql("UPDATE audit_event SET payload = '{\"i\":99}' WHERE seq = 4")
    w = _words(log20)
    assert (w.ok, w.broken) == (False, True)
    assert w.headline == "audit trail BROKEN at event 4: event 4 (test.event) was altered"
    assert w.means[0].startswith("Event 4 is not the event that was written: its record was")
    assert "events before 4 still verify" in w.means[0]
    assert w.todo == [explain.PRESERVE]
    assert "Do not change anything in the database" in explain.PRESERVE
    assert "raise an incident" in explain.PRESERVE


def test_an_edit_hidden_by_a_recomputed_chain_names_the_signed_checkpoint(log20: Line) -> None:
    with insider(log20.engine) as c:
        c.exec_driver_sql("UPDATE audit_event SET actor = 'operator:mallory' WHERE seq = 4")
        _relink(c, 4)
    w = _words(log20)
    assert w.broken and w.headline.startswith("audit trail BROKEN at event 4: events 1..10")
    assert "changed after they were signed" in w.means[0]
    assert "The first changed event is 4." in w.means[0]


def test_a_truncation_says_what_was_deleted(log20: Line) -> None:
    with insider(log20.engine) as c:
        c.exec_driver_sql("DELETE FROM audit_event WHERE seq > 15")
    w = _words(log20)
    assert w.broken and "BROKEN at event 16" in w.headline
    assert "The log was cut short" in w.means[0]
    assert "Events from 16 on were deleted" in w.means[0]


def test_the_wrong_key_is_blamed_before_the_log(log20: Line) -> None:
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    w = _words(log20, AuditKey(other, log20.key.name, log20.key.origin))
    assert (w.ok, w.broken) == (False, False)
    text = "\n".join(w.lines())
    assert "BROKEN" not in text
    assert w.headline == "could NOT check the signed checkpoints: none is signed by this key"
    assert "This says nothing about the log yet." in w.means[0]
    assert w.todo[0].startswith(
        f"Check the key first: compare its SHA-256 ({explain.key_sha256(other)})"
    )


def test_a_forged_checkpoint_among_good_ones_is_not_blamed_on_the_key(log20: Line) -> None:
    log20.append(3)
    forged = ec.generate_private_key(ec.SECP256R1())
    assert Checkpointer(log20.engine, log20.station.settings, forged).write("x") is not None
    w = _words(log20)
    assert w.broken and "the checkpoint stored at size 23 does not verify" in w.headline
    assert "this one was edited or forged in the database" in w.means[0]


def test_the_command_prints_the_words_and_json_carries_them(log20: Line) -> None:
    with insider(log20.engine) as c:
        c.exec_driver_sql("UPDATE audit_event SET payload = '{\"i\":99}' WHERE seq = 7")
    code, out, err = log20.cli("audit", "verify", "--key", str(log20.pem))
    assert (code, out) == (1, "")
    lines = err.splitlines()
    assert lines[0] == "audit trail BROKEN at event 7: event 7 (test.event) was altered"
    for part in ("What was checked:", "What it means:", "What to do:"):
        assert part in lines
    assert "  Event 7 is not the event that was written" in err
    code, out, _ = log20.cli("audit", "verify", "--key", str(log20.pem), "--json")
    doc = json.loads(out)
    assert code == 1 and (doc["ok"], doc["kind"], doc["first_bad_seq"]) == (False, "chain", 7)
    assert doc["explanation"][0] == lines[0]
    assert doc["audit_key_sha256"] == explain.key_sha256(log20.key.public_key)


def test_a_kept_checkpoint_without_any_key_is_an_input_error(line: Line, tmp_path: Path) -> None:
    line.append(2)
    saved = tmp_path / "kept.txt"
    saved.write_text(line.sign())
    audit_key_file(line.station.settings).unlink()  # no installed key, and no --key
    code, out, err = line.cli("audit", "verify", "--since-checkpoint", str(saved))
    assert code == 2 and "BROKEN" not in out + err
    assert "checking a kept checkpoint needs the audit public key: pass --key FILE" in err
