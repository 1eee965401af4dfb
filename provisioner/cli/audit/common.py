"""What the ``provisioner audit`` commands share: the Typer app and the filter options."""

from __future__ import annotations

import typer

from provisioner.db.models import MAX_ID

app = typer.Typer(
    help="Query, export, verify and prove the tamper-evident audit trail.",
    no_args_is_help=True,
)

KEY_HELP = (
    "The audit public key (PEM) to check checkpoint signatures with; default the installed "
    "var/ca/audit-key.pem. An auditor passes the copy they pinned."
)

SERIAL = typer.Option(None, "--serial", help="Chip serial (hex, any case).")
BATCH = typer.Option(None, "--batch", min=1, max=MAX_ID, help="Batch id.")
STATION = typer.Option(None, "--station", help="Station id.")
ACTOR = typer.Option(None, "--actor", help="Actor, e.g. operator:alice or station:line1.")
TYPE = typer.Option(None, "--type", help="Event type, e.g. device.cert_issued; 'incident.*'.")
SINCE = typer.Option(None, "--since", help="From this UTC time (ISO 8601, inclusive).")
UNTIL = typer.Option(None, "--until", help="Before this UTC time (ISO 8601, exclusive).")
