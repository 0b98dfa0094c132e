"""The dashboard over real HTTP on SQLite and PostgreSQL: login and its cookie, the throttle,
CSRF, forged sessions, a viewer's scope on every page, hostile names escaped, budget forms, and
the money rounding people read."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from ledger.budgets.budgets import set_budget
from ledger.service.views import money_text
from ledger.store.rollup import rollup
from tests.helpers import make_event, write_events
from tests.service._serve import Served, serve

HOSTILE_MODEL = "<script>alert(1)</script>"
HOSTILE_TAG = '"><img src=x onerror=alert(1)>'
PAGES = ("/", "/budgets", "/alerts", "/prices", "/events")


def _csrf(html: str) -> str:
    m = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert m, "the page has no CSRF field"
    return m.group(1)


def login(served: Served, token: str) -> httpx.Client:
    client = served.client()
    form = client.get("/login")
    assert form.status_code == 200
    r = client.post("/login", data={"token": token, "csrf": _csrf(form.text), "next": "/"})
    assert r.status_code == 303, r.text
    return client


class Tracked(Served):
    """A served ledger whose clients are closed when the test ends."""

    opened: list[httpx.Client]

    def client(self, token: str | None = None) -> httpx.Client:
        c = super().client(token)
        self.opened.append(c)
        return c


@pytest.fixture
def served(engine: sa.Engine) -> Iterator[Served]:
    now = datetime.now(UTC)
    write_events(
        engine,
        [
            make_event(occurred_at=now, project="alpha", tags=(("feature", "chat"),)),
            make_event(occurred_at=now, project="alpha", status="error", http_status=500, usage=None),
            make_event(
                occurred_at=now, project="beta", requested_model=HOSTILE_MODEL, tags=(("k", HOSTILE_TAG),)
            ),
        ],
    )
    rollup(engine)
    set_budget(engine, "alpha", monthly="10.00")
    set_budget(engine, "beta", monthly="5.00", hard=True)
    with serve(engine) as s:
        tracked = Tracked(s.base_url, s.admin, s.engine)
        tracked.opened = []
        yield tracked
        for c in tracked.opened:
            c.close()


@pytest.mark.parametrize(
    ("nanos", "text"),
    [
        (0, "$0.00"),
        (12_345_678_901, "$12.35"),
        (1_234_567_890_123, "$1,234.57"),
        (10_000_000, "$0.01"),
        (1_234_567, "$0.001235"),
        (1, "$0.000000001"),
        (9_999_999, "$0.01"),
        (-5_000_000_000, "-$5.00"),
        (-123_456, "-$0.0001235"),
        (4_999_999, "$0.005000"),
    ],
)
def test_money_is_rounded_for_people(nanos: int, text: str) -> None:
    assert money_text(nanos) == text


def test_login_sets_a_strict_httponly_session_cookie(served: Served) -> None:
    client = served.client()
    form = client.get("/login?next=/budgets")
    assert 'for="token"' in form.text and 'name="viewport"' in form.text
    assert "ledger_login=" in form.headers["set-cookie"]
    r = client.post("/login", data={"token": served.admin, "csrf": _csrf(form.text), "next": "/budgets"})
    assert r.status_code == 303 and r.headers["location"] == "/budgets"
    cookie = next(c for c in r.headers.get_list("set-cookie") if c.startswith("ledger_session="))
    flags = cookie.lower()
    assert "httponly" in flags and "samesite=strict" in flags and "path=/" in flags and "max-age=" in flags
    assert "secure" not in flags  # plain http on loopback
    assert client.get("/").status_code == 200


@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example/", "/\\evil"])
def test_login_goes_only_to_local_paths(served: Served, target: str) -> None:
    client = served.client()
    form = client.get("/login")
    r = client.post("/login", data={"token": served.admin, "csrf": _csrf(form.text), "next": target})
    assert r.status_code == 303 and r.headers["location"] == "/"


def test_a_bad_token_shows_the_form_again_and_the_throttle_answers_429(served: Served) -> None:
    client = served.client()
    csrf = _csrf(client.get("/login").text)
    r = client.post("/login", data={"token": "clg_nope", "csrf": csrf})
    assert r.status_code == 401 and 'role="alert"' in r.text and 'id="token"' in r.text
    statuses = [client.post("/login", data={"token": "clg_nope", "csrf": csrf}).status_code for _ in range(6)]
    assert statuses[-1] == 429, statuses
    r = client.post("/login", data={"token": served.admin, "csrf": csrf})
    assert r.status_code == 429 and "Retry-After" in r.headers  # even the right token waits


def test_csrf_missing_or_forged_is_403(served: Served) -> None:
    client = served.client()
    client.get("/login")
    assert client.post("/login", data={"token": served.admin}).status_code == 403
    assert client.post("/login", data={"token": served.admin, "csrf": "0" * 64}).status_code == 403
    # a forged token that is not ASCII is refused the same way (hmac.compare_digest raises on it)
    assert client.post("/login", data={"token": served.admin, "csrf": "é" * 64}).status_code == 403
    admin = login(served, served.admin)
    for data in ({}, {"csrf": "f" * 64}, {"csrf": "ü"}):
        r = admin.post("/budgets/alpha", data={**data, "monthly": "1"})
        assert r.status_code == 403 and "CSRF" in r.text
        assert admin.post("/budgets/alpha/delete", data=data).status_code == 403
        assert admin.post("/logout", data=data).status_code == 403
    assert "10.000000000" in admin.get("/budgets").text  # unchanged


def test_no_or_forged_session_goes_to_login(served: Served) -> None:
    anon = served.client()
    r = anon.get("/events?status=ok")
    assert r.status_code == 303 and r.headers["location"].startswith("/login?next=%2Fevents%3Fstatus%3Dok")
    anon.cookies.set("ledger_session", "x" * 43)
    for path in PAGES + ("/projects/alpha",):
        r = anon.get(path)
        assert r.status_code == 303 and r.headers["location"].startswith("/login"), path
    assert anon.get("/static/dashboard.css").status_code == 200


def test_logout_ends_the_session(served: Served) -> None:
    client = login(served, served.admin)
    r = client.post("/logout", data={"csrf": _csrf(client.get("/").text)})
    assert r.status_code == 303
    client.cookies.clear()
    assert client.get("/").status_code == 303


def test_a_viewer_sees_only_its_project_everywhere(served: Served) -> None:
    viewer = login(served, served.viewer("alpha"))
    for path in PAGES + ("/projects/alpha",):
        r = viewer.get(path)
        assert r.status_code == 200, path
        assert "beta" not in r.text and HOSTILE_MODEL.lower()[:7] not in r.text.lower(), path
    assert "alpha" in viewer.get("/").text
    missing = viewer.get("/projects/beta")
    unknown = viewer.get("/projects/nope")
    assert missing.status_code == unknown.status_code == 404
    assert missing.text.replace("beta", "P") == unknown.text.replace("nope", "P")  # tells nothing apart
    assert viewer.get("/events?project=beta").status_code == 404


def test_hostile_names_are_escaped(served: Served) -> None:
    admin = login(served, served.admin)
    for path in ("/projects/beta", "/events", "/prices", "/", "/budgets"):
        r = admin.get(path)
        assert r.status_code == 200, path
        assert "<script>alert" not in r.text and "<img src=x" not in r.text, path
    r = admin.get("/events", params={"model": HOSTILE_MODEL})
    assert r.status_code == 200 and r.text.count("data-event=") == 1 and "<script>alert" not in r.text
    project = admin.get("/projects/beta").text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in project
    events = admin.get("/events", params={"tag": f"k={HOSTILE_TAG}"}).text
    assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in events or "&quot;&gt;&lt;img" in events
    assert "<img" not in events


def test_bad_period_zone_or_cursor_is_a_400_page(served: Served) -> None:
    admin = login(served, served.admin)
    for path in ("/?period=2026-13", "/?tz=Mars/Olympus", "/events?cursor=zzz", "/events?status=nope"):
        r = admin.get(path)
        assert r.status_code == 400, path
        assert r.headers["content-type"].startswith("text/html") and 'role="alert"' in r.text


def test_overview_and_project_pages(served: Served) -> None:
    admin = login(served, served.admin)
    page = admin.get("/", params={"tz": "Europe/Berlin"}).text
    assert 'class="burn' in page and 'href="/projects/alpha?tz=Europe%2FBerlin"' in page
    assert re.search(r'title="[0-9.]+ USD">\$', page)
    project = admin.get("/projects/alpha", params={"tz": "Europe/Berlin"}).text
    assert 'id="daily-chart"' in project and 'id="model-chart"' in project and "Top tags" in project
    assert "style=" not in project and "<script" not in project


def test_events_pages_by_cursor_and_links_the_csv(served: Served) -> None:
    write_events(served.engine, [make_event(project="gamma") for _ in range(60)])
    admin = login(served, served.admin)
    first = admin.get("/events", params={"project": "gamma"})
    assert first.text.count("data-event=") == 50
    m = re.search(r'id="next" href="([^"]+)"', first.text)
    assert m and "project=gamma" in m.group(1)
    second = admin.get(m.group(1).replace("&amp;", "&"))
    assert second.text.count("data-event=") == 10 and 'id="next"' not in second.text
    csv_link = re.search(r'id="csv" href="([^"]+)"', first.text)
    assert csv_link
    csv = admin.get(csv_link.group(1).replace("&amp;", "&"))
    assert csv.status_code == 200 and len(csv.text.strip().splitlines()) == 61


def test_budget_forms_for_an_admin_and_not_for_a_viewer(served: Served) -> None:
    admin = login(served, served.admin)
    csrf = _csrf(admin.get("/budgets").text)
    r = admin.post(
        "/budgets/alpha",
        data={
            "csrf": csrf,
            "monthly": "25.50",
            "thresholds": "50,90",
            "timezone": "Europe/Berlin",
            "hard": "1",
        },
    )
    assert r.status_code == 303
    page = admin.get("/budgets").text
    assert 'value="25.500000000"' in page and "Europe/Berlin" in page
    bad = admin.post("/budgets/alpha", data={"csrf": csrf, "monthly": "ten dollars"})
    assert bad.status_code == 400 and 'role="alert"' in bad.text and "Traceback" not in bad.text
    assert admin.post("/budgets", data={"csrf": csrf, "project": "gamma", "daily": "1"}).status_code == 303
    assert admin.post("/budgets/gamma/delete", data={"csrf": csrf}).status_code == 303
    assert admin.post("/budgets/gamma/delete", data={"csrf": csrf}).status_code == 404
    assert 'data-project="gamma"' not in admin.get("/budgets").text

    viewer = login(served, served.viewer("alpha"))
    vpage = viewer.get("/budgets").text
    assert '<form class="budget"' not in vpage
    vcsrf = _csrf(vpage)
    assert viewer.post("/budgets/alpha", data={"csrf": vcsrf, "monthly": "1"}).status_code == 403
    assert viewer.post("/budgets/alpha/delete", data={"csrf": vcsrf}).status_code == 403
    assert 'value="25.500000000"' in admin.get("/budgets").text


def _luminance(hex_colour: str) -> float:
    channels = [int(hex_colour[i : i + 2], 16) / 255 for i in (0, 2, 4)]
    lin = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def test_every_text_colour_reads_on_white_at_wcag_aa() -> None:
    """Every ``color:`` in the stylesheet (on the white page, or on its own rule's background)
    has a contrast ratio of at least 4.5:1, WCAG 2's AA level for body text."""
    from ledger.service import views

    css = (Path(views.__file__).parent / "templates" / "dashboard.css").read_text()
    checked = 0
    for rule in re.findall(r"\{([^}]*)\}", css):
        fg = re.search(r"(?<![-\w])color:#([0-9a-fA-F]{6})", rule)
        if fg is None:
            continue
        bg = re.search(r"background:#([0-9a-fA-F]{6})", rule)
        light, dark = sorted(
            [_luminance(fg.group(1)), _luminance(bg.group(1) if bg else "ffffff")], reverse=True
        )
        ratio = (light + 0.05) / (dark + 0.05)
        if bg is None and _luminance(fg.group(1)) > 0.5:
            continue  # light text sits on a dark rule elsewhere (the header, buttons)
        assert ratio >= 4.5, f"{rule.strip()[:80]}: contrast {ratio:.2f}"
        checked += 1
    assert checked >= 8
