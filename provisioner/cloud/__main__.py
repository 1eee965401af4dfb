"""``python -m provisioner.cloud [--config FILE] [add-token ROLE]``: run the built-in
registry service, or mint a token of a role (reader, writer, admin) for it.

``add-token`` prints the new token once on stdout and keeps only its hash (in
``tokens.sha256`` beside the upload token); a running server reads it at its next start.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from provisioner.cloud.server import main
from provisioner.cloud.tokens import Role, add_token, hashed_tokens_file
from provisioner.errors import ProvisionerError
from provisioner.private_files import private_umask
from provisioner.settings import load_settings


def _add_token(config: Path | None, role: str) -> int:
    try:
        path = hashed_tokens_file(load_settings(config).registry_token_file)
        print(add_token(path, Role.parse(role)))
    except ProvisionerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m provisioner.cloud",
        description="The built-in Cloud IoT v1-compatible device registry (HTTP).",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="TOML config file (default: $PROVISIONER_CONFIG or ./provisioner.toml)",
    )
    sub = parser.add_subparsers(dest="command")
    mint = sub.add_parser("add-token", help="mint a token of ROLE and print it once")
    mint.add_argument("role", choices=[r.name.lower() for r in Role])
    args = parser.parse_args(argv)
    private_umask()  # add-token appends to the token hashes: keep the file private
    if args.command == "add-token":
        return _add_token(args.config, args.role)
    return main(args.config)


if __name__ == "__main__":
    sys.exit(cli())
