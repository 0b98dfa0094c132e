"""Figure 3: ingest throughput of the writer path, and the spool's cost on the call path.

Ingest: the same synthetic events, pre-encoded as spool lines, go batch by batch into two fresh
ledgers of the same backend, alternating which goes first:

* the ledger's writer path: ``journal.writer.write_lines(..., trusted=True)`` (decode each line, then
  ``_Sink.write``: price + ``store.insert_spooled`` in one transaction), exactly what the writer
  thread runs per batch of its own live segment (a backlog after an outage included). Recovering
  a *dead* process's segment also checks every field's type (``trusted=False``), about 2 µs more
  an event;
* raw: the very rows the store would write (prepared beforehand, untimed), with
  ``sqlite3.executemany`` (``BEGIN IMMEDIATE``, same PRAGMAs as the ledger's connections) or
  psycopg ``COPY``, one transaction per batch, into events, event_tags and ingest_batches.

Batches of 2000 are the journal's ``BATCH_EVENTS`` (a backlog); batches of 50 are what a busy
process's writer sees in live traffic (one 50 ms linger of calls), shown for information.

Spool: ``Journal.append`` on a live journal (its writer thread draining into SQLite meanwhile),
each call timed, interleaved with ``os.write`` of the same pre-encoded line to an ``O_APPEND`` file.
"""

from __future__ import annotations

import os
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _common import (
    Synth,
    median,
    new_ledger,
    pct,
    pg_dsn,
    pg_reachable,
    pg_schema,
    pg_url,
    row,
    scratch,
    with_pg_retry,
)


def _prepare(
    events: list[Any], dialect: str
) -> list[tuple[list[tuple[Any, ...]], list[tuple[str, str, str]]]]:
    """The rows ``store.insert_events`` would hand the driver, per event (batch id filled later)."""
    import json

    from ledger import store
    from ledger.pricing import BUILTIN_PRICES, PriceBook, charge
    from ledger.store.ingest import event_values, sqlite_params

    book = PriceBook(BUILTIN_PRICES)
    now = datetime.now(UTC)
    out = []
    for e in events:
        r = store.event_row(e, charge(e, book), now)
        params = sqlite_params(r, "") if dialect == "sqlite" else tuple(event_values(r))
        tags = [(r["event_id"], k, v) for k, v in json.loads(r["tags"]).items()]
        out.append((params, tags))
    return out  # type: ignore[return-value]


class _RawSQLite:
    def __init__(self, path: str) -> None:
        from ledger.store import EVENT_COLUMNS

        self.conn = sqlite3.connect(path, isolation_level=None, timeout=30)
        for p in ("PRAGMA synchronous=NORMAL", "PRAGMA foreign_keys=ON", "PRAGMA busy_timeout=30000"):
            self.conn.execute(p)
        self.sql = (
            f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) VALUES ({', '.join('?' * len(EVENT_COLUMNS))})"
        )
        self.n = 0

    def write(self, prepared: list[Any]) -> None:
        self.n += 1
        bid = f"raw-{self.n:032d}"[:36]
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        c.execute(
            "INSERT INTO ingest_batches (batch_id, created_at, source, rolled_up) VALUES (?, ?, 'raw', 0)",
            (bid, datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")),
        )
        c.executemany(self.sql, [(*p[:-1], bid) for p, _ in prepared])
        c.executemany(
            "INSERT INTO event_tags (event_id, key, value) VALUES (?, ?, ?)",
            [t for _, tags in prepared for t in tags],
        )
        c.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()


class _RawPG:
    def __init__(self, dsn: str) -> None:
        import psycopg

        from ledger.store import EVENT_COLUMNS

        self.conn = psycopg.connect(dsn)
        self.copy_events = f"COPY events ({', '.join(EVENT_COLUMNS)}) FROM STDIN"
        self.n = 0

    def write(self, prepared: list[Any]) -> None:
        self.n += 1
        bid = f"raw-{self.n:032d}"[:36]
        with self.conn.cursor() as cur:
            cur.execute(
                "INSERT INTO ingest_batches (batch_id, created_at, source, rolled_up) "
                "VALUES (%s, %s, 'raw', false)",
                (bid, datetime.now(UTC)),
            )
            with cur.copy(self.copy_events) as cp:
                for p, _ in prepared:
                    cp.write_row((*p[:-1], bid))
            with cur.copy("COPY event_tags (event_id, key, value) FROM STDIN") as cp:
                for _, tags in prepared:
                    for t in tags:
                        cp.write_row(t)
        self.conn.commit()

    def close(self) -> None:
        self.conn.close()


def _ingest(backend: str, n: int, batch: int, seed: int) -> dict[str, Any]:
    from ledger import journal

    tmp = scratch("ing")
    events = Synth(seed).events(n)
    lines = [
        journal.spool.split_lines(__import__("ledger.journal.codec", fromlist=["encode"]).encode(e))[0][0]
        for e in events
    ]
    with _MaybeSchemas(backend) as (url_a, url_b, dsn_b):
        new_ledger(url_a)
        new_ledger(url_b)
        prepared = _prepare(events, "sqlite" if backend == "SQLite" else "postgresql")
        sink = journal.writer.Sink(url_a)
        reject = journal.spool.Reject(Path(tmp))
        raw: Any = _RawSQLite(url_b.removeprefix("sqlite:///")) if backend == "SQLite" else _RawPG(dsn_b)
        try:
            # warm both (engine, price book, statement caches) on a first batch not counted
            warm = min(batch, 200)
            journal.writer.write_lines(sink, reject, lines[:warm], trusted=True)
            raw.write(prepared[:warm])
            t_ledger = t_raw = 0.0
            per_ledger: list[float] = []
            per_raw: list[float] = []
            for k, i in enumerate(range(warm, n, batch)):
                chunk_l, chunk_r = lines[i : i + batch], prepared[i : i + batch]
                for which in ("ledger", "raw") if k % 2 == 0 else ("raw", "ledger"):
                    t0 = time.perf_counter()
                    if which == "ledger":
                        journal.writer.write_lines(sink, reject, chunk_l, trusted=True)
                        dt = time.perf_counter() - t0
                        t_ledger += dt
                        per_ledger.append(dt / len(chunk_l))
                    else:
                        raw.write(chunk_r)
                        dt = time.perf_counter() - t0
                        t_raw += dt
                        per_raw.append(dt / len(chunk_r))
            counted = n - warm
        finally:
            sink.dispose()
            raw.close()
        rejected = (Path(tmp) / "rejected.jsonl").exists()
    return {
        "ledger_eps": counted / t_ledger,
        "raw_eps": counted / t_raw,
        "events": counted,
        "ledger_us_per_event_median_batch": median(per_ledger) * 1e6,
        "raw_us_per_event_median_batch": median(per_raw) * 1e6,
        "rejected_any": rejected,
    }


class _MaybeSchemas:
    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.stack: list[Any] = []

    def __enter__(self) -> tuple[str, str, str]:
        if self.backend == "SQLite":
            tmp = scratch("ing-db")
            return f"sqlite:///{tmp}/a.db", f"sqlite:///{tmp}/b.db", ""
        a, b = pg_schema("inga"), pg_schema("ingb")
        self.stack = [a, b]
        sa, sb = a.__enter__(), b.__enter__()
        return pg_url(sa), pg_url(sb), pg_dsn(sb)

    def __exit__(self, *exc: object) -> None:
        for cm in reversed(self.stack):
            cm.__exit__(None, None, None)


def _spool(m: int) -> dict[str, Any]:
    from ledger.journal import Journal
    from ledger.journal.codec import encode

    tmp = scratch("spool")
    url = f"sqlite:///{tmp}/ledger.db"
    new_ledger(url)
    events = Synth(7).events(m + 200)
    enc = [encode(e) for e in events]
    j = Journal(url, Path(tmp) / "spool")
    fd = os.open(os.path.join(tmp, "baseline.seg"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        for e in events[:200]:
            j.append(e)
        j.flush(60)
        a: list[float] = []
        b: list[float] = []
        pc = time.perf_counter
        for i in range(200, m + 200):
            e, line = events[i], enc[i]
            t0 = pc()
            j.append(e)
            t1 = pc()
            os.write(fd, line)
            t2 = pc()
            a.append(t1 - t0)
            b.append(t2 - t1)
        drained = j.flush(120)
    finally:
        j.close(60)
        os.close(fd)
    return {"append": a, "write": b, "drained": drained, "bytes_per_event": sum(map(len, enc)) / len(enc)}


def main(quick: bool) -> dict[str, Any]:
    fig = "3 ingest"
    n = 30_000 if quick else 200_000
    n_small = 6_000 if quick else 30_000
    rows: list[dict[str, Any]] = []
    notes: dict[str, Any] = {"events": n, "events_small_batches": n_small}
    backends = ["SQLite"]
    pg_why = pg_reachable()
    if pg_why is None:
        backends.append("PostgreSQL")
    for backend in backends:
        for batch, count, target in ((2000, n, 0.5), (50, n_small, 0.0)):

            def run(backend: str = backend, count: int = count, batch: int = batch) -> dict[str, Any]:
                return _ingest(backend, count, batch, seed=11 + batch)

            r = run() if backend == "SQLite" else with_pg_retry(run, f"ingest batch {batch}", notes)
            if r is None:
                rows.append(
                    row(
                        fig,
                        f"writer path events/s, batches of {batch} ({backend})",
                        value=None,
                        unit="",
                        verdict="ERROR",
                        why="PostgreSQL went away twice (stopped by another test?)",
                    )
                )
                continue
            ratio = r["ledger_eps"] / r["raw_eps"]
            raw_name = "raw sqlite3.executemany" if backend == "SQLite" else "raw psycopg COPY"
            rows.append(
                row(
                    fig,
                    f"writer path events/s, batches of {batch} ({backend})",
                    value=r["ledger_eps"],
                    unit="ev/s",
                    baseline_name=raw_name,
                    baseline=r["raw_eps"],
                    ratio=ratio,
                    target="≥ 50 % of raw" if target else "",
                    ok=(ratio >= target) if target else None,
                    **{k: v for k, v in r.items() if k not in ("ledger_eps", "raw_eps")},
                )
            )
    if pg_why is not None:
        rows.append(row(fig, "PostgreSQL ingest", value=None, unit="", verdict="skipped", why=pg_why))

    s = _spool(5_000 if quick else 30_000)
    a50, b50 = median(s["append"]) * 1e6, median(s["write"]) * 1e6
    a99, b99 = pct(s["append"], 99) * 1e6, pct(s["write"], 99) * 1e6
    rows.append(
        row(
            fig,
            "spool Journal.append per event, median",
            value=a50,
            unit="µs",
            baseline_name="os.write of the encoded line",
            baseline=b50,
            appends=len(s["append"]),
            mean_us=sum(s["append"]) / len(s["append"]) * 1e6,
            drained=s["drained"],
            bytes_per_event=round(s["bytes_per_event"], 1),
            note="live journal: its writer thread drains into SQLite meanwhile (GIL shared)",
        )
    )
    rows.append(
        row(
            fig,
            "spool Journal.append per event, p99",
            value=a99,
            unit="µs",
            baseline_name="os.write of the encoded line",
            baseline=b99,
        )
    )
    return {"rows": rows, "notes": notes}
