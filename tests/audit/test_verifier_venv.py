"""The standalone verifier as an auditor runs it: the file handed out by `provisioner audit
verifier`, in a fresh virtualenv where only `cryptography` is installed (no provisioner, no
configuration, no database), on a proof, a consistency proof and an exported log made by
the product: good, edited, truncated, wrong key and wrong input, each with its own message
and exit status."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.audit.test_verifier import Factory, make_factory
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with `cryptography` from the package index and nothing else."""
    venv = tmp_path_factory.mktemp("auditor-venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run(
        [
            str(venv / "bin" / "pip"),
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "cryptography",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert pip.returncode == 0, pip.stderr
    return venv / "bin" / "python"


def test_the_verifier_in_a_venv_with_only_cryptography(python: Path, tmp_path: Path) -> None:
    f = make_factory(tmp_path / "factory")
    box = f.box
    env = {"PATH": "/usr/bin:/bin", "HOME": str(box)}
    got = run_cli("audit", "verifier", "-o", str(box / "verifier.py"), env=env, cwd=box)
    assert got.returncode == 0, got.stderr

    def verifier(*args: str | Path) -> subprocess.CompletedProcess[str]:
        # -I: isolated (no PYTHONPATH, no user site, not even the script's own directory
        # on top of the standard ones): only the venv's packages are importable.
        return subprocess.run(
            [str(python), "-I", str(box / "verifier.py"), *map(str, args)],
            capture_output=True,
            text=True,
            cwd=box,
            env=env,
            timeout=60,
        )

    def isolated(code: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(python), "-I", "-c", code], capture_output=True, text=True, cwd=box, env=env
        )

    assert isolated("import provisioner").returncode != 0  # the product is not there
    names = "json.dumps([d.name for d in importlib.metadata.distributions()])"
    pkgs = isolated(f"import importlib.metadata, json; print({names})")
    installed = set(json.loads(pkgs.stdout)) - {"pip", "setuptools"}
    assert "cryptography" in installed and installed <= {"cryptography", "cffi", "pycparser"}

    def expect(code: int, text: str, *args: str | Path) -> None:
        r = verifier(*args)
        out = r.stdout + r.stderr
        assert r.returncode == code, out
        assert text in out, out
        if code == 2:  # a wrong input never reads as a finding about the log
            assert "does NOT verify" not in out and "nothing was checked" in out

    key, wrong = ("--key", f.key), ("--key", f.wrong_key)
    # A proof file.
    proof = f.write("proof.json", f.proof)
    expect(0, "proof verified: 9 events of chip", "proof", proof, *key)
    expect(
        1,
        "event 12 (device.step5) was changed after it was signed",
        "proof",
        _edited_proof(f),
        *key,
    )
    expect(1, "event 2 (device.step1): inclusion proof is shorter", "proof", _short_proof(f), *key)
    expect(
        1,
        "the checkpoint is not signed by this key: check you have the right audit "
        f"public key (its SHA-256 is {f.wrong_key_sha256})",
        "proof",
        proof,
        *wrong,
    )
    expect(2, f"{f.checkpoint} is not a proof file", "proof", f.checkpoint, *key)

    # A consistency file.
    cons = f.write("c.json", f.consistency)
    expect(0, "at size 15 extends its checkpoint at size 10 unchanged", "consistency", cons, *key)
    bent = json.loads(json.dumps(f.consistency))
    bent["proof"][-1] = bent["proof"][-1][::-1]
    expect(1, "does not extend the one at size 10", "consistency", f.write("bent.json", bent), *key)
    shrunk = dict(f.consistency, old=f.notes[15], new=f.notes[10], proof=[])
    expect(1, "the log was truncated", "consistency", f.write("shrunk.json", shrunk), *key)
    expect(1, "not signed by this key", "consistency", cons, *wrong)
    expect(2, f"{proof} is not a consistency file", "consistency", proof, *key)

    # An exported log segment against a kept checkpoint.
    cp = ("--checkpoint", f.checkpoint)
    good = f.write("export.jsonl", f.export)
    expect(
        0,
        "segment verified: events 1..15 of the export are exactly the log",
        "segment",
        good,
        *cp,
        *key,
    )
    expect(
        1,
        "event 7 (device.step2) was changed after it was recorded",
        "segment",
        _edited_export(f),
        *cp,
        *key,
    )
    expect(
        1,
        "the log is truncated: the export has 12 events but the checkpoint covers 15",
        "segment",
        f.write("short.jsonl", f.export[:12]),
        *cp,
        *key,
    )
    expect(1, "not signed by this key", "segment", good, *cp, *wrong)
    expect(
        2,
        "is not a log segment from event 1: it starts at event 4",
        "segment",
        f.write("late.jsonl", f.export[3:]),
        *cp,
        *key,
    )
    expect(2, f"{proof} is not a signed checkpoint", "segment", good, "--checkpoint", proof, *key)
    # --json for scripts, and --help for people.
    j = json.loads(verifier("segment", good, *cp, *key, "--json").stdout)
    assert j["ok"] and j["tree_size"] == 15 and j["events"] == 20
    assert "Exit 0: verified; 1: does NOT verify; 2: wrong input" in verifier("--help").stdout


def _edited_proof(f: Factory) -> Path:
    doc = json.loads(json.dumps(f.proof))
    doc["events"][5]["event"]["actor"] = "operator:mallory"
    return f.write("edited-proof.json", doc)


def _short_proof(f: Factory) -> Path:
    doc = json.loads(json.dumps(f.proof))
    doc["events"][1]["inclusion_proof"].pop()
    return f.write("short-proof.json", doc)


def _edited_export(f: Factory) -> Path:
    lines = list(f.export)
    obj = json.loads(lines[6])
    hashed = "payload_text" if "payload_text" in obj else "payload"
    payload = json.loads(obj[hashed])
    payload["step"] += 100
    obj[hashed] = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    lines[6] = json.dumps(obj) + "\n"
    return f.write("edited.jsonl", lines)
