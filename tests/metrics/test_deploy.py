"""The Prometheus and Grafana files in deploy/: the rules and the config pass promtool, the
dashboard is importable JSON whose queries name only metrics the product defines."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from provisioner.db.engine import create_schema, make_engine, transaction
from provisioner.db.models import AuditCheckpoint
from provisioner.metrics import defs  # noqa: F401 (registers every metric)
from provisioner.metrics.database import DatabaseCollector
from provisioner.settings import Settings
from tests.metrics.test_line_metrics import FAULT_ONLY, expressions

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed")


@needs_promtool
def test_alert_rules_check() -> None:
    out = subprocess.run(
        ["promtool", "check", "rules", str(DEPLOY / "prometheus-alerts.yml")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    rules = (DEPLOY / "prometheus-alerts.yml").read_text()
    names = re.findall(r"^\s+- alert: (\w+)$", rules, flags=re.M)
    assert {
        "ProvisionerSignerDown",
        "ProvisionerUploadsParked",
        "ProvisionerSocketFailingRepeatedly",
        "ProvisionerAuditCheckpointTooOld",
    } <= set(names)
    # Each says what happened and what to do.
    assert len(re.findall(r"^\s+summary: ", rules, flags=re.M)) == len(names)
    assert len(re.findall(r"^\s+description: >-$", rules, flags=re.M)) == len(names)
    assert len(expressions()) > len(names)  # the rules' and the dashboard's


@needs_promtool
def test_prometheus_config_checks_with_its_paths_on_this_machine(tmp_path: Path) -> None:
    config = (DEPLOY / "prometheus.yml").read_text()
    shutil.copy(DEPLOY / "prometheus-alerts.yml", tmp_path / "provisioner-alerts.yml")
    token = tmp_path / "provisioner.token"
    token.write_text("prv_example\n")
    for installed, here in (
        ("/etc/prometheus/provisioner-alerts.yml", tmp_path / "provisioner-alerts.yml"),
        ("/etc/prometheus/provisioner.token", token),
    ):
        assert f" {installed}" in config, installed
        config = config.replace(f" {installed}", f" {here}")
    assert "type: Bearer" in config and "credentials_file:" in config
    (tmp_path / "prometheus.yml").write_text(config)
    out = subprocess.run(
        ["promtool", "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr


def test_grafana_dashboard_is_importable_and_names_defined_metrics(tmp_path: Path) -> None:
    from prometheus_client import REGISTRY

    dash = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    assert dash["uid"] and dash["title"] and dash["panels"]
    assert [i["name"] for i in dash["__inputs"]] == ["DS_PROMETHEUS"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        assert p["targets"] and p["datasource"]["uid"] == "${DS_PROMETHEUS}"
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for topic in ("throughput", "steps", "failures", "signing latency", "registry", "backlog",
                  "checkpoint"):  # fmt: skip
        assert topic in titles, topic

    # Names the processes define (labelled counters too, before any sample) and the ones
    # the database collector gives (with a checkpoint, so its age is there).
    families = [m for m in REGISTRY.collect() if m.name.startswith("provisioner_")]
    defined = {f"{m.name}{sfx}" for m in families for sfx in ("", "_total", "_bucket", "_count",
                                                               "_sum")}  # fmt: skip
    settings = Settings(var_dir=tmp_path / "var")
    engine = make_engine(settings.db_url)
    create_schema(engine)
    with transaction(engine) as s:
        s.add(AuditCheckpoint(size=0, root_hash="0" * 64, note="n", reason="manual",
                              created_at="2026-01-01T00:00:00Z"))  # fmt: skip
    defined |= {f"{m.name}{sfx}" for m in DatabaseCollector(engine).collect()
                for sfx in ("", "_total")}  # fmt: skip
    used = {m for e in expressions() for m in re.findall(r"\bprovisioner_[a-z_]+", e)}
    assert used >= FAULT_ONLY
    assert not used - defined, used - defined
