"""The dashboard's tests: a real line (supervisor, Redis, real Celery workers, SoftHSM, the
built-in registry, the API's uvicorn serving /ui) and headless Chromium from Debian's
``chromium`` package driven by Playwright (nothing downloaded).

Screenshots the tests take go to ``docs/screenshots/`` (shown in the README)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from provisioner.auth import users
from provisioner.db.engine import create_schema, make_engine
from provisioner.supervisor import Supervisor, running_services
from tests.conftest import Station, make_station, run_cli

SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


@dataclass(frozen=True)
class Line:
    """A running line and a token per role (users alice/admin, oscar/operator,
    audrey/auditor, mona/monitor)."""

    station: Station
    supervisor: Supervisor
    engine: Engine
    tokens: dict[str, str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.station.settings.api.listen_port}"


def start_line(root: Path, *, sockets: int = 4, extra: str = "") -> Iterator[Line]:
    st = make_station(root, sockets=sockets, extra=extra)
    r = run_cli("ca", "init", env=st.env(), timeout=600)
    assert r.returncode == 0, r.stderr
    engine = make_engine(st.settings.db_url)
    create_schema(engine)
    tokens = {
        role: users.add_user(engine, name, role, "admin:root")
        for name, role in (
            ("alice", "admin"),
            ("oscar", "operator"),
            ("audrey", "auditor"),
            ("mona", "monitor"),
        )
    }
    with running_services(st.settings, ["line1"], st.config) as sup:
        yield Line(st, sup, engine, tokens)


@pytest.fixture(scope="module")
def line(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Line]:
    """One line for a test module (starting one takes ~15 s)."""
    yield from start_line(tmp_path_factory.mktemp("web") / "line")


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is missing: run `make install` (deploy/install.sh)"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, headless=True)
        try:
            yield b
        finally:
            b.close()


def sign_in(browser: Any, line: Line, role: str) -> Any:
    """A new browser context (own cookies) signed in as ``role``; returns its page."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.goto(f"{line.url}/ui/signin")
    page.fill("input[name=token]", line.tokens[role])
    page.click("button[type=submit]")
    page.wait_for_url(f"{line.url}/ui/**")
    return page


def screenshot(page: Any, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
