"""Settings: TOML file, environment overrides, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisioner.errors import ConfigError
from provisioner.settings import load_settings


def test_defaults_live_under_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PROVISIONER_CONFIG", raising=False)
    s = load_settings()
    assert s.db_url == f"sqlite:///{tmp_path / 'var' / 'provisioner.db'}"
    assert s.softhsm_conf == tmp_path / "var" / "hsm" / "softhsm2.conf"
    assert "line1" in s.stations


def test_toml_then_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "p.toml"
    cfg.write_text(
        '[registry]\nproject = "from-toml"\nlocation = "eu"\n[stations.l2]\nsockets = 2\n'
    )
    monkeypatch.setenv("PROVISIONER_REGISTRY__PROJECT", "from-env")
    s = load_settings(cfg)
    assert s.registry.project == "from-env"
    assert s.registry.location == "eu"
    assert s.station("l2").sockets == 2


def test_invalid_value_names_the_field(tmp_path: Path) -> None:
    cfg = tmp_path / "p.toml"
    cfg.write_text("[stations.l2]\nsockets = 0\n")
    with pytest.raises(ConfigError, match=r"stations\.l2\.sockets"):
        load_settings(cfg)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")
