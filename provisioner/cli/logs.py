"""``provisioner logs show``: the services' logs, in the human format or as JSON lines.

Reads ``<var>/log/<name>.log`` (and, for ``--lines``, its rotated files ``.log.1`` ...),
the files every long-running process writes (:mod:`provisioner.logs`); filters by the
fields each line carries. Access: action ``services.status`` (on a station PC, which has
no accounts, the OS user that can read the var dir).
"""

from __future__ import annotations

import json
from typing import Any

import typer

from provisioner.cli.context import ctx_of
from provisioner.logs import reader
from provisioner.logs.formats import human_line

app = typer.Typer(
    help="Read the services' structured logs (<var>/log/*.log: one JSON object per line).",
    no_args_is_help=True,
)

_LEVELS = ("debug", "info", "warning", "error", "critical")


@app.command("show")
def show(
    ctx: typer.Context,
    names: list[str] = typer.Argument(
        None,
        help="Processes to read (file names without .log): supervisor, api, registry, "
        "worker-hsm, worker-registry, gateway-<station>, worker-station-<station>. "
        "Default: all of them.",
    ),
    lines: int = typer.Option(
        50, "--lines", "-n", min=0, help="How many of the last matching lines to show."
    ),
    follow: bool = typer.Option(
        False, "--follow", "-f", help="Keep showing new lines as they come (Ctrl-C stops)."
    ),
    device: int | None = typer.Option(None, "--device", help="Only lines about this device id."),
    batch: int | None = typer.Option(None, "--batch", help="Only lines about this batch id."),
    station: str | None = typer.Option(None, "--station", help="Only lines about this station."),
    level: str | None = typer.Option(
        None, "--level", help="Only lines at this level and above: debug, info, warning, error."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the raw JSON lines (for jq)."),
) -> None:
    """Show the last lines of the services' logs (<var>/log), merged by time, newest last.

    Each line: time (UTC), level, process and pid, logger: message, then its fields
    (batch, device, chip_serial, station, socket; for requests method, path, status,
    duration_ms, client, user) and any traceback.

    Examples:

    provisioner logs show --device 42   (its socket's steps, the signer, the uploader)

    provisioner logs show worker-hsm --level warning -n 200

    provisioner logs show -f --station line1

    provisioner logs show api --json | jq -c 'select(.status >= 400)'
    """
    c = ctx_of(ctx)
    if c.settings.role != "station":  # a station PC has no accounts (like services status)
        c.require("services.status")
    if level is not None and level.lower() not in _LEVELS:
        raise typer.BadParameter(f"{level!r}: expected one of {', '.join(_LEVELS)}")
    log_dir = c.settings.var / "log"
    wanted = reader.check_names(log_dir, list(names or []))
    keep = reader.Filter(
        device=None if device is None else str(device),
        batch=None if batch is None else str(batch),
        station=station,
        level=level,
    )
    start = reader.positions(log_dir, wanted)
    for entry in reader.last(log_dir, wanted, lines, keep):
        _print(entry, as_json)
    if follow:
        try:
            for entry in reader.follow(log_dir, wanted, keep, start):
                _print(entry, as_json)
        except KeyboardInterrupt:
            raise typer.Exit(0) from None


def _print(entry: dict[str, Any], as_json: bool) -> None:
    typer.echo(json.dumps(entry, ensure_ascii=False) if as_json else human_line(entry))
