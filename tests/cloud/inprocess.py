"""The registry app in this process: on a TestClient (fast, for rule tests) or served by a
real uvicorn on a real port in a thread (for clients that open their own connections)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from provisioner.cloud import store
from provisioner.cloud.app import create_app
from provisioner.cloud.tokens import Role, token_hash

PROJECT, LOCATION, REGISTRY = "proj-1", "europe-west1", "devices"
PARENT = f"projects/{PROJECT}/locations/{LOCATION}"
REGISTRY_NAME = f"{PARENT}/registries/{REGISTRY}"
TOKENS = {Role.READER: "tok-reader", Role.WRITER: "tok-writer", Role.ADMIN: "tok-admin"}


@dataclass(frozen=True)
class Registry:
    app: FastAPI
    db_url: str


def make_registry(
    tmp: Path,
    bridge_token_hash: str | None = None,
    hook_allow: Sequence[str] = ("127.0.0.1/32", "::1/128"),
) -> Registry:
    """An app on a fresh SQLite database holding the empty registry ``REGISTRY``, with one
    token per role (``TOKENS``) and, if given, the bridge token's hash (the MQTT plugin's
    routes, and the token EMQX may send to the hooks)."""
    db_url = f"sqlite:///{tmp / 'registry.db'}"
    engine = store.open_store(db_url)
    store.ensure_registry(engine, PROJECT, LOCATION, REGISTRY)
    engine.dispose()
    roles = {token_hash(t): r for r, t in TOKENS.items()}
    return Registry(create_app(db_url, roles, bridge_token_hash, hook_allow), db_url)


@contextmanager
def served(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> Iterator[int]:
    """Serve ``app`` with uvicorn on ``host:port`` (0: a free port) in a thread; yields the
    port and stops the server afterwards."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "uvicorn did not start"
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
