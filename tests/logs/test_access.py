"""The API's access log: one JSON line per request, never a header, cookie or body."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from fastapi.testclient import TestClient

from provisioner.logs.access import AccessLogMiddleware
from provisioner.logs.setup import file_handler
from tests.logs.conftest import read_entries


@pytest.fixture
def access_log(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "api.log"
    logger = logging.getLogger("provisioner.access")
    handler = file_handler(path, "api")
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.INFO)
    yield path
    logger.removeHandler(handler)
    logger.setLevel(old)
    handler.close()


def _app() -> FastAPI:
    app = FastAPI()

    @app.get("/who")
    def who(request: Request) -> dict[str, str]:
        request.state.user = SimpleNamespace(name="olga", role="operator")
        return {"ok": "yes"}

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, int]:
        request.state.user = "ada"
        return {"n": len(await request.body())}

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("bug")

    @app.get("/stream")
    def stream() -> StreamingResponse:
        return StreamingResponse(iter([b"data: 1\n\n", b"data: 2\n\n"]), media_type="text/plain")

    app.add_middleware(AccessLogMiddleware)
    return app


def test_one_line_per_request_with_its_fields_and_nothing_secret(access_log: Path) -> None:
    token = "prv_" + "A" * 43
    client = TestClient(_app(), raise_server_exceptions=False)
    long_query = "&".join(f"k{i}=v" for i in range(100))
    assert client.get(f"/who?{long_query}", headers={"Authorization": f"Bearer {token}"}).is_success
    client.cookies.set("session", "sess-id-987654")
    assert client.post("/echo", content=b"secret body 1234").json() == {"n": 16}
    assert client.get("/boom").status_code == 500
    assert client.get("/stream").text == "data: 1\n\ndata: 2\n\n"
    assert client.get("/missing").status_code == 404

    who, echo, boom, stream, missing = read_entries(access_log)
    assert who["logger"] == "provisioner.access" and who["process"] == "api"
    assert who["method"] == "GET" and who["status"] == 200 and who["user"] == "olga"
    assert who["path"] == "/who?" + long_query[:200] + "..."
    assert who["client"] == "testclient"
    assert isinstance(who["duration_ms"], float) and who["duration_ms"] >= 0
    assert (echo["method"], echo["path"], echo["status"], echo["user"]) == (
        "POST",
        "/echo",
        200,
        "ada",
    )
    assert boom["status"] == 500 and "user" not in boom
    assert stream["status"] == 200
    assert missing["status"] == 404
    text = access_log.read_text()
    for secret in (token, "Bearer", "secret body", "sess-id-987654", "cookie", "authorization"):
        assert secret.lower() not in text.lower()
