"""``GET /metrics`` over real HTTP, on SQLite and PostgreSQL: auth, exact figures against the
events written, ``promtool check metrics``, bounded labels, budgets, scope and escaping."""

from __future__ import annotations

import math
import random
import shutil
import subprocess
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from ledger.budgets.budgets import set_budget
from ledger.events import Usage
from ledger.service.app import Settings
from ledger.store import write_transaction
from ledger.store.rollup import rollup
from ledger.store.schema import AlertRow
from tests.helpers import make_event, random_event, write_events
from tests.service._serve import Served, serve

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]
TYPES = {
    "input": "prompt_tokens",
    "cached": "cached_tokens",
    "output": "completion_tokens",
    "reasoning": "reasoning_tokens",
}


def scrape(served: Served, token: str | None) -> str:
    with served.client(token) as client:
        response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return response.text


def parse(body: str) -> Series:
    out: Series = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in out, f"duplicate series {key}"
            out[key] = sample.value
    return out


def of(series: Series, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(labels)): v for (n, labels), v in series.items() if n == name}


def promtool_ok(body: str) -> None:
    if shutil.which("promtool") is None:
        pytest.skip("promtool is not installed")
    done = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def usd(nanos: int | Decimal) -> float:
    return float(Decimal(nanos) / Decimal(10**9))


def events_table(engine: sa.Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.text("SELECT * FROM events"))]


def expected(engine: sa.Engine) -> tuple[dict[Any, int], dict[Any, int], dict[Any, int]]:
    """Independent sums from the events table: paid nanos, tokens and calls per label set."""
    paid: dict[Any, int] = defaultdict(int)
    tokens: dict[Any, int] = defaultdict(int)
    calls: dict[Any, int] = defaultdict(int)
    for e in events_table(engine):
        model = e["served_model"] or e["requested_model"] or "unknown"
        free = "true" if e["free"] else "false"
        base: tuple[tuple[str, str], ...] = (
            ("free", free),
            ("model", model),
            ("project", e["project"]),
            ("route", e["route"]),
        )
        if not e["free"]:
            paid[base] += e["cost_nanos"] or 0
        for kind, column in TYPES.items():
            tokens[tuple(sorted((*base, ("type", kind))))] += e[column] or 0
        if e["kind"] == "usage":
            calls[tuple(sorted((*base, ("status", e["status"]))))] += 1
    return paid, tokens, calls


def test_requires_a_token(engine: sa.Engine) -> None:
    with serve(engine) as served:
        for token in (None, "nonsense", "clg_000000000000_" + "A" * 43):
            with served.client(token) as client:
                response = client.get("/metrics")
            assert response.status_code == 401
            assert response.headers["content-type"].startswith("application/problem+json")
            assert response.headers["www-authenticate"].startswith("Bearer")


def test_figures_match_the_events(engine: sa.Engine) -> None:
    rng = random.Random(7)
    now = datetime.now(UTC)
    events = [random_event(now - timedelta(days=rng.randint(0, 90)), rng) for _ in range(80)]
    events.append(make_event(project="beta", route="lava", requested_model="llama3.1-8b"))  # free
    events.append(make_event(usage=Usage(1234, 200, 567, 89, 1801)))
    write_events(engine, events[:40])
    write_events(engine, events[40:])
    rollup(engine)
    paid, tokens, calls = expected(engine)
    assert any(k[0] == ("free", "true") for k in tokens) and paid
    with serve(engine) as served:
        body = scrape(served, served.admin)
    series = parse(body)
    assert of(series, "ledger_paid_spend_usd_total") == {k: usd(v) for k, v in paid.items()}
    assert of(series, "ledger_tokens_total") == {k: float(v) for k, v in tokens.items()}
    assert of(series, "ledger_calls_total") == {k: float(v) for k, v in calls.items()}
    assert sum(of(series, "ledger_calls_total").values()) == len(events)
    assert series[("ledger_rollup_pending_batches", frozenset())] == 0
    assert series[("ledger_undelivered_alerts", frozenset())] == 0
    for name in ("ledger_spool_backlog_bytes", "ledger_writer_lag_seconds", "ledger_rollup_lag_seconds"):
        assert series[(name, frozenset())] == 0
    assert all(math.isfinite(v) for v in series.values())
    promtool_ok(body)


def test_counters_do_not_go_down_as_events_arrive(engine: sa.Engine) -> None:
    write_events(engine, [make_event(), make_event(status="error", usage=None)])
    rollup(engine)
    with serve(engine) as served:
        before = parse(scrape(served, served.admin))
        write_events(engine, [make_event(project="beta")])
        after_write = parse(scrape(served, served.admin))
        assert after_write[("ledger_rollup_pending_batches", frozenset())] == 1
        rollup(engine)
        after = parse(scrape(served, served.admin))
    for key, value in before.items():
        if key[0].endswith("_total"):
            assert after[key] >= value
    assert sum(of(after, "ledger_calls_total").values()) == 3


def test_labels_are_bounded_and_totals_kept(engine: sa.Engine) -> None:
    models = ("gpt-oss-120b", "llama3.1-8b", "qwen-3-32b", "zai-glm-4.7")
    events = [
        make_event(project=f"p{i}", requested_model=models[(i + j) % 4], usage=Usage(100 * i, 0, 7 * j, 0, 0))
        for i in range(1, 7)
        for j in range(i + 1)
    ]
    write_events(engine, events)
    rollup(engine)
    paid, tokens, _ = expected(engine)
    by_project: dict[str, int] = defaultdict(int)
    by_model: dict[str, int] = defaultdict(int)
    for key, nanos in paid.items():
        labels = dict(key)
        by_project[labels["project"]] += nanos
        by_model[labels["model"]] += nanos
    top_projects = sorted(by_project, key=lambda p: (-by_project[p], p))[:3]
    top_models = sorted(by_model, key=lambda m: (-by_model[m], m))[:2]
    with serve(engine, Settings(metrics_max_projects=3, metrics_max_models=2)) as served:
        body = scrape(served, served.admin)
    series = parse(body)
    spend = of(series, "ledger_paid_spend_usd_total")
    projects = {dict(k)["project"] for k in spend}
    model_values = {dict(k)["model"] for k in spend}
    assert projects == {*top_projects, "other"}
    assert model_values == {*top_models, "other"}
    for name in ("ledger_tokens_total", "ledger_calls_total"):
        assert {dict(k)["project"] for k in of(series, name)} == projects
    assert sum(of(series, "ledger_calls_total").values()) == len(events)
    assert sum(of(series, "ledger_tokens_total").values()) == sum(tokens.values())
    other = sum(n for k, n in paid.items() if dict(k)["project"] not in top_projects)
    other_spend = [v for k, v in spend.items() if dict(k)["project"] == "other"]
    assert len(other_spend) <= 3  # at most (2 kept + other) models, one route
    folded: dict[tuple[str, str], int] = defaultdict(int)
    for key, nanos in paid.items():
        labels = dict(key)
        project = labels["project"] if labels["project"] in top_projects else "other"
        folded[(project, labels["model"] if labels["model"] in top_models else "other")] += nanos
    assert {(dict(k)["project"], dict(k)["model"]): v for k, v in spend.items()} == {
        k: usd(v) for k, v in folded.items()
    }
    assert sum(n for k, n in folded.items() if k[0] == "other") == other
    promtool_ok(body)


def test_budget_gauges(engine: sa.Engine) -> None:
    write_events(engine, [make_event(project=p) for p in ("alpha", "alpha", "beta", "gamma", "delta")])
    rollup(engine)
    set_budget(engine, "alpha", monthly="10")
    set_budget(engine, "gamma", daily="0.000001")  # overspent: remaining is negative
    set_budget(engine, "delta", free_only=True)  # no amount: no series
    paid, _, _ = expected(engine)
    spent = {p: sum(n for k, n in paid.items() if dict(k)["project"] == p) for p in ("alpha", "gamma")}
    with serve(engine) as served:
        body = scrape(served, served.admin)
    series = parse(body)
    budget = of(series, "ledger_budget_usd")
    remaining = of(series, "ledger_budget_remaining_usd")
    forecast = of(series, "ledger_budget_forecast_usd")
    assert {dict(k)["project"] for k in budget} == {"alpha", "gamma"}
    assert set(budget) == set(remaining) == set(forecast)
    month, day = datetime.now(UTC).strftime("%Y-%m"), datetime.now(UTC).strftime("%Y-%m-%d")
    alpha = (("period", month), ("project", "alpha"))
    gamma = (("period", day), ("project", "gamma"))
    assert budget[alpha] == 10.0 and budget[gamma] == 0.000001
    assert remaining[alpha] == float(Decimal(10) - Decimal(spent["alpha"]) / 10**9)
    assert remaining[gamma] == float(Decimal("0.000001") - Decimal(spent["gamma"]) / 10**9) < 0
    assert forecast[alpha] >= usd(spent["alpha"])
    assert all(math.isfinite(v) for v in series.values())
    promtool_ok(body)


def _alert(engine: sa.Engine, project: str) -> None:
    now = datetime.now(UTC)
    with write_transaction(engine) as conn:
        conn.execute(
            sa.insert(AlertRow).values(
                alert_id=str(uuid.uuid4()),
                project=project,
                rule="budget",
                period=now.strftime("%Y-%m"),
                threshold=50,
                created_at=now,
                message="half spent",
                evidence="{}",
                attempts=0,
                next_attempt_at=now,
            )
        )


def test_a_scoped_viewer_sees_only_its_projects(engine: sa.Engine) -> None:
    events = [make_event(project="alpha"), make_event(project="bravo", requested_model="zai-glm-4.7")]
    events += [make_event(project="charlie", route="lava", requested_model="llama3.1-8b")]
    write_events(engine, events)
    rollup(engine)
    set_budget(engine, "alpha", monthly="10")
    set_budget(engine, "bravo", monthly="10")
    _alert(engine, "bravo")
    with serve(engine, Settings(metrics_max_projects=1)) as served:
        admin = parse(scrape(served, served.admin))
        body = scrape(served, served.viewer("alpha"))
        both = parse(scrape(served, served.viewer("alpha", "bravo")))
    for name in ("bravo", "charlie", "zai-glm-4.7", "llama3.1-8b", "other"):
        assert name not in body
    series = parse(body)
    assert {dict(k)["project"] for k in of(series, "ledger_calls_total")} == {"alpha"}
    assert {dict(k)["project"] for k in of(series, "ledger_budget_usd")} == {"alpha"}
    assert series[("ledger_undelivered_alerts", frozenset())] == 0
    assert admin[("ledger_undelivered_alerts", frozenset())] == 1
    assert both[("ledger_undelivered_alerts", frozenset())] == 1
    # folding into "other" happens within the viewer's scope: bravo (the dearer) is kept, alpha folded
    assert {dict(k)["project"] for k in of(both, "ledger_calls_total")} == {"bravo", "other"}
    assert {dict(k)["project"] for k in of(admin, "ledger_calls_total")} == {"bravo", "other"}
    promtool_ok(body)


def test_hostile_names_are_escaped(engine: sa.Engine) -> None:
    project = 'we "quote" \\ back\\slash'
    models = ['evil"model\\', "line\nbreak", 'ünïcødé {x="y"}']
    write_events(engine, [make_event(project=project, requested_model=m) for m in models])
    rollup(engine)
    with serve(engine) as served:
        body = scrape(served, served.admin)
    assert '\\"quote\\" \\\\ back\\\\slash' in body
    assert "line\\nbreak" in body
    calls = of(parse(body), "ledger_calls_total")
    assert {dict(k)["model"] for k in calls} == set(models)
    assert {dict(k)["project"] for k in calls} == {project}
    promtool_ok(body)
