"""The admin's pages: the CA (chain, key URIs, CRLs; rotate, revoke) and the users.

Every change goes through a server-side confirmation page: a GET shows what will happen,
and only the POST from it (with the session's CSRF token) does it, through the same calls
as the CLI (:mod:`provisioner.ca.operations`, :mod:`provisioner.auth.users`). The PIN the
CA operations need comes from the configured PIN file, read by this process like the
station enrollment route does; it is never typed into a page. A new user's token is shown
once, on the answer to the form that created it: never in a redirect, a URL or a message.
"""

# No "from __future__ import annotations": FastAPI must see the Depends(ctx.guard...)
# annotations as objects, and ctx is local to router().

from collections import defaultdict
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Path, Request
from fastapi.responses import Response
from sqlmodel import Session, col, select

from provisioner.auth import users
from provisioner.auth.roles import Role
from provisioner.ca import operations
from provisioner.ca.overview import ca_overview
from provisioner.ca.revocation import REASONS
from provisioner.db.models import ApiToken
from provisioner.errors import ConfigError, ProvisionerError
from provisioner.web.context import ERROR, WebContext
from provisioner.web.sessions import WebUser

ROLES = tuple(r.value for r in Role)
UserName = Annotated[str, Path(max_length=64)]


def _tokens(ctx: WebContext) -> dict[str, list[ApiToken]]:
    """Each user's tokens: label, created and revoked times only (never a hash)."""
    out: dict[str, list[ApiToken]] = defaultdict(list)
    with Session(ctx.engine) as s:
        for t in s.exec(select(ApiToken).order_by(col(ApiToken.id))).all():
            out[t.user_name].append(t)
    return out


def _ca_routes(ctx: WebContext, r: APIRouter) -> None:
    shower = ctx.guard.page("ca.show")
    rotate_page = ctx.guard.page("ca.rotate")
    rotate_form = ctx.guard.form("ca.rotate")
    revoke_page = ctx.guard.page("ca.revoke")
    revoke_form = ctx.guard.form("ca.revoke")

    @r.get("/ca")
    def ca(request: Request, user: Annotated[WebUser, Depends(shower)]) -> Response:
        return ctx.pages.page(
            request,
            "ca.html",
            user,
            ca=ca_overview(ctx.settings),
            crls=operations.crl_statuses(ctx.settings),
            reasons=tuple(REASONS),
        )

    @r.get("/ca/rotate")
    def rotate_confirm(
        request: Request, user: Annotated[WebUser, Depends(rotate_page)]
    ) -> Response:
        return ctx.pages.page(
            request,
            "ca_rotate.html",
            user,
            ca=ca_overview(ctx.settings),
            running=operations.running_batches(ctx.engine),
        )

    @r.post("/ca/rotate")
    def rotate(user: Annotated[WebUser, Depends(rotate_form)]) -> Response:
        def act() -> str:
            info = operations.rotate(ctx.settings, ctx.engine, user.actor)
            return (
                f"new intermediate {info.intermediate_name!r} is current "
                f"(SHA-256 {info.intermediate_fingerprint_sha256}); the signer switches to it "
                "by itself"
            )

        return ctx.attempt(user, "/ui/ca", act)

    @r.get("/ca/revoke")
    def revoke_confirm(
        request: Request,
        user: Annotated[WebUser, Depends(revoke_page)],
        target: str = "",
        reason: str = "unspecified",
    ) -> Response:
        target, reason = target.strip()[:80], reason.strip()[:40]
        try:
            if not target:
                raise ConfigError("give a device id, a chip serial or a certificate serial")
            if reason not in REASONS:
                raise ConfigError(f"unknown revocation reason {reason!r}")
            found = operations.revoke_target(ctx.engine, target)
        except ProvisionerError as exc:
            return ctx.redirect(user, "/ui/ca", str(exc), ERROR)
        return ctx.pages.page(
            request, "ca_revoke.html", user, target=target, reason=reason, found=found
        )

    @r.post("/ca/revoke")
    def revoke(
        user: Annotated[WebUser, Depends(revoke_form)],
        target: Annotated[str, Form(max_length=80)] = "",
        reason: Annotated[str, Form(max_length=40)] = "",
    ) -> Response:
        def act() -> str:
            done = operations.revoke(ctx.settings, ctx.engine, target, reason, user.actor)
            rev = done.revoked
            verb = "was already revoked" if rev.already else "revoked"
            crls = ", ".join(f"{p.name} #{p.number} ({p.entries} revoked)" for p in done.crls)
            return (
                f"certificate {rev.serial_number} (chip {rev.chip_serial}) {verb}: "
                f"{rev.reason}. Registry: {done.block.detail}. CRLs published: {crls}"
            )

        return ctx.attempt(user, "/ui/ca", act)


def _users_routes(ctx: WebContext, r: APIRouter) -> None:
    reader = ctx.guard.page("users.read")
    manage_page = ctx.guard.page("users.manage")
    manage_form = ctx.guard.form("users.manage")

    def users_page(request: Request, user: WebUser, **extra: Any) -> Response:
        return ctx.pages.page(
            request,
            "users.html",
            user,
            users=users.list_users(ctx.engine),
            tokens=_tokens(ctx),
            roles=ROLES,
            **extra,
        )

    @r.get("/users")
    def users_list(request: Request, user: Annotated[WebUser, Depends(reader)]) -> Response:
        return users_page(request, user)

    @r.post("/users")
    def add_user(
        request: Request,
        user: Annotated[WebUser, Depends(manage_form)],
        name: Annotated[str, Form(max_length=64)] = "",
        role: Annotated[str, Form(max_length=16)] = "",
    ) -> Response:
        name = name.strip()
        try:
            token = users.add_user(ctx.engine, name, role, user.actor)
        except ProvisionerError as exc:
            return ctx.redirect(user, "/ui/users", str(exc), ERROR)
        # The one time the token is shown: on this answer only (no-store), never in a
        # redirect, a URL or a flash message. The server keeps only its hash.
        resp = ctx.pages.page(
            request, "users_created.html", user, name=name, role=role, token=token
        )
        resp.headers["Cache-Control"] = "no-store"
        return resp

    @r.get("/users/{name}/revoke")
    def revoke_confirm(
        request: Request, name: UserName, user: Annotated[WebUser, Depends(manage_page)]
    ) -> Response:
        who = {u.name: u for u in users.list_users(ctx.engine)}.get(name)
        if who is None:
            return ctx.redirect(user, "/ui/users", f"user {name!r} does not exist", ERROR)
        return ctx.pages.page(request, "users_revoke.html", user, who=who, myself=name == user.name)

    @r.post("/users/{name}/revoke")
    def revoke(name: UserName, user: Annotated[WebUser, Depends(manage_form)]) -> Response:
        def act() -> str:
            n = users.revoke_tokens(ctx.engine, name, user.actor)
            return f"{n} token(s) of {name} revoked: their sessions have ended"

        return ctx.attempt(user, "/ui/users", act)

    @r.get("/users/{name}/role")
    def role_confirm(
        request: Request,
        name: UserName,
        user: Annotated[WebUser, Depends(manage_page)],
        role: str = "",
    ) -> Response:
        who = {u.name: u for u in users.list_users(ctx.engine)}.get(name)
        if who is None:
            return ctx.redirect(user, "/ui/users", f"user {name!r} does not exist", ERROR)
        if role not in ROLES:
            return ctx.redirect(user, "/ui/users", f"unknown role {role[:20]!r}", ERROR)
        return ctx.pages.page(request, "users_role.html", user, who=who, role=role)

    @r.post("/users/{name}/role")
    def set_role(
        name: UserName,
        user: Annotated[WebUser, Depends(manage_form)],
        role: Annotated[str, Form(max_length=16)] = "",
    ) -> Response:
        def act() -> str:
            old = users.set_role(ctx.engine, name, role, user.actor)
            if old == role:
                return f"{name} already has role {role}: nothing changed"
            return f"{name} is now {role} (was {old})"

        return ctx.attempt(user, "/ui/users", act)


def router(ctx: WebContext) -> APIRouter:
    r = APIRouter(prefix="/ui", include_in_schema=False)
    _ca_routes(ctx, r)
    _users_routes(ctx, r)
    return r
