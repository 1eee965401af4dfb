"""The Batches pages in a real browser against a real line: create and start a batch from
the page and watch it finish live without a reload; cancel one (the confirm dialog); a
refused transition shows its message and changes nothing."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func
from sqlmodel import Session, select

from provisioner import batches
from provisioner.db.models import AuditEvent, Batch
from tests.web.conftest import Line, screenshot, sign_in, start_line


@pytest.fixture(scope="module")
def line(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Line]:
    """This module's line keeps its emulated chips at the datasheet's timing (about 1.9 s
    per device): since issue 19's shorter sequence, a zero-delay batch of 8 could finish
    between two looks of the page, which must see it part-way."""
    yield from start_line(
        tmp_path_factory.mktemp("web") / "line", extra='chip_timing = "datasheet"\n'
    )


pytestmark = pytest.mark.slow

# Records every change the live stream makes to the progress element, in the page itself.
WATCH_PROGRESS = """() => {
  window.__c1_changes = [document.getElementById('batch-progress').innerText];
  window.__c1_loaded = performance.timeOrigin;
  new MutationObserver(() => {
    window.__c1_changes.push(document.getElementById('batch-progress').innerText);
  }).observe(document.getElementById('batch-progress'), {childList: true, subtree: true});
}"""


def _state(line: Line, batch_id: int) -> str:
    return batches.get_batch(line.engine, batch_id).state.value


def _events(line: Line) -> int:
    with Session(line.engine) as s:
        return int(s.exec(select(func.count()).select_from(AuditEvent)).one())


def _until(page: Any, what: str, cond: Any, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        page.wait_for_timeout(200)


def test_create_start_and_watch_a_batch_to_completion(line: Line, browser: Any) -> None:
    page = sign_in(browser, line, "operator")
    page.goto(f"{line.url}/ui/batches")
    assert [a.inner_text() for a in page.locator("header nav a").all()] == ["Line", "Batches"]
    page.select_option("select[name=station]", "line1")
    page.fill("input[name=count]", "8")
    page.click("[data-testid=create-batch] button[type=submit]")
    page.wait_for_url(re.compile(r".*/ui/batches/\d+$"))
    batch_id = int(page.url.rsplit("/", 1)[1])
    assert "created" in page.inner_text("[data-testid=flash]")
    assert page.inner_text("[data-testid=batch-state]") == "created"
    with Session(line.engine) as s:
        row = s.get(Batch, batch_id)
        assert row is not None and row.count == 8 and row.created_by == "operator:oscar"

    page.click("[data-testid=action-start]")  # a form post: Post/Redirect/Get to this page
    page.wait_for_selector("[data-testid=flash]")
    assert "started: 8 device(s) queued" in page.inner_text("[data-testid=flash]")
    page.evaluate(WATCH_PROGRESS)
    loaded = page.evaluate("window.__c1_loaded")

    mid = False
    deadline = time.monotonic() + 120
    while page.inner_text("[data-testid=batch-state]") != "finished":
        assert time.monotonic() < deadline, "the batch did not finish within 120 s"
        done = int(page.inner_text("[data-testid=done-count]"))
        if not mid and 0 < done < 8:
            screenshot(page, "batch-running")
            line_page = page.context.new_page()
            line_page.goto(f"{line.url}/ui/")
            line_page.wait_for_timeout(500)
            screenshot(line_page, "line")
            line_page.close()
            mid = True
        page.wait_for_timeout(200)

    assert page.inner_text("[data-testid=done-count]") == "8"
    # Still the same document: the numbers came over the live stream, not by reloading.
    assert page.evaluate("window.__c1_loaded") == loaded
    changes = page.evaluate("window.__c1_changes")
    assert len(set(changes)) >= 3, changes
    assert _state(line, batch_id) == "finished"
    assert page.locator("[data-testid=action-cancel]").count() == 0  # ended: no actions
    assert page.locator("[data-testid=batch-chart] svg rect.bar").count() >= 1
    assert mid, "never saw the batch part-way"
    screenshot(page, "batch-done")

    page.goto(f"{line.url}/ui/batches")
    row = page.locator(f"[data-testid=batch-row][data-batch='{batch_id}']")
    assert row.locator("[data-testid=batch-row-state]").inner_text() == "finished"
    assert "8/8" in row.inner_text() and "100.0 %" in row.inner_text()
    screenshot(page, "batches")


def test_cancel_a_batch_from_its_page(line: Line, browser: Any) -> None:
    batch_id = batches.create_batch(
        line.engine, line.station.settings, station_id="line1", count=3, actor="operator:oscar"
    )
    page = sign_in(browser, line, "operator")
    page.goto(f"{line.url}/ui/batches/{batch_id}")
    asked: list[str] = []

    def accept(dialog: Any) -> None:
        asked.append(dialog.message)
        dialog.accept()

    page.once("dialog", accept)
    page.click("[data-testid=action-cancel]")
    page.wait_for_selector("[data-testid=flash]")
    assert asked and "Cancel the batch?" in asked[0]
    assert "cancelled: 3 device(s) released" in page.inner_text("[data-testid=flash]")
    assert page.inner_text("[data-testid=batch-state]") == "cancelled"
    assert _state(line, batch_id) == "cancelled"
    assert page.locator("[data-testid=batch-actions] form").count() == 0


def test_dismissing_the_confirm_dialog_cancels_nothing(line: Line, browser: Any) -> None:
    batch_id = batches.create_batch(
        line.engine, line.station.settings, station_id="line1", count=2, actor="operator:oscar"
    )
    page = sign_in(browser, line, "operator")
    page.goto(f"{line.url}/ui/batches/{batch_id}")
    before = _events(line)
    page.once("dialog", lambda d: d.dismiss())
    page.click("[data-testid=action-cancel]")
    page.wait_for_timeout(500)
    assert _state(line, batch_id) == "created" and _events(line) == before
    batches.cancel(line.engine, batch_id, actor="operator:oscar")


def test_a_refused_transition_shows_its_message_and_changes_nothing(
    line: Line, browser: Any
) -> None:
    batch_id = batches.create_batch(
        line.engine, line.station.settings, station_id="line1", count=2, actor="operator:oscar"
    )
    page = sign_in(browser, line, "operator")
    page.goto(f"{line.url}/ui/batches/{batch_id}")
    assert page.locator("[data-testid=action-resume]").count() == 0  # not offered
    csrf = page.get_attribute("form.signout input[name=csrf]", "value")
    before = _events(line)
    # A stale page's form (or a hand-made post): the transition refuses, nothing is written.
    resp = page.request.post(
        f"{line.url}/ui/batches/{batch_id}/resume",
        form={"csrf": csrf or ""},
        headers={"origin": line.url},
    )
    assert resp.ok and resp.url.endswith(f"/ui/batches/{batch_id}")
    assert "cannot resume batch" in resp.text() and "it is created" in resp.text()
    assert _state(line, batch_id) == "created" and _events(line) == before
    # Without the session's CSRF token the form is refused before anything runs.
    bad = page.request.post(f"{line.url}/ui/batches/{batch_id}/cancel", form={"csrf": "x"})
    assert bad.status == 403 and _state(line, batch_id) == "created"
    batches.cancel(line.engine, batch_id, actor="operator:oscar")


def test_an_auditor_reads_batches_but_gets_no_action(line: Line, browser: Any) -> None:
    batch_id = batches.create_batch(
        line.engine, line.station.settings, station_id="line1", count=1, actor="operator:oscar"
    )
    page = sign_in(browser, line, "auditor")
    page.goto(f"{line.url}/ui/batches")
    assert page.locator("[data-testid=create-batch]").count() == 0
    page.goto(f"{line.url}/ui/batches/{batch_id}")
    assert page.locator("[data-testid=batch-actions] form").count() == 0
    csrf = page.get_attribute("form.signout input[name=csrf]", "value")
    resp = page.request.post(f"{line.url}/ui/batches/{batch_id}/cancel", form={"csrf": csrf or ""})
    assert resp.status == 403 and _state(line, batch_id) == "created"
    batches.cancel(line.engine, batch_id, actor="operator:oscar")
