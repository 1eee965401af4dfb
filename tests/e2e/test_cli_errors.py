"""Bad operator input: a one-line error that says what to do, non-zero exit, nothing written."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import Station, run_cli


def run(st: Station, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, env=st.env())


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    for n in needles:
        assert n in lines[0], lines[0]
    assert "Traceback" not in proc.stderr


def assert_no_batches(st: Station) -> None:
    out = run(st, "batch", "list", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []


@pytest.mark.parametrize("count", ["0", "-3"])
def test_count_must_be_positive(station: Station, count: str) -> None:
    proc = run(station, "batch", "create", "--count", count, "--station", "line1")
    assert_one_line_error(proc, "--count must be between 1")
    assert_no_batches(station)


def test_unknown_station(station: Station) -> None:
    proc = run(station, "batch", "create", "--count", "2", "--station", "nowhere")
    assert_one_line_error(proc, "unknown station 'nowhere'", "line1")
    assert_no_batches(station)


def test_no_ca_initialised(station: Station) -> None:
    proc = run(station, "batch", "create", "--count", "2", "--station", "line1")
    assert_one_line_error(proc, "provisioner ca init")
    assert_no_batches(station)


def test_services_without_a_ca_start_nothing(station: Station) -> None:
    """The line server signs with its CA (station certificates, its own identity, devices):
    without one, `services run` says so before it starts anything."""
    proc = run(station, "services", "run")
    assert_one_line_error(proc, "no CA initialised", "provisioner ca init")
    assert not (station.settings.var / "run" / "redis.pid").exists()


def test_redis_unreachable(station: Station) -> None:
    assert run(station, "ca", "init").returncode == 0
    proc = run(station, "batch", "create", "--count", "2", "--station", "line1")
    assert_one_line_error(proc, "Redis is unreachable", "provisioner services run")
    assert_no_batches(station)


def test_wrong_pin(station: Station) -> None:
    """An admin command that opens the token: a wrong PIN is one line, never echoed."""
    assert run(station, "ca", "init").returncode == 0
    station.settings.pin_file.write_text("99999999")
    proc = run(station, "ca", "crl")
    assert_one_line_error(proc, "PIN")
    assert "99999999" not in proc.stderr + proc.stdout


def test_operators_never_open_the_token(station: Station) -> None:
    """`batch create` checks the CA through the signer: without a PIN file it never says
    anything about the PIN (here it stops at the unreachable broker) and writes nothing."""
    assert run(station, "ca", "init").returncode == 0
    station.settings.pin_file.unlink()
    proc = run(station, "batch", "create", "--count", "2", "--station", "line1")
    assert_one_line_error(proc, "Redis is unreachable")
    assert "PIN" not in proc.stderr and "no CA initialised" not in proc.stderr
    assert_no_batches(station)


def test_unknown_batch(station: Station) -> None:
    proc = run(station, "batch", "status", "77")
    assert_one_line_error(proc, "batch 77 does not exist")


def test_ca_init_is_idempotent(station: Station) -> None:
    first = run(station, "ca", "init", "--json")
    assert first.returncode == 0, first.stderr
    second = run(station, "ca", "init", "--json")
    assert second.returncode == 0, second.stderr
    a, b = json.loads(first.stdout), json.loads(second.stdout)
    assert a["created"] is True and b["created"] is False
    assert a["intermediate"]["sha256"] == b["intermediate"]["sha256"]


def test_start_without_workers_writes_nothing(station: Station) -> None:
    from provisioner import batches
    from provisioner.db.engine import create_schema, make_engine
    from provisioner.supervisor import Supervisor

    assert run(station, "ca", "init").returncode == 0
    sup = Supervisor(station.settings, station.config)
    sup.start_redis()
    try:
        proc = run(station, "batch", "create", "--count", "2", "--station", "line1")
        assert_one_line_error(proc, "no worker consumes hsm", "services run")
        assert_no_batches(station)
        engine = make_engine(station.settings.db_url)
        create_schema(engine)
        batch_id = str(
            batches.create_batch(
                engine, station.settings, station_id="line1", count=2, actor="test"
            )
        )
        proc = run(station, "batch", "start", batch_id)
        assert_one_line_error(proc, "no worker consumes hsm, registry", "services run")
        status = json.loads(run(station, "batch", "status", batch_id, "--json").stdout)
        assert status["state"] == "created" and status["steps"] == {"PENDING": 2}
    finally:
        sup.stop()


@pytest.mark.parametrize(
    "args",
    [
        ("batch", "status", "99999999999999999999999"),
        ("batch", "pause", "99999999999999999999999"),
        ("batch", "quota", "set", "99999999999999999999999", "3"),
        ("manifest", "build", "--batch", "99999999999999999999999"),
        ("registry", "sync", "--batch", "99999999999999999999999"),
        ("audit", "query", "--batch", "99999999999999999999999"),
    ],
)
def test_batch_ids_beyond_64_bits_are_usage_errors(station: Station, args: tuple[str, ...]) -> None:
    """A number the database cannot hold is the operator's typo: a usage error, never a
    traceback from the database driver."""
    proc = run(station, *args)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "OverflowError" not in proc.stderr
    assert "Invalid value" in proc.stderr
