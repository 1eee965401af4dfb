"""The ``provisioner`` command line (Typer)."""
