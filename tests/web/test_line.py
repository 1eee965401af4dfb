"""The Line page in a real browser: where each role lands, and a failed chip shown with its
reason and what to do with the part, on the Line page and on its batch's page.

The line's station is fed by hand (``feed = "manual"``) so the test decides which chip is
in the socket: a blank chip whose Sign command fails (the proof of possession)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from provisioner import batches
from provisioner.chips.emulator.chip import EmulatedChip
from provisioner.chips.emulator.faults import FaultPlan
from provisioner.chips.emulator.jig import StationJig
from provisioner.cli.view import part_action_text
from provisioner.db.models import PartAction
from tests.web.conftest import Line, sign_in, start_line

pytestmark = pytest.mark.slow

SIGN = 0x41  # the Sign opcode: the proof of possession fails


@pytest.fixture(scope="module")
def manual_line(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Line]:
    root: Path = tmp_path_factory.mktemp("web-line") / "line"
    yield from start_line(root, sockets=1, extra='feed = "manual"\nchip_retries = 0\n')


def _nav(page: Any) -> list[str]:
    return [a.inner_text() for a in page.locator("header nav a").all()]


@pytest.mark.parametrize(
    ("role", "lands", "nav"),
    [
        ("operator", "/ui/", ["Line", "Batches"]),
        ("admin", "/ui/", ["Line", "Batches", "Audit", "CA", "Users"]),
        ("auditor", "/ui/audit", ["Batches", "Audit"]),
        ("monitor", "/ui/", []),
    ],
)
def test_each_role_lands_on_its_page(
    manual_line: Line, browser: Any, role: str, lands: str, nav: list[str]
) -> None:
    page = sign_in(browser, manual_line, role)
    page.goto(f"{manual_line.url}/ui/")
    assert page.url == f"{manual_line.url}{lands}"
    assert _nav(page) == nav
    if role == "monitor":
        assert page.locator("[data-testid=nothing-here]").count() == 1
        assert page.locator("[data-testid=line-stations]").count() == 0
    if role in ("operator", "admin"):
        assert page.locator("[data-testid=station][data-station=line1]").count() == 1
    page.context.close()


def test_a_failed_chip_shows_its_reason_and_what_to_do(manual_line: Line, browser: Any) -> None:
    line = manual_line
    settings = line.station.settings
    batch_id = batches.create_batch(
        line.engine, settings, station_id="line1", count=1, actor="operator:oscar"
    )
    jig = StationJig(settings.chips_dir, "line1", 1)
    chip = jig.insert_chip(0, EmulatedChip.blank())
    FaultPlan(ecc_fault_on=SIGN).save(chip)  # before the batch starts: no race with the task

    page = sign_in(browser, line, "operator")
    page.goto(f"{line.url}/ui/")
    loaded = page.evaluate("performance.timeOrigin")
    batch_page = page.context.new_page()
    batch_page.goto(f"{line.url}/ui/batches/{batch_id}")
    batch_page.click("[data-testid=action-start]")
    batch_page.wait_for_selector("[data-testid=flash]")

    # The Line page, open since before the start, shows the failure without a reload.
    socket = page.locator("[data-testid=socket][data-socket='0']")
    deadline = time.monotonic() + 90
    while socket.get_attribute("data-state") != "failed":
        assert time.monotonic() < deadline, socket.inner_text()
        page.wait_for_timeout(200)
    assert page.evaluate("performance.timeOrigin") == loaded
    reason = socket.locator("[data-testid=socket-reason]").inner_text()
    assert reason.strip(), socket.inner_text()
    reject = part_action_text(PartAction.REJECT)
    assert socket.locator("[data-testid=socket-action]").inner_text() == f"→ {reject}"
    assert chip.stem in socket.inner_text()  # the chip's serial, to find the part

    failed = batch_page.locator("[data-testid=failed-device]")
    deadline = time.monotonic() + 30
    while failed.count() == 0:
        assert time.monotonic() < deadline, batch_page.inner_text("[data-testid=batch-failures]")
        batch_page.wait_for_timeout(200)
    row = failed.first.inner_text()
    assert reason in row and reject in row and chip.stem in row
    group = batch_page.locator("[data-testid=failure-group]").first.inner_text()
    assert reason in group and reject in group
    assert batch_page.inner_text("[data-testid=failed-count]") == "1"
    # What may be done now: retry or close; both offered, as is cancel.
    for verb in ("retry", "close", "cancel", "pause"):
        assert batch_page.locator(f"[data-testid=action-{verb}]").count() == 1, verb
    batch_page.once("dialog", lambda d: d.accept())
    batch_page.click("[data-testid=action-close]")
    batch_page.wait_for_selector("[data-testid=flash]")
    assert "finished_with_failures" in batch_page.inner_text("[data-testid=flash]")
    assert batch_page.inner_text("[data-testid=batch-state]") == "finished with failures"
    assert batches.get_batch(line.engine, batch_id).state.value == "finished_with_failures"
    page.context.close()
