"""A dev CA in a private SoftHSM token directory, per test."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisioner.ca.ceremony import CaInfo, init_ca
from provisioner.settings import Settings


@pytest.fixture
def ca_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    # init_ca points SOFTHSM2_CONF at the test's own token dir; restore it afterwards.
    monkeypatch.setenv("SOFTHSM2_CONF", "/nonexistent")
    return Settings(var_dir=tmp_path / "var")


@pytest.fixture
def ca(ca_settings: Settings) -> CaInfo:
    return init_ca(ca_settings)
