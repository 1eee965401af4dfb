"""Rendering for operators: progress while a batch runs, its summary, and device pages."""

from __future__ import annotations

import time

from rich.console import Console, Group, RenderableType
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text
from sqlalchemy.engine import Engine

from provisioner.batches import BatchReport, summary
from provisioner.db.models import BatchState, PartAction

# What the operator does with the part of a failed device, in the words of the floor.
PART_ACTION_TEXT: dict[str, str] = {
    PartAction.REJECT: "put the part in the reject bin",
    PartAction.REINSERT: "take the part out and re-insert it, then retry",
    PartAction.WAIT: "leave the part in its socket: it resumes when the service is back",
}


def part_action_text(action: str | None) -> str:
    return PART_ACTION_TEXT.get(action or "", "see the reason")


def watch(
    engine: Engine, batch_id: int, console: Console, *, timeout_s: float, poll_s: float = 0.5
) -> BatchReport:
    """Show a progress bar until the batch settles (or pauses, or ends) or ``timeout_s``
    passes. Each poll is the summary only: a few aggregate queries whatever the size."""
    rep = summary(engine, batch_id, live=False)
    deadline = time.monotonic() + timeout_s
    with Progress(
        TextColumn("[bold]batch {task.fields[batch]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as bar:
        task = bar.add_task("", total=rep.count, batch=batch_id, detail="")
        while True:
            rep = summary(engine, batch_id, live=False)
            busy = ", ".join(
                f"{k.lower()} {v}" for k, v in sorted(rep.steps.items()) if k != "DONE"
            )
            detail = busy + (f" | [red]failed {rep.failed}" if rep.failed else "")
            if rep.uploads_parked:
                detail += f" | [yellow]uploads parked {rep.uploads_parked}"
            if rep.state != "running":
                detail += f" | {rep.state}"
            bar.update(task, completed=rep.done, detail=detail)
            if rep.settled or time.monotonic() > deadline:
                return rep
            time.sleep(poll_s)


def duration_text(seconds: float) -> str:
    """A duration as a person reads it on a screen: 45 s, 12 min, 3 h 5 min."""
    seconds = int(seconds)
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def summary_view(rep: BatchReport) -> RenderableType:
    """The batch in a few lines: counts, steps, uploads, throughput, failures by reason with
    what to do with the parts, the station's sockets, the services, and the next action."""
    lines: list[RenderableType] = []
    head = Text.assemble(
        (f"batch {rep.id}", "bold"),
        f" on {rep.station_id}: ",
        (rep.state, "bold green" if rep.state == "finished" else "bold"),
        f" — {rep.done}/{rep.count} done",
    )
    for n, what, style in (
        (rep.failed, "failed", "red"),
        (rep.in_flight, "in sockets", ""),
        (rep.cancelled, "released by cancel", "yellow"),
        (rep.revoked, "revoked", "magenta"),
    ):
        if n:
            head.append(f", {n} {what}", style)
    lines.append(head)
    steps = ", ".join(f"{k.lower()} {v}" for k, v in rep.steps.items())
    lines.append(Text(f"steps: {steps}"))
    uploads = (
        f"uploads pending {rep.uploads_pending}, parked {rep.uploads_parked}, "
        f"conflict {rep.uploads_conflict}"
    )
    if rep.mode == "preprovisioned":  # no quota: our CA issues nothing for such parts
        lines.append(Text(f"certificates: the parts' own ({rep.part}), none issued; {uploads}"))
    else:
        lines.append(Text(f"quota: {rep.issued} of {rep.quota} certificates issued; {uploads}"))
    if rep.per_hour:
        eta = f", about {duration_text(rep.eta_s)} to go" if rep.eta_s is not None else ""
        over = "over its run" if BatchState(rep.state).ended else "last 10 min"
        lines.append(Text(f"throughput: {rep.per_hour:,.0f} devices/h ({over}){eta}"))
    if rep.failures:
        t = Table(title="failures by reason", title_justify="left")
        for c in ("devices", "reason", "what to do with the part"):
            t.add_column(c)
        for f in rep.failures:
            t.add_row(str(f.count), f.reason, part_action_text(f.action))
        lines.append(t)
    if rep.sockets:
        t = Table(title=f"station {rep.station_id}", title_justify="left")
        for c in ("socket", "state", "device", "chip", "detail"):
            t.add_column(c)
        for sk in rep.sockets:
            t.add_row(
                str(sk["socket"]),
                str(sk["state"]).replace("_", " "),
                str(sk["device_id"] or ""),
                str(sk["chip_serial"] or ""),
                str(sk["detail"] or ""),
            )
        lines.append(t)
    down = [s for s in rep.services if not s["up"]]
    for svc in down:
        lines.append(
            Text(f"{svc['name']} is not answering since {svc['since']}: {svc['detail']}", "red")
        )
    hint = next_action(rep)
    if hint:
        lines.append(Text(hint, "bold"))
    return Group(*lines)


def next_action(rep: BatchReport) -> str | None:
    """What the operator can do next, if anything."""
    b = rep.id
    if rep.state == "created":
        return f"start it: provisioner batch start {b}"
    if rep.state == "paused":
        return f"paused: provisioner batch resume {b} (or cancel {b})"
    if rep.state == "running" and rep.failed and rep.remaining == 0 and not rep.in_flight:
        return (
            f"{rep.failed} failed: see `provisioner batch status {b} --failed`, then "
            f"`provisioner batch retry {b}` or end it with `provisioner batch close {b}`"
        )
    return None


def devices_table(rep: BatchReport, title: str | None = None) -> Table:
    t = Table(title=title or f"batch {rep.id} on {rep.station_id}: {rep.state}")
    for col in ("#", "device", "serial", "certificate SHA-256", "registry device", "state"):
        t.add_column(col)
    for d in rep.devices:
        state = d.status if d.status != "failed" else f"[red]{d.step.lower()}: {d.error}"
        if d.status == "failed":
            state += f"[/] → {part_action_text(d.action)}"
        if d.upload in ("parked", "conflict") and d.error is None:
            state = f"[yellow]{state}, upload {d.upload}"
        reg = f"{d.registry_device_id} ({d.num_id})" if d.num_id else (d.registry_device_id or "")
        fp = (d.fingerprint_sha256 or "")[:16] + ("…" if d.fingerprint_sha256 else "")
        t.add_row(str(d.position), str(d.device_id), d.chip_serial or "", fp, reg, state)
    return t


def batches_table(reps: list[BatchReport]) -> Table:
    t = Table(title="batches")
    for col in ("id", "station", "state", "done", "failed", "uploads pending/parked", "created"):
        t.add_column(col)
    for r in reps:
        t.add_row(
            str(r.id),
            r.station_id,
            r.state,
            f"{r.done}/{r.count}",
            str(r.failed),
            f"{r.uploads_pending}/{r.uploads_parked}",
            r.created_at.strftime("%Y-%m-%d %H:%M:%S"),
        )
    return t
