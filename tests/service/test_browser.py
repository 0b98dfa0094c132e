"""The dashboard in a real browser (Debian's Chromium through Playwright), on SQLite only.

Logs in with a token, changes the period and zone, drills into a project, edits a budget as an
admin, filters events and downloads their CSV, checks that a viewer sees only its project, and
that pages full of hostile project, model and tag names run no script (no dialog, no console
error). Screenshots of the overview and a project page go to ``tmp_path``, and are copied to
``$LEDGER_TEST_ARTIFACTS`` when it is set.

Why SQLite only: the browser tests exercise the pages, not the database; every read they make is
the same :mod:`ledger.service.queries` call that ``test_pages.py`` and the API tests run on both
SQLite and PostgreSQL, and a second browser run on PostgreSQL would double the slowest tests of
the service for no new coverage.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from ledger import store
from ledger.budgets.budgets import set_budget
from ledger.store.rollup import rollup
from tests.helpers import make_event, write_events
from tests.service._serve import Served, serve

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's Chromium is not at /usr/bin/chromium")

HOSTILE_PROJECT = 'x"><svg onload=alert(1)>'
HOSTILE_MODEL = "<script>alert(1)</script>"
HOSTILE_TAG = '"><img src=x onerror=alert(1)>'


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    engine = store.make_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    store.ensure_schema(engine)
    now = datetime.now(UTC)
    events = [make_event(occurred_at=now, project="alpha", tags=(("feature", "chat"),)) for _ in range(3)]
    events += [make_event(occurred_at=now, project="alpha", requested_model="llama3.1-8b")]
    events += [make_event(occurred_at=now, project="beta")]
    events += [
        make_event(
            occurred_at=now,
            project=HOSTILE_PROJECT,
            requested_model=HOSTILE_MODEL,
            tags=(("k", HOSTILE_TAG),),
        )
    ]
    write_events(engine, events)
    rollup(engine)
    set_budget(engine, "alpha", monthly="10.00")
    set_budget(engine, HOSTILE_PROJECT, monthly="1.00")
    try:
        with serve(engine) as s:
            yield s
    finally:
        engine.dispose()


@pytest.fixture
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


def _page(browser: Any, served: Served) -> Any:
    context = browser.new_context(base_url=served.base_url, accept_downloads=True)
    return context.new_page()


def _login(page: Any, token: str) -> None:
    page.goto("/")
    assert "/login" in page.url
    page.get_by_label("Service token").fill(token)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url("**/")
    assert page.locator("h1").inner_text().startswith("Overview")


def _keep(path: Path) -> None:
    out = os.environ.get("LEDGER_TEST_ARTIFACTS")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, Path(out) / path.name)


def test_an_admin_reads_drills_in_edits_a_budget_and_downloads_events(
    browser: Any, served: Served, tmp_path: Path
) -> None:
    page = _page(browser, served)
    _login(page, served.admin)
    month = datetime.now(UTC).strftime("%Y-%m")
    page.get_by_label("Period").fill(month)
    page.get_by_label("Time zone").fill("Europe/Berlin")
    page.get_by_role("button", name="Show").click()
    page.wait_for_url(f"**/?period={month}&tz=Europe%2FBerlin")
    assert "in Europe/Berlin" in page.locator("h1").inner_text()
    row = page.locator('#projects tr[data-project="alpha"]')
    assert row.locator("td").nth(3).inner_text() == "4"
    assert row.locator("svg.burn").count() == 1
    page.screenshot(path=str(tmp_path / "overview.png"), full_page=True)
    _keep(tmp_path / "overview.png")

    row.get_by_role("link", name="alpha").click()
    page.wait_for_url(f"**/projects/alpha?period={month}&tz=Europe%2FBerlin")
    assert page.locator("#daily-chart").is_visible() and page.locator("#model-chart").is_visible()
    assert page.locator('[data-figure="card.calls"]').inner_text() == "4"
    page.screenshot(path=str(tmp_path / "project.png"), full_page=True)
    _keep(tmp_path / "project.png")

    page.get_by_role("link", name="Budgets").click()
    form = page.get_by_role("form", name="Budget of alpha")
    form.get_by_label("Monthly USD").fill("42.50")
    form.get_by_label("Hard stop").check()
    form.get_by_role("button", name="Save").click()
    page.wait_for_url("**/budgets")
    budget = page.locator('#budgets tr[data-project="alpha"]')
    assert budget.locator("td").nth(1).inner_text() == "$42.50"
    assert budget.locator("td").nth(5).inner_text() == "yes"
    form = page.get_by_role("form", name="Budget of alpha")
    form.get_by_label("Monthly USD").fill("not money")
    form.get_by_role("button", name="Save").click()
    assert "monthly budget" in page.get_by_role("alert").inner_text()

    page.goto(f"/events?period={month}")
    page.get_by_label("Project").fill("alpha")
    page.get_by_label("Model").fill("gpt-oss-120b")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url("**/events?**project=alpha**")
    assert page.locator("#events tbody tr").count() == 3
    with page.expect_download() as info:
        page.get_by_role("link", name="Download CSV").click()
    path = tmp_path / "events.csv"
    info.value.save_as(path)
    rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))
    assert len(rows) == 3 and {r["project"] for r in rows} == {"alpha"}
    assert {r["model"] for r in rows} == {"gpt-oss-120b"}
    page.context.close()


def test_a_viewer_sees_only_its_project(browser: Any, served: Served) -> None:
    page = _page(browser, served)
    _login(page, served.viewer("alpha"))
    for path in ("/", "/projects/alpha", "/budgets", "/alerts", "/prices", "/events"):
        page.goto(path)
        text = page.locator("body").inner_text()
        assert "beta" not in text and "svg onload" not in text, path
    assert page.goto("/projects/beta").status == 404
    page.goto("/budgets")
    assert page.get_by_role("form", name="Budget of alpha").count() == 0
    page.context.close()


def test_hostile_names_run_no_script(browser: Any, served: Served) -> None:
    page = _page(browser, served)
    dialogs: list[str] = []
    errors: list[str] = []

    def on_dialog(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    _login(page, served.admin)

    paths = ["/", "/budgets", "/prices", "/events", f"/projects/{quote(HOSTILE_PROJECT, safe='')}"]
    paths.append("/events?" + "tag=" + quote(f"k={HOSTILE_TAG}", safe=""))
    for path in paths:
        response = page.goto(path)
        assert response is not None and response.status == 200, path
    page.goto(f"/projects/{quote(HOSTILE_PROJECT, safe='')}")
    assert HOSTILE_MODEL in (page.locator("#model-chart").text_content() or "")
    assert HOSTILE_PROJECT in page.locator("h1").inner_text()
    page.goto("/events")
    assert page.get_by_text(f"k={HOSTILE_TAG}").count() == 1
    assert page.locator("img").count() == 0
    assert dialogs == [] and errors == []
    page.context.close()


def test_every_page_fits_a_phone_screen(browser: Any, served: Served) -> None:
    """At 375 px (a small phone) no page is wider than the screen: tables scroll inside their
    own box, the header and the pickers wrap; and every form control has a label."""
    context = browser.new_context(base_url=served.base_url, viewport={"width": 375, "height": 740})
    page = context.new_page()
    _login(page, served.admin)
    for path in ("/", "/projects/alpha", "/budgets", "/alerts", "/prices", "/events", "/login"):
        page.goto(path)
        width, screen = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        assert width <= screen, f"{path} is {width} px wide on a {screen} px screen"
        unlabelled = page.evaluate(
            """() => [...document.querySelectorAll('input:not([type=hidden]), select, textarea')]
                 .filter(el => !el.labels?.length && !el.getAttribute('aria-label'))
                 .map(el => el.name)"""
        )
        assert unlabelled == [], f"{path}: unlabelled controls {unlabelled}"
        if path == "/":
            # each budget's burn bar is drawn: its spent part is filled, and no box style leaks
            # onto the chart (a level class once shared its name with the warning box)
            bars = page.evaluate(
                """() => [...document.querySelectorAll('svg.burn')].map(svg => [
                     getComputedStyle(svg.querySelector('rect.spent')).fill,
                     getComputedStyle(svg).borderTopWidth, getComputedStyle(svg).paddingTop])"""
            )
            assert bars and all(
                fill not in ("none", "rgb(0, 0, 0)") and border == "0px" and pad == "0px"
                for fill, border, pad in bars
            ), bars
    context.close()
