"""Several sockets at once: threads in one process (explicit `_ext` devices) versus one
process per socket (what the station worker does: one Celery pool child per socket).

Each socket provisions the same sequence as bench/chip_timing.py with the emulator at M0
timings; the figure is devices per second for the whole jig, and the ratio to one socket.
Each socket's worker opens its own session on the SoftHSM CA (as the station's signer
calls would); the few milliseconds of signing per device are included.

Run: .venv/bin/python bench/chip_parallel.py [--sockets 4] [--devices 2]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import tempfile
import threading
import time
from pathlib import Path

from bench.chip_timing import open_chip, provision
from provisioner.ca.ceremony import init_ca, load_ca
from provisioner.chips.emulator.jig import StationJig
from provisioner.settings import Settings


def work(root: str, socket: int, devices: int, sockets: int) -> None:
    settings = Settings(var_dir=Path(root))
    ca = load_ca(settings)
    jig = StationJig(settings.chips_dir, "par", sockets)
    for _ in range(devices):
        jig.insert_blank(socket)
        chip, _ = open_chip(jig, socket, zero_delay=False, settings=settings)
        provision(chip, ca, settings)
        chip.close()
    ca.close()


def run(mode: str, sockets: int, devices: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        init_ca(Settings(var_dir=Path(d)))
        t0 = time.perf_counter()
        if mode == "threads":
            ts = [
                threading.Thread(target=work, args=(d, s, devices, sockets)) for s in range(sockets)
            ]
        else:
            ctx = mp.get_context("spawn")
            ts = [
                ctx.Process(target=work, args=(d, s, devices, sockets))  # type: ignore[misc]
                for s in range(sockets)
            ]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return sockets * devices / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sockets", type=int, default=4)
    ap.add_argument("--devices", type=int, default=2)
    args = ap.parse_args()
    one = run("threads", 1, args.devices)
    print(f"1 socket:                     {one:6.3f} devices/s")
    for mode in ("threads", "processes"):
        rate = run(mode, args.sockets, args.devices)
        print(
            f"{args.sockets} sockets, {mode:9s}:        {rate:6.3f} devices/s "
            f"({rate / one:.2f}x one socket)"
        )


if __name__ == "__main__":
    main()
