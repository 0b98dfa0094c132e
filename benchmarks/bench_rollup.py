"""Figure 4: rollups.

* Incremental rollup of N new events (1 M; --quick 100k), in ingest batches of 2000 as the spool
  writer makes them, with ``ledger.rollup.rollup(engine)`` against a bare ``INSERT … SELECT …
  GROUP BY`` of the same rows into empty copies of the two rollup tables (same primary keys), built
  from the ledger's own select expressions with the batch filter removed, so grouping expressions
  are identical. Runs alternate baseline / ledger / baseline …; before each ledger run the rollups
  are emptied and the batches marked pending again (untimed).
* A no-op run (nothing pending) at two ledger sizes: N after the rollup above, then after growing
  the same ledger to 10 N (SQLite: 10 M; --quick 1 M) with copies of its rows in big
  ``INSERT … SELECT`` statements, marked rolled up (grown rows carry no tags). PostgreSQL grows
  to 3 N (--quick 5 N) only, to keep the run short; the 10 M case is SQLite only. For scale each
  no-op is shown next to one ``SELECT count(*) FROM events`` (what a scan would cost), and a rollup
  of one new 2000-event batch is timed at both sizes.

Synthetic rows come from ``_common.Synth`` (March 2025, 100 projects, 9 models, 2 tags each) and
are inserted with raw driver calls (sqlite3 ``executemany``, psycopg ``COPY``).
"""

from __future__ import annotations

import shutil
import sqlite3
import time
from typing import Any

from _common import (
    Synth,
    fill_pg,
    fill_sqlite,
    median,
    new_ledger,
    pg_dsn,
    pg_reachable,
    pg_schema,
    pg_url,
    row,
    scratch,
    with_pg_retry,
)

BATCH = 2000


def _nowhere(sel: Any) -> Any:
    """The ledger's rollup select without its ``batch_id IN (...)`` filter."""
    sel = sel._generate()
    sel._where_criteria = ()
    return sel


def _copy_tables(engine: Any) -> tuple[Any, Any]:
    from sqlalchemy import Column, MetaData, Table

    from ledger.store.schema import TagRollupRow, UsageRollupRow

    md = MetaData()
    out = []
    for src, name in (
        (UsageRollupRow.__table__, "bench_usage_rollup"),
        (TagRollupRow.__table__, "bench_tag_rollup"),
    ):
        out.append(Table(name, md, *[Column(c.name, c.type, primary_key=c.primary_key) for c in src.columns]))
    md.create_all(engine)
    return out[0], out[1]


class _Ledger:
    def __init__(self, backend: str, tmp: str, schema: str | None) -> None:
        self.backend = backend
        self.sqlite = backend == "SQLite"
        self.path = f"{tmp}/rollup.db"
        self.url = f"sqlite:///{self.path}" if self.sqlite else pg_url(schema or "")
        self.dsn = pg_dsn(schema)
        self.synth = Synth(21)
        self.size = 0
        self.inc_first = 0

    def fill(self, n: int, *, prefix: str, rolled_up: bool, tags: bool = True, first: int = 0) -> float:
        t0 = time.perf_counter()
        if self.sqlite:
            fill_sqlite(
                self.path,
                self.synth,
                n,
                first,
                batch_size=BATCH,
                id_prefix=prefix,
                rolled_up=rolled_up,
                tags=tags,
            )
        else:
            fill_pg(
                self.dsn,
                self.synth,
                n,
                first,
                batch_size=BATCH,
                id_prefix=prefix,
                rolled_up=rolled_up,
                tags=tags,
            )
        self.size += n
        return time.perf_counter() - t0

    def raw(self, sql: str, *, autocommit: bool = False) -> Any:
        if self.sqlite:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=60)
            try:
                conn.execute("PRAGMA synchronous=OFF")
                conn.execute("PRAGMA cache_size=-1048576")
                conn.execute("BEGIN")
                res = conn.execute(sql).fetchall()
                conn.execute("COMMIT")
                return res
            finally:
                conn.close()
        import psycopg

        with psycopg.connect(self.dsn, autocommit=autocommit) as conn:
            cur = conn.execute(sql)
            return cur.fetchall() if cur.description else None

    def grow_to(self, total: int, base_n: int) -> float:
        """Copy the base rows (prefix 'a') under new id prefixes until the ledger holds ``total``."""
        from ledger.store import EVENT_COLUMNS

        t0 = time.perf_counter()
        letters = iter("cdefghijklm")
        true = "TRUE"
        while self.size < total:
            p = next(letters)
            take = min(base_n, total - self.size)
            cols = ", ".join(EVENT_COLUMNS)
            sel = ", ".join(
                f"'{p}' || substr({c}, 2)" if c in ("event_id", "batch_id") else c for c in EVENT_COLUMNS
            )
            # the base batches 'ab0000000…' up to the one holding row take-1 (fixed-width hex: the
            # comparison means the same in any collation)
            where = f"substr(batch_id, 1, 2) = 'ab' AND substr(batch_id, 3, 7) <= '{(take - 1) // BATCH:07x}'"
            self.raw(
                f"INSERT INTO ingest_batches (batch_id, created_at, source, rolled_up) "
                f"SELECT '{p}' || substr(batch_id, 2), created_at, source, {true} FROM ingest_batches "
                f"WHERE {where}"
            )
            self.raw(f"INSERT INTO events ({cols}) SELECT {sel} FROM events WHERE {where}")
            self.size += take
        if not self.sqlite:
            self.raw("ANALYZE", autocommit=True)
        return time.perf_counter() - t0

    def vacuum(self) -> None:
        if not self.sqlite:
            self.raw("VACUUM ANALYZE", autocommit=True)

    def count(self) -> int:
        return int(self.raw("SELECT count(*) FROM events")[0][0])


def _timed(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _bench(backend: str, n: int, big: int, reps: int, noops: int, schema: str | None) -> dict[str, Any]:
    from sqlalchemy import delete, insert, text, update

    from ledger import store
    from ledger.store import rollup
    from ledger.store.schema import ROLLUP_KEY, ROLLUP_MEASURES, IngestBatchRow, TagRollupRow, UsageRollupRow

    tmp = scratch("rollup")
    lg = _Ledger(backend, tmp, schema)
    new_ledger(lg.url)
    out: dict[str, Any] = {"n": n, "big": big}
    out["fill_s"] = lg.fill(n, prefix="a", rolled_up=False)
    lg.vacuum()
    engine = store.make_engine(lg.url)
    try:
        cu, ct = _copy_tables(engine)
        base_usage = insert(cu).from_select(
            [*ROLLUP_KEY, *ROLLUP_MEASURES], _nowhere(rollup._usage_select(["-"]))
        )
        base_tag = insert(ct).from_select(
            ["bucket", "project", "key", "value", "events", "total_tokens", "cost_nanos"],
            _nowhere(rollup._tag_select(["-"])),
        )

        def baseline() -> float:
            with store.write_transaction(engine) as conn:
                conn.execute(delete(cu))
                conn.execute(delete(ct))
            lg.vacuum()
            t0 = time.perf_counter()
            with store.write_transaction(engine) as conn:
                conn.execute(base_usage)
                conn.execute(base_tag)
            return time.perf_counter() - t0

        def ledger_run(reset: bool) -> float:
            if reset:
                with store.write_transaction(engine) as conn:
                    conn.execute(delete(UsageRollupRow))
                    conn.execute(delete(TagRollupRow))
                    conn.execute(update(IngestBatchRow).values(rolled_up=False))
                lg.vacuum()
            t0 = time.perf_counter()
            res = rollup.rollup(engine)
            took = time.perf_counter() - t0
            if res.events != n:
                raise RuntimeError(f"rollup consumed {res.events} events, expected {n}")
            return took

        bl, led = [baseline()], []
        for k in range(reps):
            led.append(ledger_run(reset=k > 0))
            bl.append(baseline())
        out["ledger_runs_s"], out["baseline_runs_s"] = led, bl
        with engine.connect() as conn:
            out["usage_rollup_rows"] = conn.execute(text("SELECT count(*) FROM usage_rollup")).scalar_one()
            out["tag_rollup_rows"] = conn.execute(text("SELECT count(*) FROM tag_rollup")).scalar_one()
            same = conn.execute(
                text(
                    "SELECT (SELECT count(*) FROM bench_usage_rollup), "
                    "(SELECT coalesce(sum(cost_nanos), 0) FROM bench_usage_rollup), "
                    "(SELECT coalesce(sum(cost_nanos), 0) FROM usage_rollup)"
                )
            ).one()
            out["baseline_matches_ledger"] = same[0] == out["usage_rollup_rows"] and same[1] == same[2]

        def sizes(tag: str) -> None:
            rollup.rollup(engine)  # warm
            noop = []
            for _ in range(noops):
                t0 = time.perf_counter()
                res = rollup.rollup(engine)
                noop.append(time.perf_counter() - t0)
                assert res.batches == 0
            out[f"size_{tag}"] = lg.size
            counts = [_timed(lg.count) for _ in range(2)]
            inc = []
            for k in range(6):  # the first one warms the cache after a fill or growth: not counted
                lg.fill(BATCH, prefix="n", rolled_up=False, first=lg.inc_first)
                lg.inc_first += BATCH
                t0 = time.perf_counter()
                res = rollup.rollup(engine)
                if k:
                    inc.append(time.perf_counter() - t0)
                assert res.events == BATCH, res
            out[f"noop_{tag}_s"] = median(noop)
            out[f"noop_{tag}_runs"] = noop
            out[f"count_{tag}_s"] = min(counts)
            out[f"inc_batch_{tag}_s"] = median(inc)
            out[f"inc_batch_{tag}_runs"] = inc

        sizes("small")
        out["grow_s"] = lg.grow_to(big, n)
        sizes("big")
        with engine.connect() as conn:
            out["events_at_end"] = conn.execute(text("SELECT count(*) FROM events")).scalar_one()
    finally:
        engine.dispose()
        shutil.rmtree(tmp, ignore_errors=True)  # up to ~8 GB
    return out


def main(quick: bool) -> dict[str, Any]:
    fig = "4 rollup"
    n = 100_000 if quick else 1_000_000
    rows: list[dict[str, Any]] = []
    notes: dict[str, Any] = {}
    pg_why = pg_reachable()
    plans = [("SQLite", 10 * n, 3 if quick else 2)]
    if pg_why is None:
        plans.append(("PostgreSQL", (5 if quick else 3) * n, 3 if quick else 2))
    for backend, big, reps in plans:
        if backend == "SQLite":
            r = _bench(backend, n, big, reps, 30, None)
        else:

            def run_pg(big: int = big, reps: int = reps) -> dict[str, Any]:
                with pg_schema("rollup") as schema:
                    return _bench("PostgreSQL", n, big, reps, 30, schema)

            got = with_pg_retry(run_pg, "rollup", notes)
            if got is None:
                rows.append(
                    row(
                        fig,
                        "PostgreSQL rollups",
                        value=None,
                        unit="",
                        verdict="ERROR",
                        why="PostgreSQL went away twice (stopped by another test?)",
                    )
                )
                continue
            r = got
        notes[backend] = r
        led, bl = median(r["ledger_runs_s"]), median(r["baseline_runs_s"])
        rows.append(
            row(
                fig,
                f"incremental rollup of {n:,} new events ({backend})",
                value=led,
                unit="s",
                baseline_name="bare INSERT…SELECT…GROUP BY",
                baseline=bl,
                target="≤ 1.5×",
                ok=led / bl <= 1.5,
                ledger_runs_s=r["ledger_runs_s"],
                baseline_runs_s=r["baseline_runs_s"],
                usage_rollup_rows=r["usage_rollup_rows"],
                tag_rollup_rows=r["tag_rollup_rows"],
                baseline_matches_ledger=r["baseline_matches_ledger"],
            )
        )
        s, b = r["size_small"], r["size_big"]
        rows.append(
            row(
                fig,
                f"no-op rollup on {s:,} events ({backend})",
                value=r["noop_small_s"],
                unit="s",
                baseline_name="SELECT count(*) FROM events",
                baseline=r["count_small_s"],
                note="a scan of events would cost about the baseline",
            )
        )
        rows.append(
            row(
                fig,
                f"no-op rollup on {b:,} vs {s:,} events ({backend})",
                value=r["noop_big_s"],
                unit="s",
                baseline_name=f"no-op on {s:,}",
                baseline=r["noop_small_s"],
                target="≤ 1.5× (flat)",
                ok=r["noop_big_s"] / r["noop_small_s"] <= 1.5,
                count_big_s=r["count_big_s"],
                grow_s=r["grow_s"],
                note="grown rows are copies marked rolled up, without tags",
            )
        )
        rows.append(
            row(
                fig,
                f"rollup of 1 new batch (2000 ev) on {b:,} vs {s:,} events ({backend})",
                value=r["inc_batch_big_s"],
                unit="s",
                baseline_name=f"same on {s:,}",
                baseline=r["inc_batch_small_s"],
            )
        )
    if pg_why is not None:
        rows.append(row(fig, "PostgreSQL rollups", value=None, unit="", verdict="skipped", why=pg_why))
    return {"rows": rows, "notes": notes}
