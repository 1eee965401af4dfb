"""OCSP responses per second: pre-produced (cached) and fresh (nonce, signed in the token).

Sets up, in a temporary var directory, the dev CA in SoftHSM and ``--certs`` device
certificates issued by the line's signer (every tenth revoked), then measures:

* **in-process**: :meth:`provisioner.ca.ocsp.OcspResponder.respond` on DER requests, one
  thread: parse, issuer lookup, the status read from SQLite, then either the pre-produced
  answer (no nonce; every answer produced once beforehand) or a fresh signature by the
  responder key in the token (a 16-byte nonce, as ``openssl ocsp`` sends);
* **over HTTP**: the real API process (``python -m provisioner.api``) on a free port,
  ``POST /ocsp`` (and ``GET /ocsp/{base64}`` for pre-produced answers) from one asyncio
  client with ``--concurrency`` requests in flight; the API process's CPU time per
  response is read from /proc. Client and server share the machine.

Each answer is checked once (status as expected, the nonce echoed). Figures are medians of
``--repeat`` runs of ``--seconds``; pre-produced and fresh runs are taken in turn. Run:

    .venv/bin/python -m bench.ocsp [--certs 500] [--seconds 3] [--repeat 3] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from bench.ca_throughput import _ready_requests
from bench.procstat import cpu_seconds, free_port
from provisioner.ca import revocation
from provisioner.ca.ceremony import init_ca, store_of
from provisioner.ca.ocsp import OcspResponder
from provisioner.db.engine import create_schema, make_engine
from provisioner.issuance import IssuanceService
from provisioner.settings import load_settings


def _requests(certs: list[x509.Certificate], issuer: x509.Certificate, nonce: bool) -> list[bytes]:
    out = []
    for cert in certs:
        b = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1())
        if nonce:
            b = b.add_extension(x509.OCSPNonce(os.urandom(16)), critical=False)
        out.append(b.build().public_bytes(serialization.Encoding.DER))
    return out


def _in_process(
    responder: OcspResponder, reqs: dict[str, list[bytes]], seconds: float, repeat: int
) -> dict[str, list[float]]:
    runs: dict[str, list[float]] = {name: [] for name in reqs}
    for _ in range(repeat):
        for name, pool in reqs.items():
            n, start = 0, time.perf_counter()
            end = start + seconds
            while time.perf_counter() < end:
                responder.respond(pool[n % len(pool)])
                n += 1
            runs[name].append(n / (time.perf_counter() - start))
    return runs


async def _http_run(
    client: httpx.AsyncClient,
    send: Callable[[httpx.AsyncClient, bytes], object],
    pool: list[bytes],
    seconds: float,
    concurrency: int,
) -> int:
    end = time.perf_counter() + seconds
    done = 0

    async def worker(offset: int) -> None:
        nonlocal done
        i = offset
        while time.perf_counter() < end:
            r = await send(client, pool[i % len(pool)])  # type: ignore[misc]
            assert r.status_code == 200
            done += 1
            i += concurrency

    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    return done


async def _post(client: httpx.AsyncClient, der: bytes) -> httpx.Response:
    return await client.post(
        "/ocsp", content=der, headers={"Content-Type": "application/ocsp-request"}
    )


async def _get(client: httpx.AsyncClient, der: bytes) -> httpx.Response:
    b64 = base64.b64encode(der).decode().replace("/", "%2F").replace("+", "%2B")
    return await client.get("/ocsp/" + b64)


async def _over_http(
    base: str,
    pid: int,
    reqs: dict[str, tuple[Callable[..., object], list[bytes]]],
    args: argparse.Namespace,
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=64)
    rates: dict[str, list[float]] = {name: [] for name in reqs}
    cpu_ms: dict[str, list[float]] = {name: [] for name in reqs}
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:
        for send, pool in reqs.values():  # warm-up: connections open, code paths hot
            await _http_run(client, send, pool, min(1.0, args.seconds / 3), args.concurrency)
        for _ in range(args.repeat):
            for name, (send, pool) in reqs.items():
                cpu0, t0 = cpu_seconds(pid, children=False), time.perf_counter()
                n = await _http_run(client, send, pool, args.seconds, args.concurrency)
                elapsed, cpu = time.perf_counter() - t0, cpu_seconds(pid, children=False) - cpu0
                rates[name].append(n / elapsed)
                cpu_ms[name].append(1000 * cpu / n)
    return rates, cpu_ms


def _check(answer: bytes, status: ocsp.OCSPCertStatus, nonce: bytes | None = None) -> None:
    resp = ocsp.load_der_ocsp_response(answer)
    if resp.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise SystemExit(f"responder answered {resp.response_status}")
    if resp.certificate_status != status:
        raise SystemExit(f"expected {status}, got {resp.certificate_status}")
    if nonce is not None:
        echoed = resp.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
        if echoed != nonce:
            raise SystemExit("the nonce was not echoed")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--certs", type=int, default=500, help="device certificates to ask about")
    ap.add_argument("--seconds", type=float, default=3.0, help="length of one timed run")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per figure (median)")
    ap.add_argument("--concurrency", type=int, default=16, help="HTTP requests in flight")
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench-ocsp-"))
    os.environ["SOFTHSM2_CONF"] = "/nonexistent"  # init_ca points it at the private token dir
    port = free_port()
    config = root / "provisioner.toml"
    config.write_text(
        f'var_dir = "{root / "var"}"\n[api]\nlisten_port = {port}\n'
        "[bridge]\nenabled = false\n[devices]\nenabled = false\n"
    )
    settings = load_settings(config)
    api: subprocess.Popen[bytes] | None = None
    try:
        init_ca(settings)
        engine = make_engine(settings.db_url)
        create_schema(engine)
        print(f"issuing {args.certs} device certificates …", flush=True)
        svc = IssuanceService.open(engine, settings)
        try:
            issued = [svc.sign(r) for r in _ready_requests(settings, engine, args.certs, 0)]
        finally:
            svc.close()
        certs = [x509.load_der_x509_certificate(c.der) for c in issued]
        for c in certs[::10]:
            revocation.revoke(engine, "0x" + format(c.serial_number, "x"), "superseded", "bench")
        issuer = store_of(settings).intermediate()
        plain, fresh = _requests(certs, issuer, False), _requests(certs, issuer, True)

        responder = OcspResponder(settings, engine)
        try:
            for der in plain:  # pre-produce every answer once
                responder.respond(der)
            _check(responder.respond(plain[0]).der, ocsp.OCSPCertStatus.REVOKED)
            _check(responder.respond(plain[1]).der, ocsp.OCSPCertStatus.GOOD)
            nonce = ocsp.load_der_ocsp_request(fresh[1]).extensions.get_extension_for_class(
                x509.OCSPNonce
            )
            _check(responder.respond(fresh[1]).der, ocsp.OCSPCertStatus.GOOD, nonce.value.nonce)
            print("measuring in-process …", flush=True)
            local = _in_process(
                responder, {"pre-produced": plain, "fresh": fresh}, args.seconds, args.repeat
            )
        finally:
            responder.close()

        env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONER_")}
        env["PROVISIONER_CONFIG"] = str(config)
        api = subprocess.Popen(
            [sys.executable, "-m", "provisioner.api"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(base + "/healthz", timeout=1).is_success:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or api.poll() is not None:
                raise SystemExit("the API did not start")
            time.sleep(0.1)
        for der in plain:  # pre-produce in the API process too
            httpx.post(base + "/ocsp", content=der, timeout=30)
        print("measuring over HTTP …", flush=True)
        http, cpu = asyncio.run(
            _over_http(
                base,
                api.pid,
                {
                    "pre-produced (POST)": (_post, plain),
                    "pre-produced (GET)": (_get, plain),
                    "fresh, nonce (POST)": (_post, fresh),
                },
                args,
            )
        )
    finally:
        if api is not None:
            api.terminate()
            api.wait(10)
        shutil.rmtree(root, ignore_errors=True)

    def med(xs: list[float]) -> float:
        return statistics.median(xs)

    print(f"\n{'path':34}  responses/s  (runs)")

    def runs_of(runs: list[float]) -> str:
        return ", ".join(f"{r:.0f}" for r in runs)

    for name, runs in local.items():
        print(f"{'in-process, ' + name:34}  {med(runs):11.0f}  ({runs_of(runs)})")
    for name, runs in http.items():
        print(
            f"{'HTTP, ' + name:34}  {med(runs):11.0f}  ({runs_of(runs)})"
            f"  API CPU {med(cpu[name]):.2f} ms/response"
        )
    print("\nratios pre-produced / fresh:")
    print(f"  in-process: {med(local['pre-produced']) / med(local['fresh']):.1f}")
    post = med(http["pre-produced (POST)"]) / med(http["fresh, nonce (POST)"])
    print(f"  HTTP POST:  {post:.1f}")


if __name__ == "__main__":
    main()
