"""Faults injected into one emulated chip, reproducibly (seeded).

A plan lives beside the chip's file (``<SERIAL>.faults.json``), so it follows the chip from
socket to socket and across processes. The bus applies it; the chip's logic never knows.

- ``remove_during``: the chip is pulled out of its socket while executing this opcode
  (the command completes inside the chip, the response never arrives); fires once.
- ``ecc_fault_on``: this opcode answers status 0x05 (ECC fault) instead of running.
- ``crc_error_rate``: this share of responses reaches the host with one bit flipped. Each
  decision derives from (seed, response number), and the number is kept in the plan, so
  the noise is reproducible yet moves on from one session to the next.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import asdict, dataclass, replace
from pathlib import Path


@dataclass(frozen=True)
class FaultPlan:
    seed: int = 0
    remove_during: int | None = None
    ecc_fault_on: int | None = None
    crc_error_rate: float = 0.0
    responses: int = 0  # responses the noise has decided on so far

    @staticmethod
    def path_for(chip_path: Path) -> Path:
        return chip_path.with_name(chip_path.stem + ".faults.json")

    def save(self, chip_path: Path) -> None:
        p = self.path_for(chip_path)
        tmp = p.with_name(p.name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(asdict(self)))
        os.replace(tmp, p)

    @classmethod
    def stamp(cls, chip_path: Path) -> int | None:
        """The plan file's modification time (None: no plan), to notice a new plan."""
        try:
            return cls.path_for(chip_path).stat().st_mtime_ns
        except FileNotFoundError:
            return None

    @classmethod
    def load(cls, chip_path: Path) -> FaultPlan:
        p = cls.path_for(chip_path)
        try:
            return cls(**json.loads(p.read_text()))
        except FileNotFoundError:
            return cls()

    @classmethod
    def clear(cls, chip_path: Path) -> None:
        cls.path_for(chip_path).unlink(missing_ok=True)

    def fired_removal(self) -> FaultPlan:
        return replace(self, remove_during=None)

    def corrupt_bit(self, length: int) -> tuple[FaultPlan, int | None]:
        """Decide on the next response of ``length`` bytes: the plan to keep, and the bit
        to flip (None: the response arrives intact)."""
        rng = random.Random(f"{self.seed}:{self.responses}")
        nxt = replace(self, responses=self.responses + 1)
        if rng.random() < self.crc_error_rate:
            return nxt, rng.randrange(8 * length)
        return nxt, None
