"""Certificates read back from chips: a chip in a socket may hold anything in its
certificate slots (a part provisioned elsewhere, a counterfeit, a half-written slot). The
library rebuilds the certificate from the compressed form; whatever the slots hold, the
read ends in a certificate or a ChipError with a reason, never another exception."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provisioner.chips.certdef import COMP_CERT_SIZE
from provisioner.chips.connector import Connector
from provisioner.chips.device import CryptoAuthChip
from provisioner.chips.library import ZONE_DATA
from provisioner.errors import ChipError
from provisioner.settings import Settings
from tests.chips.conftest import settings_with_ca
from tests.properties.bounded import bounded


@pytest.fixture(scope="module")
def chip(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, CryptoAuthChip]]:
    settings, _ = settings_with_ca(Path(tmp_path_factory.mktemp("chip")))
    connector = Connector(settings)
    connector.jig("line1").insert_blank(0)
    with connector.open("emulated:line1/0") as c:
        c.ensure_configured()
        c.generate_key()
        c.lock_data_zone()
        yield settings, c


@bounded(60)
@given(comp=st.binary(min_size=COMP_CERT_SIZE, max_size=COMP_CERT_SIZE))
def test_any_compressed_certificate_reads_as_a_certificate_or_a_chip_error(
    chip: tuple[Settings, CryptoAuthChip], comp: bytes
) -> None:
    settings, c = chip
    for slot, read in (
        (settings.chip.device_cert_slot, c.read_certificate),
        (settings.chip.signer_cert_slot, c.read_signer_certificate),
    ):
        c.write_zone(ZONE_DATA, slot, 0, comp)
        try:
            got = read()
        except ChipError:
            continue
        assert isinstance(got, bytes)
