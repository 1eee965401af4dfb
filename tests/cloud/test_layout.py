"""The built-in cloud and the line's uploaders are two packages that do not lean on each
other: the cloud stands in for a third party's service, so it imports nothing of the line;
the uploaders speak the wire protocol and read only the token file the cloud's server makes;
and there are no import circles between them and the CA."""

from __future__ import annotations

import ast
from pathlib import Path

import provisioner

ROOT = Path(provisioner.__file__).parent
# What the built-in cloud may use of the product: infrastructure, not the line.
CLOUD_MAY_USE = (
    "provisioner.cloud",
    "provisioner.errors",
    "provisioner.logs",
    "provisioner.settings",
    "provisioner.private_files",
    "provisioner.db.engine",
    "provisioner.metrics",
    "provisioner.ports",
    "provisioner.asgi_tls",  # the client certificate of the HTTPS device bridge
)


def _imports(package: str) -> dict[str, set[str]]:
    """Every module of ``package`` and the provisioner modules it imports (anywhere in it,
    function-level imports included)."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        module = "provisioner." + ".".join(path.relative_to(ROOT).with_suffix("").parts)
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
                names.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
        found[module] = {n for n in names if n.startswith("provisioner.")}
    return found


def _package_of(name: str) -> str:
    return ".".join(name.split(".")[:2])


def test_the_cloud_imports_nothing_of_the_line() -> None:
    bad = {
        module: sorted(n for n in names if not n.startswith(CLOUD_MAY_USE))
        for module, names in _imports("cloud").items()
    }
    assert {m: n for m, n in bad.items() if n} == {}


def test_the_uploaders_use_only_the_clouds_token_reader() -> None:
    used = {
        n
        for names in _imports("uploads").values()
        for n in names
        if n.startswith("provisioner.cloud")
    }
    assert used <= {"provisioner.cloud.tokens", "provisioner.cloud.tokens.read_token"}


def test_no_import_circles_between_cloud_uploads_and_ca() -> None:
    packages = ("cloud", "uploads", "ca")
    edges = {
        p: {
            _package_of(n)
            for names in _imports(p).values()
            for n in names
            if _package_of(n) in {f"provisioner.{q}" for q in packages if q != p}
        }
        for p in packages
    }
    for p, targets in edges.items():
        for t in targets:
            back = edges[t.split(".")[1]]
            assert f"provisioner.{p}" not in back, f"{p} and {t} import each other"
