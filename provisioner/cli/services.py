"""``provisioner services run`` and ``provisioner demo``: the station's processes."""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from provisioner import batches
from provisioner.audit import chain
from provisioner.audit.checkpointer import load_audit_key
from provisioner.audit.verify import verify_log
from provisioner.auth import users
from provisioner.cli.batch import start_batch
from provisioner.cli.context import CliContext, ctx_of
from provisioner.cli.secret_files import write_new_secret
from provisioner.cli.view import devices_table, duration_text, summary_view
from provisioner.db.engine import transaction
from provisioner.db.models import AuditCheckpoint, AuditEvent, ServiceHealth
from provisioner.errors import ConfigError
from provisioner.settings import Settings
from provisioner.supervisor import running_services, say
from provisioner.supervisor_lock import running_holder
from provisioner.supervisor_status import read_status

app = typer.Typer(
    help="Run the station's services (Redis, registry, workers).", no_args_is_help=True
)


@app.command("run")
def run(
    ctx: typer.Context,
    station: list[str] = typer.Option(
        None,
        "--station",
        "-s",
        help="Role all: the station(s) to run (default: all configured). Role station: "
        "which station this PC is (default: the setting station_id).",
    ),
    role: str = typer.Option(
        None,
        "--role",
        help="What this PC runs (default: the setting `role`, else all). line: the line "
        "server (Redis with ACL users, registry, API, signer, uploader, one gateway per "
        "enrolled station). station: this PC's station worker only; it needs no database "
        "and no PIN, only its enrolled identity (`provisioner station enroll`). all: both "
        "on one PC (the demo).",
    ),
) -> None:
    """Start this PC's services in the foreground and keep them running (a crashed one is
    restarted); Ctrl-C (or SIGTERM) stops them all. One per var dir: a second one refuses.
    See docs/deploy.md for a line server with station PCs."""
    c = ctx_of(ctx)
    role = role or c.settings.role
    if role not in ("all", "line", "station"):
        raise typer.BadParameter(f"{role!r}: expected line, station or all", param_hint="--role")
    if role == "station":
        # A station PC has no database and no users: the OS account that runs it is the
        # authority here; what it may do on the line is the line server's to check.
        sid = (station[0] if station else None) or c.settings.station_id
        if not sid or (station and len(station) > 1):
            raise typer.BadParameter(
                "a station PC runs exactly one station: --station ID or the setting station_id",
                param_hint="--station",
            )
        c.settings.station(sid)
        settings = c.settings.model_copy(update={"station_id": sid, "role": "station"})
        _check_enrolled(settings, sid)
        stations = [sid]
    else:
        c.require("services.run")
        settings = c.settings
        stations = (station or sorted(c.settings.stations)) if role == "all" else []
        for s in stations:
            c.settings.station(s)
    try:
        with running_services(settings, stations, c.config, role=role) as sup:
            typer.echo(
                f"services running ({', '.join(ch.name for ch in sup.children)}); "
                f"logs in {sup.log_dir}; `provisioner services status` shows them. "
                "Ctrl-C stops them."
            )
            if role != "station" and settings.web.enabled:
                typer.echo(f"dashboard: {dashboard_url(sup.settings)} (sign in with a user token)")
            try:
                while True:
                    time.sleep(1)
            except KeyboardInterrupt:
                say("stopping services ...")
    except KeyboardInterrupt:
        say("services stopped")
        raise typer.Exit(130) from None
    say("services stopped")


def _check_enrolled(settings: Settings, station_id: str) -> None:
    """A station PC starts only with its identity (else its worker could not even log in
    to the broker, and would die over and over)."""
    from provisioner.enrollment.identity import StationIdentityFiles

    files = StationIdentityFiles.of(settings)
    if not files.exists():
        raise ConfigError(
            f"station {station_id} is not enrolled ({files.dir} holds no identity): on the "
            f"line server run `provisioner station add {station_id}`, then here "
            "`provisioner station enroll --token-file FILE`"
        )


@app.command("status")
def status(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Whether the services of this var dir run: each component's pid, state, uptime and
    restarts, and whether the signer and the registry answer (checked every 15 s)."""
    c = ctx_of(ctx)
    station_pc = c.settings.role == "station"  # no database and no accounts on a station PC
    if not station_pc:
        c.require("services.status")
    run_dir = c.settings.var / "run"
    holder = running_holder(run_dir)
    if holder is None:
        if as_json:
            typer.echo(json.dumps({"running": False}))
        else:
            typer.echo(f"services not running (var dir {c.settings.var})")
        return
    now = time.time()
    _, comps = read_status(run_dir) or ({}, [])
    health: list[ServiceHealth] = []
    if not station_pc:  # the line's view of the signer and the registry
        with Session(c.engine) as s:
            health = list(s.exec(select(ServiceHealth).order_by(col(ServiceHealth.name))).all())
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "running": True,
                    "supervisor": {"pid": holder.pid, "since": holder.started_at},
                    "components": [
                        {**asdict(x), "uptime_s": round(x.uptime_s(now), 1)} for x in comps
                    ],
                    "health": [
                        {
                            "name": h.name,
                            "up": h.up,
                            "since": h.since.isoformat(),
                            "checked_at": h.checked_at.isoformat(),
                            "detail": h.detail,
                        }
                        for h in health
                    ],
                }
            )
        )
        return
    console = Console()
    console.print(f"services running: supervisor {holder.describe()}")
    table = Table("component", "pid", "state", "uptime", "restarts", "last exit")
    for x in comps:
        colour = {"running": "green", "restarting": "yellow"}.get(x.state, "red")
        table.add_row(
            x.name,
            str(x.pid),
            f"[{colour}]{x.state}[/]",
            duration_text(x.uptime_s(now)) if x.state == "running" else "-",
            str(x.restarts),
            "-" if x.last_exit is None else str(x.last_exit),
        )
    console.print(table)
    if health:
        ht = Table("service", "state", "since", "checked", "detail")
        for h in health:
            ht.add_row(
                h.name,
                "[green]up[/]" if h.up else "[red]down[/]",
                h.since.strftime("%Y-%m-%d %H:%M:%S"),
                h.checked_at.strftime("%H:%M:%S"),
                h.detail or "",
            )
        console.print(ht)


def wait_for_checkpoint(engine: Engine, batch_id: int, timeout_s: float) -> int | None:
    """The size of the first checkpoint covering the batch's end (the signer worker
    writes one within ``audit.poll_s``), or None after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        with Session(engine) as s:
            end = s.exec(
                select(func.max(AuditEvent.seq)).where(
                    AuditEvent.event_type == "batch.finished", AuditEvent.batch_id == batch_id
                )
            ).one()
            size = s.exec(select(func.max(AuditCheckpoint.size))).one()
        if end is not None and size is not None and size >= end:
            return int(size)
        if time.monotonic() > deadline:
            return None
        time.sleep(0.2)


def dashboard_url(settings: Settings) -> str:
    return settings.api.effective_url.rstrip("/") + "/ui/"


def demo_admin(c: CliContext) -> Path | None:
    """A fresh install has nobody who could sign in to the dashboard. Like a first-run admin
    password, the demo then makes the first admin, ``admin``, and writes its token to
    ``<var>/admin.token`` (0600; audited as any new user). From then on the CLI wants that
    token too (``--token-file`` or ``PROVISIONER_TOKEN_FILE``). None when accounts exist."""
    if users.has_users(c.engine):
        return None
    path = c.settings.var / "admin.token"
    path.unlink(missing_ok=True)  # no account exists: a token file left here is dead
    write_new_secret(path, users.add_user(c.engine, "admin", "admin", c.actor))
    return path


def demo(
    ctx: typer.Context,
    count: int = typer.Option(16, "--count", "-n", help="Chips in the demo batch."),
    station: str = typer.Option("line1", "--station", "-s", help="Station id."),
    timeout: float = typer.Option(600.0, help="Seconds to wait for the batch."),
    stay: bool = typer.Option(
        False,
        "--stay",
        help="Keep the services (and the dashboard) running after the batch, until Ctrl-C.",
    ),
) -> None:
    """Provision one batch of emulated chips end to end on embedded defaults.

    Creates the dev CA if absent, starts Redis, the registry, the API with the dashboard and
    the workers, runs the batch with a progress bar (watch it in the browser at the address
    printed), prints the result table and the audit verification, and stops every service
    again (also on Ctrl-C; with --stay only on Ctrl-C). On a fresh install it creates the
    first admin, whose token (in <var>/admin.token) signs in to the dashboard. Run it again
    for a new batch of new chips."""
    from provisioner.ca.ceremony import init_ca

    c = ctx_of(ctx)
    c.require("demo.run")
    console = Console()
    batches.validate_request(c.settings, station_id=station, count=count)
    info = init_ca(c.settings)
    console.print(
        ("[green]CA created[/]" if info.created else "CA present")
        + f": {info.intermediate_subject} (SHA-256 {info.intermediate_fingerprint_sha256[:16]}…)"
    )
    if info.created:
        with transaction(c.engine) as s:
            chain.append(
                s,
                "ca.initialised",
                actor=c.actor,
                payload={"intermediate_fingerprint_sha256": info.intermediate_fingerprint_sha256},
            )
    batch_id = None
    try:
        with running_services(
            c.settings, [station], c.config, move_taken_ports=True, on_ports_moved=console.print
        ) as sup:
            console.print(
                "services started: redis, registry, api, workers (hsm, registry, "
                f"station {station} x{c.settings.station(station).sockets} sockets)"
            )
            admin_token = demo_admin(c)  # under the lock: a refused second demo makes none
            if admin_token is not None:
                console.print(
                    f"first admin [bold]admin[/] created; its token is in {admin_token} "
                    "(0600): sign in to the dashboard with it, and for the CLI from now on "
                    f"export PROVISIONER_TOKEN_FILE={admin_token}"
                )
            if c.settings.web.enabled:
                console.print(f"dashboard: [bold]{dashboard_url(sup.settings)}[/]")
            batch_id = batches.create_batch(
                c.engine, c.settings, station_id=station, count=count, actor=c.actor
            )
            start_batch(c, batch_id, console, wait=True, timeout_s=timeout)
            rep = batches.report(c.engine, batch_id)
            console.print(devices_table(rep))
            console.print(summary_view(rep))
            size = wait_for_checkpoint(c.engine, batch_id, timeout_s=30)
            console.print(
                f"audit checkpoint signed by the HSM audit key at size {size}"
                if size
                else "[yellow]no audit checkpoint covers the batch end yet[/]"
            )
            # One provisioned chip goes into the field: chip-signed JWT, the MQTT bridge.
            from provisioner.field.demo import run_field_demo

            field_ok = run_field_demo(sup.settings, c.engine, batch_id, station, console.print)
            if stay:
                console.print(
                    f"services stay up: dashboard at {dashboard_url(sup.settings)}; "
                    "Ctrl-C stops them"
                )
                with contextlib.suppress(KeyboardInterrupt):
                    while True:
                        time.sleep(1)
        console.print("services stopped")
    except KeyboardInterrupt:
        console.print(
            "[yellow]interrupted[/]: services stopped"
            + (f"; resume with `provisioner batch start {batch_id}`" if batch_id else "")
        )
        raise typer.Exit(130) from None
    with transaction(c.engine) as s:
        res = verify_log(s, load_audit_key(c.settings))
    if res.ok:
        console.print(
            f"[green]audit trail intact[/]: {res.events} events verified, "
            f"{res.checkpoints} signed checkpoints match"
        )
    else:
        console.print(f"[red]audit trail broken at event {res.first_bad_seq}[/]: {res.reason}")
    ok = res.ok and rep.done == rep.count and field_ok
    console.print(
        f"[{'green' if ok else 'red'}]batch {batch_id}: {rep.done}/{rep.count} "
        f"devices provisioned[/]"
    )
    if not ok:
        raise typer.Exit(1)
