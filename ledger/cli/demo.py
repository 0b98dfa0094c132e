"""Demo: the main job on the embedded default ledger, with no key and no network.

Starts the loopback stand-in upstream (:mod:`ledger.testing`), sends a realistic mix of calls
for three projects (free and paid models, direct and through Lava, streamed and not, some
upstream errors), waits for the ledger to have them, and returns a per-project summary of this
run. The fake credentials below never leave the machine.

So that the dashboard (``demo --serve``) has something worth looking at, the first demo on a
ledger also writes four weeks of history for the same projects (:func:`backfill_history`):
events priced by the ledger's own book, as an import would write them, with a weekday rhythm.
It then sets budgets: ``demo-search`` near its 80 % threshold, ``demo-support-bot`` over its
monthly amount, ``demo-analytics`` free-only (with paid calls), and runs the alert rules, so
alerts have fired (and wait in the outbox: the demo configures no webhook).
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

from ledger.call.client import CerebrasClient
from ledger.call.errors import APIError
from ledger.config import Progress
from ledger.events import Route
from ledger.reports.summary import ProjectSummary, project_summaries
from ledger.testing import StandIn

__all__ = ["PROJECTS", "backfill_history", "run_demo"]

PROJECTS = ("demo-search", "demo-support-bot", "demo-analytics")
# (route, model): direct calls pay Cerebras's rates; through Lava some models are free.
MIX: tuple[tuple[Route, str], ...] = (
    ("cerebras", "gpt-oss-120b"),
    ("cerebras", "llama-3.3-70b"),
    ("lava", "gpt-oss-120b"),
    ("lava", "qwen-3-235b-instruct"),
    ("lava", "llama3.1-8b"),
    ("lava", "qwen-3-32b"),
    ("lava", "llama-4-scout-17b-16e-instruct"),
)
FAULTS = ("rate_limit", "not_found", "server_error", "cut", "stream_error")


def run_demo(
    calls: int = 60,
    seed: int = 7,
    database_url: str | None = None,
    progress: Progress | None = None,
    history_days: int = 28,
) -> tuple[list[ProjectSummary], int]:
    """Send ``calls`` calls (then, the first time, write ``history_days`` of history) and return
    (per-project summary of this run, events still waiting)."""
    from ledger import store
    from ledger.config import database_url as resolve_url

    rng = random.Random(seed)
    started = datetime.now(UTC)
    url = resolve_url(database_url)
    with StandIn() as upstream:
        clients = {
            (project, route): CerebrasClient(
                project,
                base_url=upstream.base_url,
                database_url=url,
                max_retries=0,
                lava_forward_token="aks_live_demo" if route == "lava" else None,
                lava_base_url=upstream.base_url,
                api_key="demo-key",
            )
            for project in PROJECTS
            for route in ("cerebras", "lava")
        }
        try:
            for _ in range(calls):
                project = rng.choice(PROJECTS)
                route, model = rng.choice(MIX)
                stream = rng.random() < 0.4
                fault = rng.choice(FAULTS) if rng.random() < 0.12 else None
                words = " ".join(["word"] * rng.randint(5, 400))
                client = clients[(project, route)]
                headers = {"x-standin-scenario": fault} if fault else None
                try:
                    reply = client.chat.completions.create(
                        model=model,
                        messages=[{"role": "user", "content": words}],
                        stream=stream,
                        max_tokens=rng.randint(20, 600),
                        extra_headers=headers,
                        tags={"feature": rng.choice(("chat", "summarize", "classify")), "env": "demo"},
                    )
                    if stream:
                        for _ in reply:
                            pass
                except APIError:
                    pass  # recorded as an error event; the demo carries on
                if progress:
                    progress(1)
            waiting = 0 if all(c.flush(30) for c in clients.values()) else 1
        finally:
            for c in clients.values():
                c.close()
    engine = store.make_engine(url)
    try:
        if history_days:
            backfill_history(engine, started, history_days, seed)
        with engine.connect() as conn:
            return project_summaries(conn, since=started, projects=PROJECTS), waiting
    finally:
        engine.dispose()


def backfill_history(engine: Any, now: datetime, days: int = 28, seed: int = 7) -> bool:
    """Write ``days`` of history before ``now``, budgets and fired alerts (see the module
    docstring); ``False`` (nothing done) if the demo projects already have history."""
    from sqlalchemy import select

    from ledger import store
    from ledger.budgets.budgets import set_budget
    from ledger.budgets.check import check
    from ledger.budgets.spend import month_bounds, paid
    from ledger.events import CallEvent, Usage, new_event_id
    from ledger.money import Money
    from ledger.pricing import charge
    from ledger.store.rollup import rollup
    from ledger.store.schema import EventRow

    e = EventRow.__table__.c
    with engine.connect() as conn:
        old = conn.execute(
            select(e.event_id)
            .where(e.project.in_(PROJECTS), e.occurred_at < now - timedelta(hours=1))
            .limit(1)
        ).first()
    if old is not None:
        return False
    rng = random.Random(seed * 7919)
    events = []
    for day in range(days, 0, -1):
        start = now - timedelta(days=day)
        weekday = start.weekday() < 5
        for i, project in enumerate(PROJECTS):
            for _ in range(rng.randint(25, 45) * (3 if weekday else 1) // (i + 1)):
                route, model = rng.choice(MIX)
                when = start + timedelta(seconds=rng.randint(0, 86_399))
                prompt, completion = rng.randint(50, 4000), rng.randint(20, 1500)
                failed = rng.random() < 0.04
                events.append(
                    CallEvent(
                        event_id=new_event_id(),
                        occurred_at=when,
                        project=project,
                        route=route,
                        book=route,
                        requested_model=model,
                        served_model=None,
                        status="error" if failed else "ok",
                        http_status=429 if failed else 200,
                        error_type="too_many_requests_error" if failed else None,
                        error_code=None,
                        stream=rng.random() < 0.4,
                        usage=None if failed else Usage(prompt, 0, completion, 0, prompt + completion),
                        latency_us=rng.randint(80_000, 900_000),
                        ttft_us=None,
                        time_info=None,
                        upstream_id=None,
                        lava_request_id=None,
                        tags=(("env", "demo"), ("feature", rng.choice(("chat", "summarize", "classify")))),
                        source="import",
                    )
                )
    with store.write_transaction(engine) as conn:
        book = store.load_price_book(conn)
        stamp = datetime.now(UTC)
        rows = [
            store.event_row(ev, charge(ev, book), stamp)
            for ev in sorted(events, key=lambda ev: ev.occurred_at)
        ]
        store.insert_events(conn, rows, "import")
    rollup(engine)
    # near the 80 % threshold, and over the monthly amount (month to date, UTC)
    for project, share in (("demo-search", 85), ("demo-support-bot", 125)):
        with engine.connect() as conn:
            spent, _ = paid(conn, project, *month_bounds(now.date(), UTC))
        set_budget(engine, project, monthly=Money(max(1_000_000, spent * 100 // share)), now=now)
    set_budget(engine, "demo-analytics", free_only=True, now=now)
    check(engine, now=now, deliver_now=False)
    return True
