"""1,000 concurrent MQTT devices through the bridge (issue 16).

Starts what ``provisioner services run`` starts for the field half — the registry server
(with the device plane) and Debian's mosquitto with the product's plugin, TLS with the
CA-issued P-256 server certificate — in a temporary var directory, creates ``--devices``
devices in the registry, each with its own software P-256 key (ES256_PEM credential), and
then, from one asyncio process (:mod:`bench.mqtt_wire`):

1. connects every device (TLS handshake, CONNECT with a fresh ES256 JWT as the password, which
   the plugin hands to the device plane for verification: client id parse, registry and
   device lookup, signature check) with ``--concurrency`` connects in flight, and keeps them
   all open;
2. has every device publish ``--messages`` telemetry events at QoS 1 (up to 10 in flight per
   device), all devices at once, and waits for each PUBACK;
3. waits until the event store holds every event (the plugin batches them to the device
   plane every 100 ms), so "stored" is the throughput all the way into the database.

Printed: connections per second, connect latency p50/p99/max, telemetry messages per second
acknowledged by the broker and stored in the event store, and the CPU time the broker and
the registry server used per connect and per message (from /proc, not estimated). The
benchmark client runs on the same machine and its own CPU use is printed too: on a 2-core
machine it competes with what it measures.

    .venv/bin/python -m bench.mqtt_devices [--devices 1000] [--messages 20] [--concurrency 50]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bench.mqtt_wire import Device
from bench.procstat import cpu_seconds, free_port

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey

    from provisioner.settings import Settings

PROJECT = "factory"
LOCATION = "local"
REGISTRY = "devices"


@dataclass
class Stack:
    settings: Settings
    pids: dict[str, int]


@contextmanager
def line_cloud(root: Path) -> Iterator[Stack]:
    """The registry server and the MQTT bridge, started by the product's supervisor."""
    from provisioner.ca.ceremony import init_ca
    from provisioner.settings import load_settings
    from provisioner.supervisor import Supervisor

    config = root / "provisioner.toml"
    reg_port, api_port = free_port(), free_port()
    config.write_text(
        f'var_dir = "{root / "var"}"\n'
        f'[registry]\nurl = "http://127.0.0.1:{reg_port}"\nlisten_port = {reg_port}\n'
        f"[api]\nlisten_port = {api_port}\n"
        f'[bridge]\nhost = "127.0.0.1"\nmqtt_port = {free_port()}\nwss_port = {free_port()}\n'
    )
    settings = load_settings(config)
    os.environ["SOFTHSM2_CONF"] = "/nonexistent"  # init_ca writes the var dir's own
    init_ca(settings)
    sup = Supervisor(settings, config)
    sup.acquire()
    try:
        sup.start_registry()
        sup.start_bridge()
        pids = {c.name: c.proc.pid for c in sup.children}
        yield Stack(settings, pids)
    finally:
        sup.stop(timeout=10)


def create_devices(settings: Settings, count: int) -> list[tuple[str, EllipticCurvePrivateKey]]:
    """``count`` devices straight into the registry's store, each with its own P-256 key."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from provisioner.cloud import store
    from tests.cloud.devauth.keys import credential

    engine = store.open_store(settings.registry_db_url)
    try:
        reg = store.get_registry(engine, PROJECT, LOCATION, REGISTRY)
        assert reg is not None, "the registry server creates the configured registry"
        out = []
        for n in range(count):
            key = ec.generate_private_key(ec.SECP256R1())
            device_id = f"bench-{n:06d}"
            store.create_device(
                engine, reg, store.NewDevice(device_id, (credential(key),), False, {})
            )
            out.append((device_id, key))
        return out
    finally:
        engine.dispose()


def stored_events(settings: Settings) -> int:
    from sqlalchemy import text

    from provisioner.cloud import events, store

    engine = store.open_store(settings.registry_db_url)
    try:
        events.ensure_events_table(engine)
        with engine.connect() as c:
            return int(c.execute(text("SELECT count(*) FROM registry_events")).scalar_one())
    finally:
        engine.dispose()


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(
    args: argparse.Namespace, stack: Stack, devices: list[tuple[str, EllipticCurvePrivateKey]]
) -> None:
    from tests.cloud.devauth.keys import make_jwt

    settings = stack.settings
    bridge = settings.bridge
    tls = ssl.create_default_context(cafile=str(settings.bridge_dir / "ca.pem"))
    prefix = f"projects/{PROJECT}/locations/{LOCATION}/registries/{REGISTRY}/devices/"
    jwts = [make_jwt(key, project=PROJECT, now=time.time()) for _, key in devices]
    gate = asyncio.Semaphore(args.concurrency)
    latencies: list[float] = []
    conns: list[tuple[int, Device]] = []

    async def one(n: int) -> None:
        async with gate:
            t0 = time.perf_counter()
            d = await Device.connect(
                bridge.host, bridge.mqtt_port, tls, prefix + devices[n][0], jwts[n]
            )
            latencies.append(time.perf_counter() - t0)
            conns.append((n, d))

    cpu0 = {k: cpu_seconds(p) for k, p in stack.pids.items()}
    me0 = time.process_time()
    t0 = time.perf_counter()
    await asyncio.gather(*(one(n) for n in range(len(devices))))
    connect_s = time.perf_counter() - t0
    cpu1 = {k: cpu_seconds(p) for k, p in stack.pids.items()}
    me1 = time.process_time()
    n = len(conns)
    print(f"devices connected at once      {n}")
    print(f"connections/s (JWT verified)    {n / connect_s:9.1f}   ({connect_s:.2f} s for {n})")
    print(
        f"connect latency ms              p50 {statistics.median(latencies) * 1e3:7.1f}"
        f"   p99 {_pct(latencies, 0.99) * 1e3:7.1f}   max {max(latencies) * 1e3:7.1f}"
        f"   (concurrency {args.concurrency})"
    )
    for k in stack.pids:
        print(f"  CPU per connect: {k:<9} {(cpu1[k] - cpu0[k]) / n * 1e3:6.2f} ms")
    print(f"  CPU per connect: {'client':<9} {(me1 - me0) / n * 1e3:6.2f} ms (this process)")

    payload = b'{"temperature": 21.5, "seq": %d}'
    before = stored_events(settings)
    total = n * args.messages
    t0 = time.perf_counter()
    await asyncio.gather(
        *(
            d.publish_many(
                f"/devices/{devices[i][0]}/events", [payload % k for k in range(args.messages)]
            )
            for i, d in conns
        )
    )
    acked_s = time.perf_counter() - t0
    deadline = time.monotonic() + 120
    while stored_events(settings) - before < total and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    stored_s = time.perf_counter() - t0
    stored = stored_events(settings) - before
    cpu2 = {k: cpu_seconds(p) for k, p in stack.pids.items()}
    me2 = time.process_time()
    print(f"telemetry messages/s (PUBACKed) {total / acked_s:9.1f}   ({total} messages)")
    print(
        f"telemetry messages/s (stored)   {stored / stored_s:9.1f}   "
        f"({stored} of {total} in the event store after {stored_s:.2f} s)"
    )
    for k in stack.pids:
        print(f"  CPU per message: {k:<9} {(cpu2[k] - cpu1[k]) / total * 1e3:6.3f} ms")
    print(f"  CPU per message: {'client':<9} {(me2 - me1) / total * 1e3:6.3f} ms (this process)")
    await asyncio.gather(*(d.close() for _, d in conns))
    if stored < total:
        sys.exit(f"only {stored} of {total} events reached the event store")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=1000, help="concurrent devices")
    parser.add_argument("--messages", type=int, default=20, help="telemetry events per device")
    parser.add_argument("--concurrency", type=int, default=50, help="connects in flight")
    parser.add_argument(
        "--keep", type=Path, help="run in this new directory and keep it (logs: var/log/)"
    )
    args = parser.parse_args()
    os.umask(0o077)  # the product refuses to start on files others can read
    with tempfile.TemporaryDirectory(prefix="bench-mqtt-") as tmp:
        root = Path(tmp)
        if args.keep:
            args.keep.mkdir(parents=True)
            root = args.keep.resolve()
        with line_cloud(root) as stack:
            t0 = time.perf_counter()
            devices = create_devices(stack.settings, args.devices)
            print(f"setup: {args.devices} devices created in {time.perf_counter() - t0:.1f} s")
            asyncio.run(run(args, stack, devices))


if __name__ == "__main__":
    main()
