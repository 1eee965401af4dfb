"""``python -m provisioner.registry``: run the built-in registry on the configured port."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import uvicorn

from provisioner.errors import ProvisionerError
from provisioner.registry import store
from provisioner.registry.app import create_app
from provisioner.registry.tokens import ensure_upload_token, read_token, token_hash
from provisioner.settings import load_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The built-in Cloud IoT v1-compatible registry.")
    parser.add_argument("--config", type=Path, default=None, help="TOML config file")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
        ensure_upload_token(settings.registry_token_file)
        hashes = {token_hash(read_token(settings.registry_token_file))}
        engine = store.open_store(settings.registry_db_url)
        r = settings.registry
        store.ensure_registry(engine, r.project, r.location, r.registry)
    except ProvisionerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    uvicorn.run(
        create_app(engine, hashes),
        host=r.listen_host,
        port=r.listen_port,
        log_level="warning",
        access_log=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
