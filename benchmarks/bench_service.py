"""Figure 6: the live service (``cerebras-ledger serve``) on a month of 100 projects.

A ledger (a SQLite file, and a PostgreSQL schema when reachable) is filled with one month (March
2025) of synthetic events over 100 projects with raw driver inserts, then rolled up (untimed).
At two sizes (10 M and 1 M events; --quick 1 M and 100k), with the service running on uvicorn in
this process and real HTTP from an httpx client on loopback (an admin bearer token):

* the overview page ``/``, the project page ``/projects/proj-000`` (the busiest project) and the
  spend API ``/api/v1/spend`` for the month in Europe/Berlin: p50 and p95 of repeated requests,
  interleaved with the baseline, one bare SQL ``GROUP BY project`` over the same month's
  ``usage_rollup`` rows (the least any answer must read); target p95 ≤ 100 ms;
* peak memory (``tracemalloc``) of building the overview at the big size against the small one
  (the service reads rollups, so it must stay flat as events grow);
* the events explorer's next page (``/api/v1/events?limit=50&cursor=…``) at the first page and
  deep in the month (a cursor 90 % of the way down): flat in depth (cursor, not OFFSET).

A page that does not exist yet (404) is reported as a clearly marked placeholder row.
"""

from __future__ import annotations

import time
import tracemalloc
from typing import Any

from _common import (
    MONTH,
    Synth,
    fill_pg,
    fill_sqlite,
    median,
    new_ledger,
    pct,
    pg_dsn,
    pg_reachable,
    pg_schema,
    pg_url,
    row,
    scratch,
)

TZ = "Europe/Berlin"
TARGET = 0.100


def _sql_baseline(engine: Any, start: Any, end: Any) -> None:
    from sqlalchemy import text

    sqlite = engine.dialect.name == "sqlite"
    s = start.strftime("%Y-%m-%d %H:%M:%S.%f") if sqlite else start
    e = end.strftime("%Y-%m-%d %H:%M:%S.%f") if sqlite else end
    with engine.connect() as conn:
        conn.execute(
            text(
                "SELECT project, sum(events), sum(total_tokens), sum(cost_nanos), sum(list_cost_nanos) "
                "FROM usage_rollup WHERE bucket >= :s AND bucket < :e GROUP BY project"
            ),
            {"s": s, "e": e},
        ).all()


def _measure(engine: Any, reps: int) -> dict[str, Any]:
    """Every figure at one size on one ledger."""
    import httpx

    from ledger import calendar
    from ledger.service.app import Settings
    from ledger.service.auth import Principal, create_token
    from ledger.service.queries import overview
    from ledger.service.server import ThreadedServer

    period = calendar.parse_period(MONTH.strftime("%Y-%m"))
    zone = calendar.parse_zone(TZ)
    bounds = calendar.period_bounds(period, zone)
    token = create_token(engine, "admin").token
    out: dict[str, Any] = {}
    q = f"period={period.label}&tz={TZ}"
    paths = {
        "overview page": f"/?{q}",
        "project page": f"/projects/proj-000?{q}",
        "spend API": f"/api/v1/spend?{q}",
    }
    with (
        ThreadedServer(engine, Settings()) as server,
        httpx.Client(
            base_url=server.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=600
        ) as client,
    ):
        for name, path in paths.items():
            first = client.get(path)
            if first.status_code == 404:
                out[name] = None
                continue
            first.raise_for_status()
            times, base = [], []
            for _ in range(reps):
                t0 = time.perf_counter()
                client.get(path).raise_for_status()
                times.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                _sql_baseline(engine, bounds[0], bounds[-1])
                base.append(time.perf_counter() - t0)
            out[name] = {"p50": median(times), "p95": pct(times, 95), "base_p95": pct(base, 95), "n": reps}
        # the events explorer: the first page, and a page 90 % of the way down the month
        ev = f"/api/v1/events?{q}&limit=50"
        page = client.get(ev).json()
        cursor = _deep_cursor(engine, bounds[0], bounds[-1])
        first_t, deep_t = [], []
        for _ in range(reps):
            t0 = time.perf_counter()
            client.get(ev).raise_for_status()
            first_t.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            client.get(ev, params={"cursor": cursor}).raise_for_status()
            deep_t.append(time.perf_counter() - t0)
        out["events first"] = median(first_t)
        out["events deep"] = median(deep_t)
        out["events rows"] = len(page["events"])
    admin = Principal("bench", "admin", None)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base_mem = tracemalloc.get_traced_memory()[0]
        overview(engine, admin, period, zone)
        out["overview_peak_mib"] = (tracemalloc.get_traced_memory()[1] - base_mem) / 2**20
    finally:
        tracemalloc.stop()
    return out


def _deep_cursor(engine: Any, start: Any, end: Any) -> str:
    """The cursor of the event 90 % of the way down the month, newest first."""
    from sqlalchemy import func, select

    from ledger.service.queries import encode_cursor
    from ledger.store.schema import EventRow

    e = EventRow.__table__.c
    with engine.connect() as conn:
        n = conn.execute(select(func.count()).where(e.occurred_at >= start, e.occurred_at < end)).scalar_one()
        key = conn.execute(
            select(e.occurred_at, e.event_id)
            .where(e.kind == "usage", e.occurred_at >= start, e.occurred_at < end)
            .order_by(e.occurred_at.desc(), e.event_id.desc())
            .offset(int(n * 0.9))
            .limit(1)
        ).one()
    return encode_cursor(key[0], key[1])


def _ledger(kind: str, n: int) -> tuple[Any, Any]:
    """A filled, rolled-up ledger: (engine, cleanup)."""
    from ledger import store
    from ledger.store import rollup

    if kind == "sqlite":
        tmp = scratch("svc")
        url = f"sqlite:///{tmp}/ledger.db"
        new_ledger(url)
        fill_sqlite(f"{tmp}/ledger.db", Synth(5), n, 0, id_prefix="a", rolled_up=False)
        engine = store.make_engine(url)
        rollup.rollup(engine)
        return engine, lambda: engine.dispose()
    ctx = pg_schema(f"svc{n}")
    schema = ctx.__enter__()
    url = pg_url(schema)
    new_ledger(url)
    fill_pg(pg_dsn(schema), Synth(5), n, 0, id_prefix="a", rolled_up=False)
    engine = store.make_engine(url)
    rollup.rollup(engine)
    with engine.begin() as conn:  # committed: statistics an ANALYZE gathers roll back with its transaction
        conn.exec_driver_sql("ANALYZE")

    def done() -> None:
        engine.dispose()
        ctx.__exit__(None, None, None)

    return engine, done


def main(quick: bool) -> dict[str, Any]:
    sizes = (1_000_000, 100_000) if quick else (10_000_000, 1_000_000)
    reps = 15 if quick else 40
    kinds = ["sqlite"] + ([] if pg_reachable() else ["postgresql"])
    rows: list[dict[str, Any]] = []
    notes: dict[str, Any] = {"sizes": sizes, "reps": reps}
    for kind in kinds:
        db = "SQLite" if kind == "sqlite" else "PostgreSQL"
        got: dict[int, dict[str, Any]] = {}
        for n in sizes:
            t0 = time.perf_counter()
            engine, done = _ledger(kind, n)
            notes[f"{kind}_{n}_fill_and_rollup_s"] = round(time.perf_counter() - t0, 1)
            try:
                got[n] = _measure(engine, reps)
            finally:
                done()
        big, small = sizes
        for name in ("overview page", "project page", "spend API"):
            m = got[big][name]
            if m is None:
                rows.append(
                    row(
                        "6 service",
                        f"{name}: pending (not served yet)",
                        value=None,
                        unit="s",
                        verdict="pending",
                    )
                )
                continue
            rows.append(
                row(
                    "6 service",
                    f"{name} p95, month of {big:,} events, 100 projects ({db})",
                    value=m["p95"],
                    unit="s",
                    baseline_name="bare SQL GROUP BY on usage_rollup (p95)",
                    baseline=m["base_p95"],
                    target="p95 ≤ 100 ms",
                    ok=m["p95"] <= TARGET,
                    p50=m["p50"],
                    small_p95=got[small][name]["p95"] if got[small][name] else None,
                )
            )
        mb, ms = got[big]["overview_peak_mib"], got[small]["overview_peak_mib"]
        rows.append(
            row(
                "6 service",
                f"overview peak memory, {big:,} vs {small:,} events ({db})",
                value=mb,
                unit="MiB",
                baseline_name=f"same on {small:,}",
                baseline=ms,
                target="flat: ≤ 1.5× or +<1 MiB",
                ok=mb <= 1.5 * ms or mb - ms < 1.0,
            )
        )
        rows.append(
            row(
                "6 service",
                f"events explorer page 90 % deep vs first page, {big:,} events ({db})",
                value=got[big]["events deep"],
                unit="s",
                baseline_name="first page",
                baseline=got[big]["events first"],
                target="≤ 1.5× (flat in depth)",
                ok=got[big]["events deep"] <= 1.5 * got[big]["events first"],
            )
        )
    return {"rows": rows, "notes": notes}
