"""Helpers for the log tests: a logger wired to our JSON file handler, and real PKI."""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from provisioner.logs.setup import file_handler


def read_entries(path: Path) -> list[dict[str, Any]]:
    """Every line of ``path`` as JSON (fails on any line that is not)."""
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def json_log(tmp_path: Path) -> Iterator[tuple[logging.Logger, Path]]:
    """A private logger writing through the production handler to a temporary file."""
    path = tmp_path / "log" / "unit.log"
    logger = logging.getLogger(f"tests.logs.{tmp_path.name}")
    handler = file_handler(path, "unit-test")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, path
    logger.removeHandler(handler)
    handler.close()


def certificate() -> x509.Certificate:
    """A real (self-signed) P-256 device-like certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sn0123456789ABCDEF01")])
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


def der_and_pem() -> tuple[bytes, str]:
    cert = certificate()
    return (
        cert.public_bytes(serialization.Encoding.DER),
        cert.public_bytes(serialization.Encoding.PEM).decode(),
    )
