"""No certificate body, PIN or token reaches a log line: at the source (Celery's task
result) and in the formatter (whatever slips through)."""

from __future__ import annotations

import base64
import logging
import secrets
from pathlib import Path

from celery.app import trace

from hsm.pins import read_pin
from provisioner.logs import redact, register_secret
from provisioner.logs.setup import quiet_task_results
from tests.logs.conftest import der_and_pem, read_entries


def test_a_certificates_der_hex_base64_and_pem_are_removed(
    json_log: tuple[logging.Logger, Path],
) -> None:
    logger, path = json_log
    der, pem = der_and_pem()
    b64 = base64.b64encode(der).decode()
    logger.info("signed: {'der': '%s', 'serial_number': '1f'}", der.hex())
    logger.info("as base64 %s and upper hex %s", b64, der.hex().upper())
    logger.info("the chain:\n%s", pem + pem)
    logger.info("as bytes %r", der)
    logger.info("cut short: %s", pem[:300])
    text = path.read_text()
    for secret in (der.hex(), der.hex().upper(), b64, "-----BEGIN", "MII"):
        assert secret not in text
    assert der.hex()[:64] not in text  # not even a recognisable piece
    first, *_ = read_entries(path)
    assert first["msg"].startswith("signed: {'der': '[redacted ")
    assert "'serial_number': '1f'" in first["msg"]  # what is not a secret stays


def test_user_and_enrollment_tokens_are_removed() -> None:
    user = "prv_" + secrets.token_urlsafe(32)
    enroll = "enr_" + secrets.token_urlsafe(32)
    out = redact(f"Authorization: Bearer {user} then {enroll}.")
    assert user not in out and enroll not in out
    assert out == "Authorization: Bearer [redacted token] then [redacted token]."


def test_a_pin_read_from_its_file_is_never_logged(
    json_log: tuple[logging.Logger, Path], tmp_path: Path
) -> None:
    logger, path = json_log
    pin = secrets.token_hex(8)
    pin_file = tmp_path / "user.pin"
    pin_file.write_text(pin + "\n")
    assert read_pin(pin_file) == pin  # registers it
    logger.error("login failed with %s", pin)
    try:
        raise ValueError(f"C_Login({pin!r})")
    except ValueError:
        logger.exception("while logging in")
    text = path.read_text()
    assert pin not in text
    assert text.count("[redacted secret]") == 2


def test_short_values_are_not_registered() -> None:
    register_secret("ab")
    register_secret(None)
    assert redact("a b ab abc") == "a b ab abc"


def test_ordinary_text_is_left_alone() -> None:
    text = (
        "device 12 failed (reject): chip 0123ABCDEF01234501 answered 0x0F; fingerprint "
        + "ab" * 32
        + " path /work/main/.venv/lib/python3.11/site-packages/celery/app/trace.py"
    )
    assert redact(text) == text


def test_celerys_task_success_line_loses_the_return_value(
    json_log: tuple[logging.Logger, Path],
) -> None:
    """Celery's tracer logs ``Task ... succeeded in ...s: <return value>``: the signer's
    return value is the certificate's DER in hex. The filter on ``celery.app.trace``
    drops it at the source; the line itself stays."""
    _, path = json_log
    der, _ = der_and_pem()
    celery_logger = logging.getLogger("celery.app.trace")
    handler = logging.getLogger(f"tests.logs.{path.parent.parent.name}").handlers[0]
    celery_logger.addHandler(handler)
    old_level = celery_logger.level
    celery_logger.setLevel(logging.INFO)
    quiet_task_results()
    quiet_task_results()  # once per process, however often it is called
    try:
        trace.info(
            trace.LOG_SUCCESS,
            {
                "id": "abc",
                "name": "provisioner.sign",
                "return_value": str({"der": der.hex(), "serial_number": "1f"}),
                "runtime": 0.01,
                "args": "()",
                "kwargs": "{}",
            },
        )
    finally:
        celery_logger.removeHandler(handler)
        celery_logger.setLevel(old_level)
    (entry,) = read_entries(path)
    assert entry["msg"] == "Task provisioner.sign[abc] succeeded in 0.01s"
    assert entry["logger"] == "celery.app.trace"
    assert "serial_number" not in path.read_text()  # dropped, not redacted
