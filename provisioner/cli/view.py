"""Rendering for operators: progress while a batch runs, and the batch tables."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy.engine import Engine

from provisioner.batches import BatchReport, report


def settled(rep: BatchReport) -> bool:
    """Every device is done, failed at the station, or waiting in a parked upload (the
    periodic sync finishes those; watching longer would not)."""
    return rep.state == "finished" or all(
        d.step == "DONE" or d.error is not None or d.upload == "parked" for d in rep.devices
    )


def watch(
    engine: Engine, batch_id: int, console: Console, *, timeout_s: float, poll_s: float = 0.3
) -> BatchReport:
    """Show a progress bar until the batch settles or ``timeout_s`` passes."""
    rep = report(engine, batch_id)
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
            rep = report(engine, batch_id)
            busy = ", ".join(
                f"{k.lower()} {v}" for k, v in sorted(rep.steps.items()) if k != "DONE"
            )
            detail = busy + (f" | [red]failed {rep.failed}" if rep.failed else "")
            if rep.uploads_parked:
                detail += f" | [yellow]uploads parked {rep.uploads_parked}"
            bar.update(task, completed=rep.done, detail=detail)
            if settled(rep) or time.monotonic() > deadline:
                return rep
            time.sleep(poll_s)


def devices_table(rep: BatchReport) -> Table:
    t = Table(title=f"batch {rep.id} on {rep.station_id}: {rep.state}")
    for col in ("#", "serial", "certificate SHA-256", "registry device", "state"):
        t.add_column(col)
    for d in rep.devices:
        state = d.step.lower() if d.error is None else f"[red]{d.step.lower()}: {d.error}"
        if d.upload in ("parked", "conflict") and d.error is None:
            state = f"[yellow]{state}, upload {d.upload}"
        reg = f"{d.registry_device_id} ({d.num_id})" if d.num_id else (d.registry_device_id or "")
        fp = (d.fingerprint_sha256 or "")[:16] + ("…" if d.fingerprint_sha256 else "")
        t.add_row(str(d.position), d.chip_serial or "", fp, reg, state)
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
