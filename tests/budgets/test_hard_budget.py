"""Hard budgets: a project whose hard monthly budget is spent has its paid-model calls refused.

The whole way, with real parts: calls through the official SDKs and the wrapper client against
the loopback stand-in, recorded into SQLite and PostgreSQL; ``check.check`` keeps the
``budget_stops`` table; the journal's writer publishes the stop file; the call path refuses
(nothing reaches the upstream) and records the refusal. See :mod:`ledger.call.stops`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

import ledger
from ledger import store
from ledger.budgets import budgets, check
from ledger.budgets import stops as budget_stops
from ledger.call import stops
from ledger.call.stops import Stop, StopList
from ledger.call.transport import RecordingTransport
from ledger.config import ConfigError, check_project
from ledger.money import Money, usd
from ledger.pricing import BUILTIN_PRICES, PriceBook
from ledger.store.schema import BudgetStopRow
from ledger.testing import StandIn
from tests.budgets.test_alerts import spend
from tests.call.test_sdk import FLAVOURS, PROJECT, Flavour, Session, _raised, _run
from tests.helpers import fetch_events
from tests.system.test_hostile import _NAMES

MSG = [{"role": "user", "content": "count to three please"}]
NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


# -- the stop file, as the call path reads it ----------------------------------------------------


AHEAD = datetime.now(UTC).replace(microsecond=0) + timedelta(days=2)


def _stop(project: str = "p", until: datetime = AHEAD, spent: str = "12.5") -> Stop:
    return Stop(project, "2026-11", until, usd("10"), usd(spent))


def test_no_stop_file_refuses_nothing(tmp_path: Path) -> None:
    assert StopList(tmp_path / stops.STOP_FILE, check_s=0).refused("p", "cerebras", "gpt-oss-120b") is None


def test_stop_refuses_paid_and_unknown_models_not_free_ones(tmp_path: Path) -> None:
    assert stops.publish(tmp_path, [_stop("p")], {"lava": ["llama3.1-8b"], "cerebras": []})
    seen = StopList(tmp_path / stops.STOP_FILE, check_s=0)
    hit = seen.refused("p", "cerebras", "gpt-oss-120b")
    assert hit is not None and hit.project == "p" and hit.spent == usd("12.5") and hit.budget == usd("10")
    assert seen.refused("p", "cerebras", "llama3.1-8b") is not None  # paid on the direct route
    assert seen.refused("p", "lava", "llama3.1-8b") is None  # free through Lava
    assert seen.refused("p", "lava", "no-such-model") is not None  # not known to be free
    assert seen.refused("p", "lava", None) is not None
    assert seen.refused("other", "cerebras", "gpt-oss-120b") is None
    assert "'p'" in hit.message("gpt-oss-120b") and "12.500000000 of 10.000000000 USD" in hit.message(
        "gpt-oss-120b"
    )


def test_stop_lapses_at_month_end(tmp_path: Path) -> None:
    stops.publish(tmp_path, [_stop("p", until=datetime.now(UTC) - timedelta(seconds=1))], {})
    assert StopList(tmp_path / stops.STOP_FILE, check_s=0).refused("p", "cerebras", "gpt-oss-120b") is None


def test_stop_file_changes_are_seen_and_unchanged_lists_not_rewritten(tmp_path: Path) -> None:
    seen = StopList(tmp_path / stops.STOP_FILE, check_s=0)
    assert seen.refused("p", "cerebras", "m") is None
    assert stops.publish(tmp_path, [_stop("p")], {})
    assert seen.refused("p", "cerebras", "m") is not None
    assert not stops.publish(tmp_path, [_stop("p")], {})  # same content: left alone
    assert oct((tmp_path / stops.STOP_FILE).stat().st_mode & 0o777) == "0o600"
    assert stops.publish(tmp_path, [_stop("q")], {})
    assert seen.refused("p", "cerebras", "m") is None and seen.refused("q", "cerebras", "m") is not None
    assert stops.publish(tmp_path, [], {}) and not (tmp_path / stops.STOP_FILE).exists()
    assert seen.refused("q", "cerebras", "m") is None
    assert [p.name for p in tmp_path.iterdir()] == []  # no temporary file left behind


def test_the_call_path_looks_at_most_once_per_interval(tmp_path: Path) -> None:
    seen = StopList(tmp_path / stops.STOP_FILE, check_s=3600)
    assert seen.refused("p", "cerebras", "m") is None
    stops.publish(tmp_path, [_stop("p")], {})
    assert seen.refused("p", "cerebras", "m") is None  # not looked at again yet
    seen._next = 0.0
    assert seen.refused("p", "cerebras", "m") is not None


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{",
        b"[]",
        b'{"version": 2, "stops": [], "free": {}}',
        b'{"version": 1, "stops": [{"project": "p"}], "free": {}}',
        b'{"version": 1, "stops": [{"project": "p", "period": "2026-11", '
        b'"until": "2026-12-01T00:00:00", "budget_usd": "1", "spent_usd": "2"}], '
        b'"free": {}}',
        b'{"version": 1, "stops": [{"project": "p", "period": "2026-11", '
        b'"until": "2099-12-01T00:00:00Z", "budget_usd": "1e999", "spent_usd": "2"}], '
        b'"free": {}}',
        b"\xff\xfe",
    ],
)
def test_an_unreadable_stop_file_enforces_nothing_and_says_so_once(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / stops.STOP_FILE).write_bytes(content)
    seen = StopList(tmp_path / stops.STOP_FILE, check_s=0)
    with caplog.at_level(logging.WARNING, logger="ledger"):
        assert seen.refused("p", "cerebras", "m") is None
        os.utime(tmp_path / stops.STOP_FILE, ns=(1, 1))  # changed again, still unreadable
        assert seen.refused("p", "cerebras", "m") is None
    warned = [r for r in caplog.records if "stop list" in r.getMessage()]
    assert len(warned) == 1 and str(tmp_path) in warned[0].getMessage()
    stops.publish(tmp_path, [_stop("p")], {})  # rewritten: enforced again
    assert seen.refused("p", "cerebras", "m") is not None


def test_free_models_include_aliases_and_follow_dates() -> None:
    book = PriceBook(BUILTIN_PRICES)
    free = book.free_models("lava", NOW)
    assert {"llama3.1-8b", "llama-3.3-70b", "qwen-3-32b"} <= free
    assert "gpt-oss-120b" not in free and book.free_models("cerebras", NOW) == frozenset()
    assert all(book.price_for("lava", m, NOW).free for m in free)  # type: ignore[union-attr]
    later = NOW + timedelta(days=1)
    from ledger.store.prices import new_point

    paid_now = new_point("lava", "llama3.1-8b", "0.10", "0.10", effective_from=later)
    dated = PriceBook([*BUILTIN_PRICES, paid_now])
    assert "llama3.1-8b" in dated.free_models("lava", NOW)
    assert "llama3.1-8b" not in dated.free_models("lava", later)


# -- the alerts check keeps budget_stops ---------------------------------------------------------


def _engine(url: str) -> sa.Engine:
    engine = store.make_engine(url)
    store.ensure_schema(engine)
    return engine


def _stop_rows(engine: sa.Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        return {r.project: r for r in conn.execute(sa.select(BudgetStopRow.__table__))}


def test_check_stops_a_spent_hard_budget_and_only_that(db_url: str) -> None:
    engine = _engine(db_url)
    try:
        budgets.set_budget(engine, "hard-spent", monthly="0.0007", hard=True, now=NOW)
        budgets.set_budget(engine, "hard-under", monthly="1", hard=True, now=NOW)
        budgets.set_budget(engine, "soft-spent", monthly="0.0007", now=NOW)
        budgets.set_budget(engine, "hard-no-amount", daily="0.0007", hard=True, now=NOW)
        for p in ("hard-spent", "hard-under", "soft-spent", "hard-no-amount"):
            spend(engine, p, [(NOW - timedelta(hours=1), 700_000)])  # exactly 0.0007 USD
        spend(engine, "hard-spent", [(NOW - timedelta(days=40), 350)])  # last month's: not this month's
        check.check(engine, now=NOW)
        rows = _stop_rows(engine)
        assert set(rows) == {"hard-spent"}  # reaching the budget exactly is spent
        r = rows["hard-spent"]
        assert (r.period, r.budget_nanos, r.spent_nanos) == ("2026-11", 700_000, 700_000)
        assert r.until == datetime(2026, 12, 1, tzinfo=UTC)
        with engine.connect() as conn:
            (s,) = budget_stops.read_stops(conn, NOW)
            assert s == Stop(
                "hard-spent", "2026-11", datetime(2026, 12, 1, tzinfo=UTC), Money(700_000), Money(700_000)
            )
            assert budget_stops.read_stops(conn, datetime(2026, 12, 1, tzinfo=UTC)) == []  # over at month end
        check.check(engine, now=NOW)  # idempotent
        assert set(_stop_rows(engine)) == {"hard-spent"}

        budgets.set_budget(
            engine, "hard-spent", monthly="0.0014", hard=True, now=NOW
        )  # raised: lifted at once
        assert _stop_rows(engine) == {}
        check.check(engine, now=NOW)
        assert _stop_rows(engine) == {}
        spend(engine, "hard-spent", [(NOW - timedelta(minutes=30), 700_000)])
        check.check(engine, now=NOW)
        assert _stop_rows(engine)["hard-spent"].spent_nanos == 1_400_000
        assert budgets.remove_budget(engine, "hard-spent")
        assert _stop_rows(engine) == {}
    finally:
        engine.dispose()


def test_stop_month_is_the_budgets_local_month(db_url: str) -> None:
    """Asia/Kolkata (+05:30): 2026-11-30T19:00Z is already December there."""
    engine = _engine(db_url)
    try:
        budgets.set_budget(engine, "k", monthly="0.0007", hard=True, timezone="Asia/Kolkata", now=NOW)
        late = datetime(2026, 11, 30, 19, 0, tzinfo=UTC)
        spend(
            engine, "k", [(datetime(2026, 11, 30, 18, 0, tzinfo=UTC), 700_000)]
        )  # still November in Kolkata
        check.check(engine, now=late)
        assert _stop_rows(engine) == {}  # December there: nothing spent yet
        check.check(engine, now=datetime(2026, 11, 30, 18, 15, tzinfo=UTC))
        r = _stop_rows(engine)["k"]
        assert r.period == "2026-11" and r.until == datetime(2026, 11, 30, 18, 30, tzinfo=UTC)
    finally:
        engine.dispose()


# -- end to end: refused on the call path ---------------------------------------------------------


def _wait(what: str, cond: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def fast_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer refreshes the stop file every round and the call path looks every time, so the
    test need not wait REFRESH_S / CHECK_S; the path they take is the one production takes."""
    monkeypatch.setattr(stops, "REFRESH_S", 0.0)
    monkeypatch.setattr(stops, "CHECK_S", 0.0)


def _spend_it(url: str, project: str) -> None:
    engine = _engine(url)
    try:
        budgets.set_budget(engine, project, monthly="0.000001", hard=True)
        check.check(engine)
        assert project in _stop_rows(engine)
    finally:
        engine.dispose()


def _stop_file(env: dict[str, str]) -> Path:
    return Path(env["LEDGER_SPOOL_DIR"]) / stops.STOP_FILE


def _refusals(url: str) -> list[dict[str, Any]]:
    return [r for r in fetch_events(url) if r["error_code"] == "hard_budget_spent"]


def _assert_refusal(row: dict[str, Any], model: str, route: str, source: str) -> None:
    assert row["status"] == "error" and row["http_status"] == 402
    assert row["error_type"] == "budget_exceeded_error" and row["requested_model"] == model
    assert row["cost_nanos"] == 0 and bool(row["priced"]) and not bool(row["usage_known"])
    assert row["route"] == route and row["source"] == source and "hard monthly budget" in row["note"]


@pytest.mark.parametrize("flavour", FLAVOURS, ids=lambda f: f.id)
def test_sdk_paid_calls_are_refused_once_the_hard_budget_is_spent(
    ledger_env: dict[str, str], upstream: StandIn, flavour: Flavour, fast_stops: None
) -> None:
    url = ledger_env["LEDGER_DATABASE_URL"]

    async def before(s: Session) -> None:
        await s.create("gpt-oss-120b")  # paid, and well over the budget below

    _run(flavour, upstream, before)
    _spend_it(url, PROJECT)

    async def refused(s: Session) -> Any:
        _wait("the writer to publish the stop", _stop_file(ledger_env).exists)
        await s.create("gpt-oss-120b")

    exc: Any = _raised(flavour, upstream, refused)
    assert isinstance(exc, flavour.errors.APIStatusError) and exc.status_code == 402, exc
    assert exc.response.headers["x-ledger-refused"] == "hard-budget"
    body = exc.response.json()
    assert body["code"] == "hard_budget_spent" and "hard monthly budget" in body["message"]
    assert PROJECT in str(exc)
    assert upstream.requests == 1  # the refused call never left the process

    async def streamed(s: Session) -> Any:
        _wait("the writer to publish the stop", _stop_file(ledger_env).exists)
        await s.stream("llama3.1-8b")  # paid on the direct route

    exc = _raised(flavour, upstream, streamed)
    assert isinstance(exc, flavour.errors.APIStatusError) and exc.status_code == 402
    assert upstream.requests == 1

    async def free(s: Session) -> Any:  # free through Lava: still allowed
        return await s.create("llama3.1-8b")

    assert _run(flavour, upstream, free, route="lava") is not None
    assert upstream.requests == 2

    first, second = _refusals(url)
    _assert_refusal(first, "gpt-oss-120b", "cerebras", "transport")
    _assert_refusal(second, "llama3.1-8b", "cerebras", "transport")
    assert first["project"] == PROJECT

    engine = _engine(url)
    try:  # raised: calls go through again once the writer has seen it
        budgets.set_budget(engine, PROJECT, monthly="1000", hard=True)
    finally:
        engine.dispose()

    async def after(s: Session) -> Any:
        _wait("the writer to withdraw the stop", lambda: not _stop_file(ledger_env).exists())
        return await s.create("gpt-oss-120b")

    assert _run(flavour, upstream, after) is not None
    assert upstream.requests == 3 and len(_refusals(url)) == 2


@pytest.mark.parametrize("stream", [False, True])
def test_wrapper_client_raises_budget_exceeded(
    ledger_env: dict[str, str], upstream: StandIn, stream: bool, fast_stops: None
) -> None:
    url = ledger_env["LEDGER_DATABASE_URL"]
    with ledger.CerebrasClient(
        "proj-hard", api_key="sk-test", base_url=upstream.base_url, max_retries=2
    ) as c:
        c.chat.completions.create(model="gpt-oss-120b", messages=MSG)
        assert c.flush(10)
        _spend_it(url, "proj-hard")
        _wait("the writer to publish the stop", _stop_file(ledger_env).exists)
        with pytest.raises(ledger.call.errors.BudgetExceededError) as info:
            reply = c.chat.completions.create(model="gpt-oss-120b", messages=MSG, stream=stream)
            list(reply) if stream else None
        assert isinstance(info.value, ledger.call.errors.APIStatusError) and info.value.status_code == 402
        assert info.value.code == "hard_budget_spent" and "proj-hard" in info.value.message
        assert c.flush(10)
    assert upstream.requests == 1  # refused once, and not retried
    (row,) = _refusals(url)
    _assert_refusal(row, "gpt-oss-120b", "cerebras", "wrapper")


def test_async_wrapper_client_raises_budget_exceeded(
    ledger_env: dict[str, str], upstream: StandIn, fast_stops: None
) -> None:
    url = ledger_env["LEDGER_DATABASE_URL"]

    async def go() -> BaseException:
        async with ledger.AsyncCerebrasClient(
            "proj-hard", api_key="sk-test", base_url=upstream.base_url
        ) as c:
            await c.chat.completions.create(model="gpt-oss-120b", messages=MSG)
            assert await c.flush(10)
            await asyncio.to_thread(_spend_it, url, "proj-hard")
            await asyncio.to_thread(_wait, "the stop", _stop_file(ledger_env).exists)
            with pytest.raises(ledger.call.errors.BudgetExceededError) as info:
                await c.chat.completions.create(model="gpt-oss-120b", messages=MSG)
            assert await c.flush(10)
            return info.value

    exc = asyncio.run(go())
    assert exc.status_code == 402  # type: ignore[attr-defined]
    assert upstream.requests == 1 and len(_refusals(url)) == 1


def test_a_refusal_is_logged_once_per_project_and_month(
    ledger_env: dict[str, str], upstream: StandIn, fast_stops: None, caplog: pytest.LogCaptureFixture
) -> None:
    url = ledger_env["LEDGER_DATABASE_URL"]
    with ledger.CerebrasClient("proj-hard", api_key="sk-secret-key", base_url=upstream.base_url) as c:
        c.chat.completions.create(model="gpt-oss-120b", messages=MSG)
        assert c.flush(10)
        _spend_it(url, "proj-hard")
        _wait("the writer to publish the stop", _stop_file(ledger_env).exists)
        with caplog.at_level(logging.INFO, logger="ledger"):
            for _ in range(3):
                with pytest.raises(ledger.call.errors.BudgetExceededError):
                    c.chat.completions.create(model="gpt-oss-120b", messages=MSG)
        assert c.flush(10)
    said = [r for r in caplog.records if "hard monthly budget" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.WARNING
    assert "sk-secret-key" not in caplog.text and "count to three" not in caplog.text
    assert len(_refusals(url)) == 3
    stored = json.dumps(fetch_events(url), default=str)
    assert "sk-secret-key" not in stored and "count to three" not in stored


def test_a_broken_stop_list_never_breaks_a_call(
    ledger_env: dict[str, str], upstream: StandIn, fast_stops: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*_: Any) -> Any:
        raise RuntimeError("stop list exploded")

    monkeypatch.setattr(StopList, "refused", boom)
    with ledger.CerebrasClient("proj-hard", api_key="sk-test", base_url=upstream.base_url) as c:
        assert c.chat.completions.create(model="gpt-oss-120b", messages=MSG)["choices"]
        assert c.flush(10)
    (row,) = fetch_events(ledger_env["LEDGER_DATABASE_URL"])
    assert row["status"] == "ok"  # recorded as usual


def test_unchecked_projects_pay_one_dict_lookup(tmp_path: Path) -> None:
    """With no stop file the check never decodes anything: the file is stat'ed, not read."""
    seen = StopList(tmp_path / stops.STOP_FILE, check_s=0)
    for _ in range(3):
        assert seen.refused("p", "cerebras", "m") is None
    assert seen._seen is None and seen._stops == {}


def test_httpx_transport_answers_402_without_sending(
    ledger_env: dict[str, str], upstream: StandIn, fast_stops: None
) -> None:
    """A bare httpx client with instrument(): the refusal is an ordinary 402 response."""
    url = ledger_env["LEDGER_DATABASE_URL"]
    with ledger.instrument(
        httpx.Client(headers={"authorization": "Bearer sk-test"}), project="proj-raw"
    ) as http:
        transport = http._transport
        assert isinstance(transport, RecordingTransport)
        ok = http.post(
            f"{upstream.base_url}/v1/chat/completions", json={"model": "gpt-oss-120b", "messages": MSG}
        )
        assert ok.status_code == 200
        assert transport.journal.flush(10)
        _spend_it(url, "proj-raw")
        _wait("the writer to publish the stop", _stop_file(ledger_env).exists)
        no = http.post(
            f"{upstream.base_url}/v1/chat/completions",
            json={"model": "gpt-oss-120b", "messages": MSG},
            headers={"x-ledger-project": "proj-raw"},
        )
        other = http.post(
            f"{upstream.base_url}/v1/chat/completions",
            json={"model": "gpt-oss-120b", "messages": MSG},
            headers={"x-ledger-project": "proj-b"},
        )
        assert transport.journal.flush(10)
    assert no.status_code == 402 and no.json()["type"] == "budget_exceeded_error"
    assert other.status_code == 200  # another project is not stopped
    assert upstream.requests == 2
    (row,) = _refusals(url)
    _assert_refusal(row, "gpt-oss-120b", "cerebras", "transport")


def test_writer_process_publishes_the_stop(
    ledger_env: dict[str, str], upstream: StandIn, fast_stops: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LEDGER_WRITER=process: the writer process, not the caller, reads the database and publishes
    the stop file. The budget is spent before this process starts: its first call goes through (no
    stop file yet on this machine), the writer publishes on its first round, later calls are refused."""
    monkeypatch.setenv("LEDGER_WRITER", "process")
    url = ledger_env["LEDGER_DATABASE_URL"]
    engine = _engine(url)
    try:
        budgets.set_budget(engine, "proj-zero", monthly="0.000001", hard=True)
        spend(engine, "proj-zero", [(datetime.now(UTC) - timedelta(minutes=1), 7000)])
        check.check(engine)
        assert [s.project for s in budget_stops.update_stops(engine)] == ["proj-zero"]
    finally:
        engine.dispose()
    with ledger.CerebrasClient("proj-zero", api_key="sk-test", base_url=upstream.base_url) as c:
        assert type(c.transport.journal).__name__ == "ProcessJournal"
        c.chat.completions.create(model="gpt-oss-120b", messages=MSG)
        assert c.flush(10)
        _wait("the writer process to publish the stop", _stop_file(ledger_env).exists)
        assert c.transport.journal._sink._engine is None  # the calling process never connected
        with pytest.raises(ledger.call.errors.BudgetExceededError):
            c.chat.completions.create(model="gpt-oss-120b", messages=MSG)
        assert c.flush(10)
    assert upstream.requests == 1
    (row,) = _refusals(url)
    _assert_refusal(row, "gpt-oss-120b", "cerebras", "wrapper")


@settings(max_examples=200, deadline=None)
@given(
    project=_NAMES,
    model=st.text(st.characters(codec=None, exclude_categories=()), max_size=40),
    other=st.text(max_size=40),
)
@example(project="'); DROP TABLE budget_stops;--", model="lone \ud800 surrogate", other="")
@example(project='\u05d0 \U0001f680 "quoted"', model="\u202e", other="x")
def test_any_accepted_project_and_any_model_name_round_trip(project: str, model: str, other: str) -> None:
    """Hostile project names (any the ledger accepts) and model names (any text, lone surrogates
    included) come back from the stop file exactly, and only the named project is stopped."""
    try:
        check_project(project)
    except ConfigError:
        assume(False)
    assume(other != project)
    with tempfile.TemporaryDirectory() as folder:
        assert stops.publish(Path(folder), [_stop(project)], {"lava": [model]})
        seen = StopList(Path(folder) / stops.STOP_FILE, check_s=0)
        hit = seen.refused(project, "cerebras", model)
        assert hit is not None and hit.project == project
        assert seen.refused(project, "lava", model) is None
        assert seen.refused(other, "cerebras", model) is None
