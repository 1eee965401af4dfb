"""The dashboard's security, at the HTTP level (FastAPI's TestClient on the real app, no
browser, no services): sign-in redirects, every /ui route held to its declared action for
every role (with the refusal audited), CSRF and origin checks on forms, what a role's pages
must not show, security headers, the session cookie, and sessions ending on sign-out and
on token revocation."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, func, select

from provisioner.api.app import create_app
from provisioner.auth import users
from provisioner.auth.roles import ACTIONS
from provisioner.batches import create_batch
from provisioner.db.engine import create_schema, make_engine, transaction
from provisioner.db.models import AuditEvent, Device, RefusalWindow, UserAccount
from provisioner.settings import Settings
from provisioner.web.app import mount
from provisioner.web.context import WebContext
from tests.conftest import make_station

ROLES = ("admin", "operator", "auditor", "monitor")
NAMES = {"admin": "alice", "operator": "oscar", "auditor": "audrey", "monitor": "mona"}
SERIAL = "01236A7B8C9D0E1FEE"


@dataclass
class Site:
    app: FastAPI
    engine: Engine
    tokens: dict[str, str]
    device_id: int
    batch_id: int
    settings: Settings


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    st = make_station(tmp_path_factory.mktemp("websec") / "line")
    engine = make_engine(st.settings.db_url)
    create_schema(engine)
    tokens = {role: users.add_user(engine, NAMES[role], role, "admin:root") for role in ROLES}
    batch_id = create_batch(engine, st.settings, station_id="line1", count=2, actor="admin:root")
    with transaction(engine) as s:
        dev = s.exec(select(Device).where(Device.batch_id == batch_id)).first()
        assert dev is not None and dev.id is not None
        dev.chip_serial = SERIAL  # as if identified: pages show and link it
        s.add(dev)
        device_id = dev.id
    return Site(create_app(st.settings), engine, tokens, device_id, batch_id, st.settings)


def signed_in(site: Site, role: str) -> TestClient:
    """A client (own cookies) signed in with the role's token through the sign-in form."""
    client = TestClient(site.app, follow_redirects=False)
    form = client.get("/ui/signin")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert csrf, form.text
    r = client.post("/ui/signin", data={"token": site.tokens[role], "csrf": csrf.group(1)})
    assert r.status_code == 303, r.text
    return client


def csrf_of(client: TestClient, page: str = "/ui/audit") -> str:
    """This session's CSRF token, from the sign-out form every page carries."""
    html = client.get(page, follow_redirects=True).text
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, html
    return m.group(1)


def denied_count(engine: Engine) -> int:
    with Session(engine) as s:
        return int(
            s.exec(select(func.count()).where(col(AuditEvent.event_type) == "auth.denied")).one()
        )


def denial_window(engine: Engine, actor: str, action: str) -> int | None:
    """How many denials of ``action`` the open aggregation window of ``actor`` counts."""
    with Session(engine) as s:
        row = s.get(RefusalWindow, (actor, "auth.denied", action))
        return None if row is None else row.count


def ui_routes(ctx: WebContext, app: FastAPI) -> list[tuple[APIRoute, str | None, bool]]:
    """Every /ui route: (route, its declared action, whether it declares one at all)."""

    def walk(routes: list[Any]) -> Iterator[APIRoute]:
        for r in routes:
            if isinstance(r, APIRoute):
                yield r
            elif hasattr(r, "original_router"):  # FastAPI's lazily included router
                yield from walk(r.original_router.routes)
            elif hasattr(r, "routes"):
                yield from walk(r.routes)

    out = []
    for route in walk(app.routes):
        if not route.path.startswith("/ui"):
            continue
        declared = [d.call for d in route.dependant.dependencies if d.call in ctx.guard.declared]
        assert len(declared) <= 1, route.path
        action = ctx.guard.declared[declared[0]] if declared else None
        out.append((route, action, bool(declared)))
    return out


@pytest.fixture(scope="module")
def walked(site: Site) -> tuple[WebContext, FastAPI]:
    """A fresh app with the dashboard mounted, to read the guard's declarations."""
    app = FastAPI()
    return mount(app, site.engine, site.settings), app


def concrete(path: str, site: Site) -> str:
    values = {"device_id": site.device_id, "batch_id": site.batch_id, "name": "nobody"}
    return re.sub(r"\{(\w+)(:\w+)?\}", lambda m: str(values.get(m.group(1), 1)), path)


def streams(route: APIRoute) -> bool:
    """A live (SSE) route never ends by itself: the TestClient cannot read it whole."""
    ret = route.endpoint.__annotations__.get("return")
    return "StreamingResponse" in str(ret) or "/live" in route.path


# --- tests -----------------------------------------------------------------------------------


def test_every_ui_route_declares_its_action(walked: tuple[WebContext, FastAPI]) -> None:
    ctx, app = walked
    routes = ui_routes(ctx, app)
    assert len(routes) > 10
    undeclared = sorted(f"{sorted(r.methods or ())} {r.path}" for r, _, has in routes if not has)
    # Only the sign-in form is open to everybody.
    assert undeclared == ["['GET'] /ui/signin", "['POST'] /ui/signin"], undeclared


def test_signed_out_requests_go_to_sign_in(site: Site, walked: tuple[WebContext, FastAPI]) -> None:
    ctx, app = walked
    client = TestClient(site.app, follow_redirects=False)
    checked = 0
    for route, _, has in ui_routes(ctx, app):
        if not has or "GET" not in (route.methods or ()):
            continue
        path = concrete(route.path, site)
        r = client.get(path)
        assert r.status_code == 303, (path, r.status_code)
        assert r.headers["location"].startswith("/ui/signin?next="), path
        checked += 1
    assert checked >= 8


@pytest.mark.parametrize("role", ROLES)
def test_each_route_holds_each_role_to_its_action(
    site: Site, walked: tuple[WebContext, FastAPI], role: str
) -> None:
    """Allowed: not 403 (a GET renders; a POST without CSRF is refused as a bad form, not
    as a role). Not allowed: 403 and an ``auth.denied`` event, for pages and forms alike."""
    ctx, app = walked
    client = signed_in(site, role)
    for route, action, has in ui_routes(ctx, app):
        if not has or action is None:
            continue
        path = concrete(route.path, site)
        allowed = role in ACTIONS[action]
        for method in sorted(route.methods or ()):
            if method == "GET" and allowed and streams(route):
                continue  # cannot be read whole; the refusal below still is checked
            before = denied_count(site.engine)
            window = denial_window(site.engine, f"{role}:{NAMES[role]}", action)
            r = client.request(method, path, data={} if method == "POST" else None)
            after = denied_count(site.engine)
            counted = denial_window(site.engine, f"{role}:{NAMES[role]}", action)
            where = f"{role} {method} {path} ({action})"
            if allowed:
                assert after == before, where
                if method == "POST":
                    assert r.status_code == 403 and "Form refused" in r.text, where
                else:
                    assert r.status_code != 403, where
                    assert r.status_code < 500, (where, r.text[-2000:])
            else:
                assert r.status_code == 403, (where, r.status_code)
                assert "Not allowed" in r.text, where
                # audited: the first denial of an action opens a window with an event,
                # repeated ones are counted in it (provisioner.audit.refusals)
                if window is None:
                    assert (after, counted) == (before + 1, 1), where
                else:
                    assert (after, counted) in {(before, window + 1), (before + 1, 1)}, where


def test_form_without_csrf_or_from_another_origin_changes_nothing(site: Site) -> None:
    admin = signed_in(site, "admin")
    csrf = csrf_of(admin, "/ui/users")
    before = denied_count(site.engine)
    r = admin.post("/ui/users", data={"name": "mallory", "role": "admin"})
    assert r.status_code == 403 and "CSRF" in r.text
    r = admin.post("/ui/users", data={"name": "mallory", "role": "admin", "csrf": "x" * len(csrf)})
    assert r.status_code == 403
    r = admin.post(
        "/ui/users",
        data={"name": "mallory", "role": "admin", "csrf": csrf},
        headers={"origin": "https://evil.example"},
    )
    assert r.status_code == 403 and "another site" in r.text
    r = admin.post(
        "/ui/users",
        data={"name": "mallory", "role": "admin", "csrf": csrf},
        headers={"referer": "https://evil.example/page"},
    )
    assert r.status_code == 403
    with Session(site.engine) as s:
        assert s.get(UserAccount, "mallory") is None
    assert denied_count(site.engine) == before  # a bad form is not a role refusal
    # The same form, as the page sends it, works (and shows the token once, uncached).
    r = admin.post(
        "/ui/users",
        data={"name": "mallory", "role": "auditor", "csrf": csrf},
        headers={"origin": "http://testserver"},
    )
    assert r.status_code == 200 and 'data-testid="new-token"' in r.text
    assert r.headers["cache-control"] == "no-store"
    token = re.search(r'value="(prv_[^"]+)"', r.text)
    assert token and users.authenticate(site.engine, token.group(1)).name == "mallory"
    # Never again: not on the users page, not in the redirect after another form.
    assert token.group(1) not in admin.get("/ui/users").text


def test_pages_hide_what_a_role_may_not_see(site: Site) -> None:
    operator = signed_in(site, "operator")
    page = operator.get(f"/ui/devices/{site.device_id}")
    assert page.status_code == 200 and SERIAL in page.text
    assert 'data-testid="device-timeline"' not in page.text
    assert "proof.json" not in page.text and "Audit timeline" not in page.text
    assert "/ui/ca/revoke" not in page.text  # no revoke link for an operator
    assert operator.get(f"/ui/devices/{site.device_id}/proof.json").status_code == 403

    auditor = signed_in(site, "auditor")
    page = auditor.get(f"/ui/devices/{site.device_id}")
    assert 'data-testid="device-timeline"' in page.text
    assert f"/ui/devices/{site.device_id}/proof.json" in page.text
    # The auditor's Line is a redirect to a page it may see, naming no chip.
    line = auditor.get("/ui/", follow_redirects=True)
    assert line.status_code == 200 and SERIAL not in line.text
    assert 'href="/ui/ca"' not in line.text and 'href="/ui/users"' not in line.text

    monitor = signed_in(site, "monitor")
    home = monitor.get("/ui/", follow_redirects=True)
    assert SERIAL not in home.text
    assert monitor.get(f"/ui/devices/{site.device_id}").status_code == 403

    admin = signed_in(site, "admin")
    listing = admin.get("/ui/users").text
    for token in site.tokens.values():
        assert token not in listing
        assert users.token_hash(token) not in listing


def test_security_headers_and_session_cookie(site: Site) -> None:
    client = TestClient(site.app, follow_redirects=False)
    form = client.get("/ui/signin")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert csrf
    r = client.post("/ui/signin", data={"token": site.tokens["auditor"], "csrf": csrf.group(1)})
    cookie = next(
        v for k, v in r.headers.multi_items() if k == "set-cookie" and "prov_session=" in v
    )
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    for path in ("/ui/audit", f"/ui/devices/{site.device_id}", "/ui/signin"):
        h = client.get(path).headers
        assert "default-src 'none'" in h["content-security-policy"], path
        assert "frame-ancestors 'none'" in h["content-security-policy"]
        assert h["x-content-type-options"] == "nosniff"
        assert h["x-frame-options"] == "DENY"
        assert h["cache-control"] == "no-store"


def test_a_revoked_token_ends_its_sessions_at_once(site: Site) -> None:
    token = users.add_user(site.engine, "otto", "operator", "admin:root")
    client = TestClient(site.app, follow_redirects=False)
    form = client.get("/ui/signin")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert csrf
    assert client.post("/ui/signin", data={"token": token, "csrf": csrf.group(1)}).is_redirect
    assert client.get(f"/ui/devices/{site.device_id}").status_code == 200
    users.revoke_tokens(site.engine, "otto", "admin:alice")
    r = client.get(f"/ui/devices/{site.device_id}")
    assert r.status_code == 303 and r.headers["location"].startswith("/ui/signin")


def test_sign_out_ends_the_session(site: Site) -> None:
    client = signed_in(site, "auditor")
    csrf = csrf_of(client)
    cookie = client.cookies.get("prov_session")
    assert cookie
    r = client.post("/ui/signout", data={"csrf": csrf})
    assert r.status_code == 303 and r.headers["location"] == "/ui/signin"
    assert client.get("/ui/audit").status_code == 303
    # The old cookie value itself is dead, not just forgotten by this browser.
    again = TestClient(site.app, follow_redirects=False, cookies={"prov_session": cookie})
    assert again.get("/ui/audit").status_code == 303


def test_auditors_download_the_standalone_verifier(site: Site) -> None:
    """The audit page hands out exactly the file the product checks with; operators get
    neither the link nor the file."""
    from provisioner.audit import verifier

    auditor = signed_in(site, "auditor")
    assert 'href="/ui/audit/verifier.py"' in auditor.get("/ui/audit").text
    r = auditor.get("/ui/audit/verifier.py")
    assert r.status_code == 200 and r.content == Path(verifier.__file__).read_bytes()
    assert "attachment" in r.headers["content-disposition"]
    assert signed_in(site, "operator").get("/ui/audit/verifier.py").status_code == 403


def test_numbers_beyond_64_bits_are_not_5xx(site: Site) -> None:
    """A page asked for a number the database cannot hold answers like any bad request:
    never a server error."""
    big = "9" * 25
    admin = signed_in(site, "admin")
    for url in (
        f"/ui/audit?after={big}",
        f"/ui/audit?batch={big}",
        f"/ui/audit?after=-{big}",
        f"/ui/batches/{big}",
        f"/ui/devices/{big}",
        f"/ui/devices/{big}/certificate.pem",
        f"/ui/devices/{big}/proof.json",
        f"/ui/devices?serial={big}",
        f"/ui/audit/export?batch={big}",
    ):
        r = admin.get(url)
        assert r.status_code < 500, (url, r.status_code, r.text[:300])
        assert len(r.text) < 200_000, url
