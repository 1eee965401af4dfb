"""Several sockets at once: threads in one process (explicit `_ext` devices) versus one
process per socket (what the station worker does: one Celery pool child per socket).

Each socket provisions the same sequence as bench/chip_timing.py with the emulator at M0
timings; the figure is devices per second for the whole jig, and the ratio to one socket.
Certificates are signed in SoftHSM (a few milliseconds per device, included): each
process opens the token itself; threads share one session under a lock (python-pkcs11
keeps one library instance per process, so a thread may not open and close its own).

Run: .venv/bin/python -m bench.chip_parallel [--sockets 4] [--devices 2]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import tempfile
import threading
import time
from pathlib import Path

from bench.chip_timing import Issue, issuer_for, open_chip, provision
from provisioner.ca.ceremony import init_ca, load_ca
from provisioner.chips.emulator.jig import StationJig
from provisioner.ports import SigningRequest
from provisioner.settings import Settings


def work(root: str, socket: int, devices: int, sockets: int, issue: Issue | None) -> None:
    settings = Settings(var_dir=Path(root))
    ca = load_ca(settings) if issue is None else None
    jig = StationJig(settings.chips_dir, "par", sockets)
    for _ in range(devices):
        jig.insert_blank(socket)
        chip, _ = open_chip(jig, socket, zero_delay=False, settings=settings)
        provision(chip, issue or issuer_for(ca, settings))  # type: ignore[arg-type]
        chip.close()
    if ca is not None:
        ca.close()


def _threads(root: str, sockets: int, devices: int) -> None:
    settings = Settings(var_dir=Path(root))
    ca, lock, errors = load_ca(settings), threading.Lock(), list[BaseException]()
    shared = issuer_for(ca, settings)

    def issue(request: SigningRequest) -> bytes:
        with lock:
            return shared(request)

    def run_one(socket: int) -> None:
        try:
            work(root, socket, devices, sockets, issue)
        except BaseException as exc:
            errors.append(exc)

    ts = [threading.Thread(target=run_one, args=(s,)) for s in range(sockets)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    ca.close()
    if errors:
        raise RuntimeError(f"{len(errors)} socket(s) failed") from errors[0]


def _processes(root: str, sockets: int, devices: int) -> None:
    ctx = mp.get_context("spawn")
    ps = [ctx.Process(target=work, args=(root, s, devices, sockets, None)) for s in range(sockets)]
    for p in ps:
        p.start()
    for p in ps:
        p.join()
    failed = [p.exitcode for p in ps if p.exitcode]
    if failed:
        raise RuntimeError(f"{len(failed)} socket process(es) failed: exit codes {failed}")


def run(mode: str, sockets: int, devices: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        init_ca(Settings(var_dir=Path(d)))
        t0 = time.perf_counter()
        (_threads if mode == "threads" else _processes)(d, sockets, devices)
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
