"""The JSON API over real HTTP (uvicorn on a loopback port), on SQLite and PostgreSQL: auth and
scoping, exact money that agrees with the CSV report and the FOCUS export, cursor pagination,
budgets CRUD, and hostile requests that each get one problem+json, never a 500."""

from __future__ import annotations

import csv
import io
import json
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from ledger import calendar
from ledger.budgets import budgets
from ledger.exports import billing
from ledger.money import Money, usd
from ledger.reports import build as reports
from ledger.reports.formats import to_csv
from ledger.service.auth import create_token, revoke_token
from ledger.store import rollup
from tests.helpers import make_event, random_event, write_events
from tests.service._serve import Served, serve

PROBLEM = "application/problem+json"
NOV = (datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC))
GETS = (
    "/api/v1/spend",
    "/api/v1/overview",
    "/api/v1/events",
    "/api/v1/events.csv",
    "/api/v1/budgets",
    "/api/v1/alerts",
    "/api/v1/prices",
    "/api/v1/openapi.json",
    "/metrics",
)


def _month(engine: sa.Engine, seed: int = 2026, n: int = 600) -> None:
    """A generated November (and a few events on either side), rolled up."""
    rng = random.Random(seed)
    span = int((NOV[1] - NOV[0]).total_seconds())
    events = [
        random_event(NOV[0] - timedelta(hours=6) + timedelta(seconds=rng.randint(0, span + 12 * 3600)), rng)
        for _ in range(n)
    ]
    write_events(engine, events)
    rollup.rollup(engine)


def _problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM), r.headers
    body: dict[str, Any] = r.json()
    assert body["status"] == status and isinstance(body["detail"], str) and "\n" not in body["detail"]
    assert "Traceback" not in r.text
    return body


@pytest.fixture
def served(engine: sa.Engine) -> Any:
    with serve(engine) as s:
        yield s


# -- auth ------------------------------------------------------------------------------------------


def test_nothing_but_health_answers_without_a_token(served: Served) -> None:
    with served.client() as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        assert c.get("/readyz").json()["status"] == "ok"
        for path in (*GETS, "/no-such-page", "/api/v1/no-such-endpoint"):  # unknown paths say nothing more
            body = _problem(c.get(path), 401)
            assert "token" in body["detail"]
        _problem(c.post("/api/v1/rollup"), 401)
        _problem(c.put("/api/v1/budgets/alpha", json={"monthly": "1"}), 401)
        _problem(
            c.get("/api/v1/spend", headers={"Authorization": "Bearer clg_000000000000_" + "A" * 43}), 401
        )
    with served.client() as c:
        c.cookies.set("ledger_session", "forged-forged-forged-forged")
        _problem(c.get("/api/v1/spend"), 401)


def test_security_headers_on_every_answer(served: Served) -> None:
    with served.client(served.admin) as c:
        for path in ("/healthz", "/api/v1/spend", "/api/v1/nothing-here"):
            h = c.get(path).headers
            assert (
                "default-src 'none'" in h["content-security-policy"]
                and "script-src" not in h["content-security-policy"]
            )
            assert h["x-content-type-options"] == "nosniff" and h["x-frame-options"] == "DENY"
            assert h["cache-control"] == "no-store"


def test_revoked_and_expired_tokens_stop_working(served: Served, engine: sa.Engine) -> None:
    made = create_token(engine, "viewer")
    old = create_token(
        engine, "viewer", expires=timedelta(hours=1), now=datetime.now(UTC) - timedelta(hours=2)
    )
    with served.client(made.token) as c:
        assert c.get("/api/v1/budgets").status_code == 200
        assert revoke_token(engine, made.info.token_id)
        _problem(c.get("/api/v1/budgets"), 401)
    with served.client(old.token) as c:
        _problem(c.get("/api/v1/budgets"), 401)
    with engine.connect() as conn:  # only the hash is kept
        stored = " ".join(str(v) for row in conn.execute(sa.text("SELECT * FROM api_tokens")) for v in row)
    assert made.token.split("_")[-1] not in stored and made.info.token_id in stored


def test_failed_tokens_from_one_address_are_slowed_down(served: Served) -> None:
    bad = {"Authorization": "Bearer clg_0123456789ab_" + "B" * 43}
    with served.client() as c:
        codes = [c.get("/api/v1/spend", headers=bad).status_code for _ in range(8)]
        assert codes[:5] == [401] * 5 and 429 in codes[5:]
        throttled = c.get("/api/v1/spend", headers={"Authorization": f"Bearer {served.admin}"})
        body = _problem(throttled, 429)  # even a good token waits out the delay
        assert int(throttled.headers["retry-after"]) >= 1 and "try again" in body["detail"]


def test_a_viewer_sees_only_its_projects_everywhere(served: Served, engine: sa.Engine) -> None:
    _month(engine)
    budgets.set_budget(engine, "alpha", monthly="5")
    budgets.set_budget(engine, "beta", monthly="5")
    viewer = served.viewer("beta")
    q = {"period": "2026-11"}
    with served.client(viewer) as c:
        for path in GETS:
            r = c.get(path, params=q if "spend" in path or "events" in path or "overview" in path else None)
            assert r.status_code == 200, (path, r.text)
            assert "alpha" not in r.text and "gamma" not in r.text, path
        assert "beta" in c.get("/api/v1/spend", params=q).text
        # another project is a 404 with the same words as one that does not exist
        for p in ("alpha", "no-such-project"):
            assert (
                _problem(c.get("/api/v1/spend", params={**q, "project": p}), 404)["detail"]
                == "no such project"
            )
            _problem(c.get("/api/v1/events", params={**q, "project": p}), 404)
            _problem(c.get("/api/v1/events.csv", params={**q, "project": p}), 404)
            _problem(c.get("/api/v1/alerts", params={"project": p}), 404)
            _problem(c.get(f"/api/v1/budgets/{p}"), 404)
        # and it changes nothing
        _problem(c.put("/api/v1/budgets/beta", json={"monthly": "9"}), 403)
        _problem(c.delete("/api/v1/budgets/beta"), 403)
        _problem(c.post("/api/v1/rollup"), 403)


# -- the same numbers everywhere ------------------------------------------------------------------


def test_api_csv_report_and_focus_export_agree_to_the_nano_dollar(served: Served, engine: sa.Engine) -> None:
    _month(engine, n=900)
    month = calendar.parse_period("2026-11")
    with served.client(served.admin) as c:
        spend = c.get("/api/v1/spend", params={"period": "2026-11", "tz": "UTC"}).json()
        overview = c.get("/api/v1/overview", params={"period": "2026-11", "tz": "UTC"}).json()
    report = reports.build_report(engine, month, UTC)
    csv_totals = {
        r["figure"]: r["value"]
        for r in csv.DictReader(io.StringIO(to_csv(report)))
        if r["section"] == "totals"
    }
    focus = billing.export_billing(engine, "2026-11", now=datetime(2026, 12, 2, tzinfo=UTC))
    focus_by_project: dict[str, Decimal] = {}
    for row in focus.rows:
        focus_by_project[row["SubAccountName"]] = (
            focus_by_project.get(row["SubAccountName"], Decimal(0)) + row["BilledCost"]
        )
    with engine.connect() as conn:  # and an independent sum over the raw events
        raw = {
            p: int(v or 0)
            for p, v in conn.execute(
                sa.text(
                    "SELECT project, SUM(cost_nanos) FROM events WHERE occurred_at >= :s AND occurred_at < :e GROUP BY project"
                ),
                {"s": _bind(engine, NOV[0]), "e": _bind(engine, NOV[1])},
            )
        }
    assert spend["totals"]["cost_usd"] == csv_totals["cost_usd"] == str(Money(sum(raw.values())))
    assert focus.billed == Money(sum(raw.values()))
    api_by_project = {r["project"]: r["cost_usd"] for r in spend["by_project"]}
    for p, nanos in raw.items():
        assert api_by_project[p] == str(Money(nanos)) == str(usd(focus_by_project[p]))
    for row in overview["projects"]:
        assert row["cost_usd"] == api_by_project[row["project"]]
    # money is never a JSON number anywhere in the answer
    assert all(isinstance(v, str) for k, v in spend["totals"].items() if k.endswith("_usd"))


def _bind(engine: sa.Engine, when: datetime) -> object:
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f") if engine.dialect.name == "sqlite" else when


# -- events ----------------------------------------------------------------------------------------


def test_cursor_pages_cover_every_event_once_newest_first(served: Served, engine: sa.Engine) -> None:
    t = datetime(2026, 11, 10, 12, tzinfo=UTC)
    same = [make_event(occurred_at=t, project="alpha") for _ in range(9)]  # ties on the timestamp
    rest = [
        make_event(occurred_at=t - timedelta(minutes=i), project="alpha", tags=(("user", f"u{i % 3}"),))
        for i in range(1, 30)
    ]
    write_events(engine, same + rest)
    seen: list[str] = []
    with served.client(served.admin) as c:
        cursor = None
        while True:
            params: dict[str, Any] = {"period": "2026-11", "limit": 4}
            if cursor:
                params["cursor"] = cursor
            page = c.get("/api/v1/events", params=params).json()
            seen += [e["event_id"] for e in page["events"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert sorted(seen) == sorted(e.event_id for e in same + rest) and len(seen) == len(set(seen))
        times = [
            e.occurred_at
            for e in sorted(same + rest, key=lambda e: (e.occurred_at, e.event_id), reverse=True)
        ]
        assert [
            e.event_id for e in sorted(same + rest, key=lambda e: (e.occurred_at, e.event_id), reverse=True)
        ] == seen
        assert times == sorted(times, reverse=True)
        tagged = c.get("/api/v1/events", params={"period": "2026-11", "tag": "user=u1", "limit": 500}).json()
        assert {e["event_id"] for e in tagged["events"]} == {
            e.event_id for i, e in enumerate(rest, 1) if i % 3 == 1
        }
        download = c.get("/api/v1/events.csv", params={"period": "2026-11", "tag": "user=u1"})
        assert download.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(download.text)))
        assert {r["event_id"] for r in rows} == {e["event_id"] for e in tagged["events"]}


def test_the_csv_download_guards_formulas(served: Served, engine: sa.Engine) -> None:
    write_events(
        engine, [make_event(occurred_at=datetime(2026, 11, 3, tzinfo=UTC), requested_model="=HYPERLINK(1)")]
    )
    with served.client(served.admin) as c:
        text = c.get("/api/v1/events.csv", params={"period": "2026-11"}).text
    row = next(csv.DictReader(io.StringIO(text)))
    assert row["model"] == "'=HYPERLINK(1)"


# -- budgets ---------------------------------------------------------------------------------------


def test_budgets_crud_with_exact_status(served: Served, engine: sa.Engine) -> None:
    now = datetime.now(UTC)
    write_events(engine, [make_event(occurred_at=now - timedelta(minutes=5), project="alpha")])
    rollup.rollup(engine)
    with served.client(served.admin) as c:
        put = c.put("/api/v1/budgets/alpha", json={"monthly": "0.01", "thresholds": [50, 100], "hard": True})
        assert put.status_code == 200, put.text
        got = c.get("/api/v1/budgets/alpha").json()
        assert got["monthly_usd"] == "0.010000000" and got["hard"] is True and got["thresholds"] == [50, 100]
        status = got["status"]
        spent = Decimal(status["spent_usd"])
        assert spent > 0 and Decimal(status["remaining_usd"]) == Decimal("0.01") - spent
        assert Decimal(status["forecast_usd"]) >= spent
        assert [b["project"] for b in c.get("/api/v1/budgets").json()["budgets"]] == ["alpha"]
        assert c.delete("/api/v1/budgets/alpha").json() == {"project": "alpha", "removed": True}
        _problem(c.delete("/api/v1/budgets/alpha"), 404)
        _problem(c.get("/api/v1/budgets/alpha"), 404)


@pytest.mark.parametrize(
    "body",
    [
        {"monthly": 3},  # money is never a JSON number
        {"monthly": 3.5},
        {"monthly": "-1"},
        {"monthly": "1e400"},
        {"monthly": "abc"},
        {"monthly": "1", "thresholds": [0, 500]},
        {"monthly": "1", "timezone": "Mars/Olympus"},
        {"monthly": "1", "timezone": "Asia/Kathmandu"},  # not whole quarter hours? (it is: 5:45)
        {"monthly": "1", "surprise": True},
        {"daily": "1", "hard": "maybe"},
    ],
)
def test_bad_budgets_are_one_line_problems(served: Served, body: dict[str, Any]) -> None:
    with served.client(served.admin) as c:
        r = c.put("/api/v1/budgets/alpha", json=body)
    if body.get("timezone") == "Asia/Kathmandu":
        assert r.status_code == 200, r.text
        return
    _problem(r, 400)


# -- hostile requests ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/api/v1/spend", {"period": "2026-13"}),
        ("/api/v1/spend", {"period": "'; DROP TABLE events; --"}),
        ("/api/v1/spend", {"tz": "Mars/Olympus"}),
        ("/api/v1/spend", {"tz": "../../etc/passwd"}),
        ("/api/v1/spend", {"tz": "x" * 65}),
        ("/api/v1/events", {"cursor": "not-a-cursor"}),
        ("/api/v1/events", {"cursor": "WyJ4IiwieSJd"}),  # base64 of ["x","y"]
        ("/api/v1/events", {"cursor": "W1tbW1tbW1tbW1tbW1tbW1tbW1tbXV1dXV1dXV1dXV1dXV1dXV1dXV1dXV0"}),
        ("/api/v1/events", {"limit": "0"}),
        ("/api/v1/events", {"limit": "10000000000000000000000"}),
        ("/api/v1/events", {"limit": "ten"}),
        ("/api/v1/events", {"status": "paid"}),
        ("/api/v1/events", {"since": "yesterday"}),
        ("/api/v1/events", {"since": "9999-12-31T23:59:59+14:00"}),
        ("/api/v1/events", {"since": "2026-11-20", "until": "2026-11-01"}),
        ("/api/v1/events", {"tag": "novalue"}),
        ("/api/v1/alerts", {"limit": "-1"}),
    ],
)
def test_hostile_queries_are_one_line_problems(served: Served, path: str, params: dict[str, str]) -> None:
    with served.client(served.admin) as c:
        _problem(c.get(path, params=params), 400)


def test_oversized_and_malformed_requests(served: Served) -> None:
    with served.client(served.admin) as c:
        _problem(c.get("/api/v1/spend?" + "a=1&" * 2000), 414)
        _problem(c.put("/api/v1/budgets/alpha", content=b"{" + b" " * 70_000 + b"}"), 413)
        _problem(
            c.put(
                "/api/v1/budgets/alpha", content=b"{not json", headers={"content-type": "application/json"}
            ),
            400,
        )
        chunks = (b"x" * 10_000 for _ in range(10))  # no Content-Length: counted as it arrives
        _problem(
            c.put("/api/v1/budgets/alpha", content=chunks, headers={"content-type": "application/json"}), 413
        )
        _problem(c.get("/api/v1/spend", params={"period": "2026-11\x00"}), 400)
        _problem(c.put("/api/v1/budgets/=evil", json={"monthly": "1"}), 400)


def test_openapi_describes_the_api(served: Served) -> None:
    with served.client(served.admin) as c:
        doc = c.get("/api/v1/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    for path in ("/api/v1/spend", "/api/v1/events", "/api/v1/budgets/{project}", "/api/v1/rollup"):
        assert path in doc["paths"], path
    assert set(doc["paths"]["/api/v1/budgets/{project}"]) >= {"get", "put", "delete"}
    # errors are documented as they are answered: problems, 400 for validation (never FastAPI's 422)
    for item in doc["paths"].values():
        for operation in item.values():
            responses = operation["responses"]
            assert "422" not in responses and {"400", "401", "404"} <= set(responses)
            assert "application/problem+json" in responses["400"]["content"]
    assert json.dumps(doc).count("openapi.json") == 0  # the document itself is not listed


def test_rollup_is_admin_only_and_rolls_up(served: Served, engine: sa.Engine) -> None:
    write_events(engine, [make_event(occurred_at=datetime.now(UTC))])
    with served.client(served.admin) as c:
        assert c.post("/api/v1/rollup").json()["events"] == 1
        assert c.post("/api/v1/rollup").json()["events"] == 0


def test_an_unexpected_error_is_one_logged_line_and_a_500_problem(
    engine: sa.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug in a handler (here a route made to fail) answers a 500 problem with no detail of the
    error, logs one line naming the exception type, and no traceback reaches the server's log."""
    from ledger.service.app import create_app
    from ledger.service.server import ThreadedServer

    guarded = create_app(engine)

    def boom() -> None:
        raise RuntimeError("secret-ish detail sk-live-123")

    guarded.app.add_api_route("/api/v1/boom", boom, methods=["GET"])
    token = create_token(engine, "admin").token
    with ThreadedServer(engine, app=guarded) as server, httpx.Client(base_url=server.base_url) as c:
        r = c.get("/api/v1/boom", headers={"Authorization": f"Bearer {token}"})
        again = c.get("/healthz")  # the connection and the server are fine afterwards
    body = _problem(r, 500)
    assert "sk-live" not in r.text and "RuntimeError" not in body["detail"]
    assert again.status_code == 200
    logged = "\n".join(rec.getMessage() for rec in caplog.records)
    assert "RuntimeError" in logged and "sk-live" not in logged and "Traceback" not in caplog.text
