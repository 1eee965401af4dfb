"""A fault-injecting HTTP proxy in front of a real registry, for tests.

Each request (one per connection: every answer says ``Connection: close``) either passes
through or, with probability ``rate``, meets one fault, chosen by a seeded RNG:

- ``429``: RESOURCE_EXHAUSTED without reaching the registry;
- ``500``: INTERNAL without reaching the registry;
- ``500-after``: forwarded (the registry acts on it), then answered with 500;
- ``hang``: held past the client's timeout, then forwarded (it lands late);
- ``reset``: the connection is closed without an answer;
- ``lost``: forwarded, then the connection is closed without an answer (the client cannot
  know the device was created).

``stop()``/``start()`` in between make the port refuse connections (a dead registry).
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
from collections import Counter
from dataclasses import dataclass, field

import httpx

FAULTS = ("429", "500", "500-after", "hang", "reset", "lost")


@dataclass
class FaultProxy:
    upstream: str  # http://127.0.0.1:PORT of the real registry
    port: int
    rate: float = 0.3
    hang_s: float = 2.0
    seed: int = 5
    counts: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    # --- control (from the test's thread) ----------------------------------------------

    def start(self) -> None:
        fut = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        fut.result(10)

    def stop(self) -> None:
        fut = asyncio.run_coroutine_threadsafe(self._stop(), self._loop)
        fut.result(10)

    def close(self) -> None:
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _start(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    # --- one request -------------------------------------------------------------------

    def _pick(self) -> str:
        with self._lock:
            fault = self._rng.choice(FAULTS) if self._rng.random() < self.rate else "pass"
            self.counts[fault] += 1
            return fault

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = dict(
                (k.strip(), v.strip()) for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)
            )
            length = int(next((v for k, v in headers.items() if k.lower() == "content-length"), 0))
            body = await reader.readexactly(length) if length else b""
            fault = self._pick()
            if fault == "reset":
                return
            if fault in ("429", "500"):
                code = 429 if fault == "429" else 500
                status = "RESOURCE_EXHAUSTED" if code == 429 else "INTERNAL"
                await self._answer(writer, code, {"error": {"code": code, "status": status}})
                return
            if fault == "hang":
                await asyncio.sleep(self.hang_s)
            resp = await self._forward(method, target, headers, body)
            if fault in ("lost", "hang"):
                return
            if fault == "500-after":
                await self._answer(writer, 500, {"error": {"code": 500, "status": "INTERNAL"}})
                return
            await self._raw(writer, resp.status_code, resp.content, resp.headers)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    async def _forward(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> httpx.Response:
        keep = {
            k: v
            for k, v in headers.items()
            if k.lower() in ("authorization", "content-type") or k.lower().startswith("x-amz")
        }
        async with httpx.AsyncClient(base_url=self.upstream, timeout=30) as c:
            return await c.request(method, target, headers=keep, content=body)

    async def _answer(self, writer: asyncio.StreamWriter, code: int, doc: object) -> None:
        await self._raw(
            writer, code, json.dumps(doc).encode(), {"content-type": "application/json"}
        )

    async def _raw(
        self, writer: asyncio.StreamWriter, code: int, body: bytes, headers: object
    ) -> None:
        given = dict(headers)  # type: ignore[call-overload]
        ctype = given.get("content-type", "application/json")
        # AWS names its errors in x-amzn-errortype: pass those through, drop the rest.
        amz = "".join(f"{k}: {v}\r\n" for k, v in given.items() if k.lower().startswith("x-amz"))
        writer.write(
            f"HTTP/1.1 {code} X\r\ncontent-type: {ctype}\r\ncontent-length: {len(body)}\r\n"
            f"{amz}connection: close\r\n\r\n".encode()
            + body
        )
        await writer.drain()
