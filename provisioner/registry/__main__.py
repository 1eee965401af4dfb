"""``python -m provisioner.registry [--config FILE]``: run the built-in registry service."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from provisioner.registry.server import main


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m provisioner.registry",
        description="The built-in Cloud IoT v1-compatible device registry (HTTP).",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="TOML config file (default: $PROVISIONER_CONFIG or ./provisioner.toml)",
    )
    args = parser.parse_args(argv)
    return main(args.config)


if __name__ == "__main__":
    sys.exit(cli())
