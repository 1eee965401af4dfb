"""``python -m provisioner.api [--config FILE]``: serve CRLs and CA certificates over HTTP."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from provisioner.api.app import main


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m provisioner.api",
        description="The provisioner's public PKI endpoints: /crl/<name>.crl, /ca/<name>.pem.",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="TOML config file (default: $PROVISIONER_CONFIG or ./provisioner.toml)",
    )
    return main(parser.parse_args(argv).config)


if __name__ == "__main__":
    sys.exit(cli())
