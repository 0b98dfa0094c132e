"""Shared helpers for the benchmark workers: rows, statistics, PostgreSQL schemas, synthetic data.

Nothing here asserts on time. Every figure is a ratio against a baseline measured in the same
process run (interleaved where possible), because the machine is shared and absolute times drift.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import random
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

T = TypeVar("T")

PG_BASE = os.environ.get("LEDGER_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def scratch(prefix: str) -> str:
    """A temporary folder, removed when the worker exits (the 10 M-event ledger is ~8 GB)."""
    path = tempfile.mkdtemp(prefix=f"ledger-bench-{prefix}-")
    atexit.register(shutil.rmtree, path, True)
    return path


# -- result rows ---------------------------------------------------------------------------------


def row(
    figure: str,
    name: str,
    *,
    value: float | None,
    unit: str,
    baseline_name: str = "",
    baseline: float | None = None,
    ratio: float | None = None,
    target: str = "",
    ok: bool | None = None,
    verdict: str | None = None,
    **detail: Any,
) -> dict[str, Any]:
    """One line of the results table. ``ratio`` defaults to value / baseline; ``ok`` says whether
    the target is met (``None``: informational)."""
    if ratio is None and value is not None and baseline:
        ratio = value / baseline
    if verdict is None:
        verdict = "info" if ok is None else ("met" if ok else "MISSED")
    return {
        "figure": figure,
        "name": name,
        "value": value,
        "unit": unit,
        "baseline_name": baseline_name,
        "baseline": baseline,
        "ratio": ratio,
        "target": target,
        "verdict": verdict,
        "detail": detail,
    }


def median(xs: Sequence[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def pct(xs: Sequence[float], q: float) -> float:
    """The q-th percentile (nearest rank)."""
    s = sorted(xs)
    k = max(0, min(len(s) - 1, round(q / 100 * len(s) + 0.5) - 1))
    return s[k]


# -- PostgreSQL ----------------------------------------------------------------------------------


def pg_reachable() -> str | None:
    """``None`` if PostgreSQL answers, else why not."""
    try:
        import psycopg
    except ImportError:
        return "psycopg not installed"
    try:
        with psycopg.connect(pg_dsn(), connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return None
    except Exception as exc:  # noqa: BLE001
        return (
            f"PostgreSQL not reachable: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        )


def pg_dsn(schema: str | None = None) -> str:
    dsn = PG_BASE.replace("postgresql+psycopg://", "postgresql://")
    if schema:
        dsn += ("&" if "?" in dsn else "?") + f"options=-csearch_path%3D{schema}"
    return dsn


def pg_url(schema: str) -> str:
    return PG_BASE + ("&" if "?" in PG_BASE else "?") + f"options=-csearch_path%3D{schema}"


@contextlib.contextmanager
def pg_schema(tag: str) -> Iterator[str]:
    """A dedicated, empty schema ``bench_<tag>_<pid>_<hex>``, dropped afterwards (if PostgreSQL is
    down at that moment, :func:`drop_stale_schemas` removes it on the next run)."""
    import psycopg

    name = f"bench_{tag}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(pg_dsn(), autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{name}"')
    try:
        yield name
    finally:
        for _ in range(3):
            try:
                with psycopg.connect(pg_dsn(), autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
                break
            except psycopg.OperationalError:
                wait_for_pg(30)


def drop_stale_schemas() -> list[str]:
    """Drop ``bench_*`` schemas left by benchmark processes that no longer exist."""
    import psycopg

    dropped = []
    try:
        with psycopg.connect(pg_dsn(), autocommit=True, connect_timeout=3) as conn:
            names = [
                r[0] for r in conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'bench\\_%'")
            ]
            for name in names:
                parts = name.split("_")
                if len(parts) >= 4 and parts[-2].isdigit() and not _alive(int(parts[-2])):
                    conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
                    dropped.append(name)
    except Exception as exc:  # noqa: BLE001 - best effort: PostgreSQL may be down
        print(f"(could not look for stale benchmark schemas: {type(exc).__name__})")
    return dropped


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def wait_for_pg(timeout: float) -> bool:
    """Wait until PostgreSQL answers again (other people's tests on this machine stop it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pg_reachable() is None:
            return True
        time.sleep(2)
    return False


def pg_lost(exc: BaseException) -> bool:
    """Whether ``exc`` (or its cause) is PostgreSQL going away, rather than a bug."""
    try:
        import psycopg
    except ImportError:
        return False
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, psycopg.OperationalError):
            return True
        orig = getattr(seen, "orig", None)
        if isinstance(orig, psycopg.OperationalError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def with_pg_retry(fn: Callable[[], T], what: str, notes: dict[str, Any]) -> T | None:
    """Run a PostgreSQL measurement; if PostgreSQL went away meanwhile (someone's test stopped
    it), wait for it and run it once more. ``None`` (and a note) if it fails again."""
    for attempt in (1, 2):
        try:
            return fn()
        except Exception as exc:
            if not pg_lost(exc):
                raise
            notes.setdefault("postgresql_interruptions", []).append(
                f"{what}: attempt {attempt}: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
            )
            if attempt == 2 or not wait_for_pg(120):
                return None
    return None


def pg_version() -> str | None:
    try:
        import psycopg

        with psycopg.connect(pg_dsn(), connect_timeout=3) as conn:
            return str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
    except Exception:  # noqa: BLE001
        return None


# -- synthetic data ------------------------------------------------------------------------------

PROJECTS = [f"proj-{i:03d}" for i in range(100)]
# (route, book, model, weight): mostly priced models, some free Lava ones, one the books don't know.
MODELS = [
    ("cerebras", "cerebras", "gpt-oss-120b", 30),
    ("cerebras", "cerebras", "llama3.1-8b", 15),
    ("cerebras", "cerebras", "qwen-3-32b", 8),
    ("cerebras", "cerebras", "llama-3.3-70b", 8),
    ("cerebras", "cerebras", "zai-glm-4.7", 4),
    ("lava", "lava", "gpt-oss-120b", 15),
    ("lava", "lava", "qwen-3-235b-instruct", 8),
    ("lava", "lava", "llama3.1-8b", 10),
    ("cerebras", "cerebras", "mystery-model-x", 2),
]
MONTH = datetime(2025, 3, 1, tzinfo=UTC)
MONTH_SECONDS = 31 * 86400


class Synth:
    """Deterministic synthetic traffic: 100 projects (Zipf-like), 9 route/model pairs, 93 % ok,
    5 % error, 2 % incomplete, two tags per event, spread over March 2025 (UTC)."""

    def __init__(self, seed: int = 1) -> None:
        self.rng = random.Random(seed)
        w = [1 / (i + 1) ** 0.8 for i in range(len(PROJECTS))]
        self.project_w = list(_cum(w))
        self.model_w = list(_cum([m[3] for m in MODELS]))
        self._book: Any = None

    def pick(self) -> tuple[str, tuple[str, str, str, int], str]:
        r = self.rng
        project = r.choices(PROJECTS, cum_weights=self.project_w)[0]
        model = r.choices(MODELS, cum_weights=self.model_w)[0]
        x = r.random()
        status = "ok" if x < 0.93 else ("error" if x < 0.98 else "incomplete")
        return project, model, status

    # CallEvents (for the spool path) ---------------------------------------------------------

    def events(self, n: int, start: datetime = MONTH, span_s: float = MONTH_SECONDS) -> list[Any]:
        from ledger.events import CallEvent, TimeInfo, Usage, new_event_id

        out = []
        r = self.rng
        for i in range(n):
            project, (route, book, model, _), status = self.pick()
            when = start + timedelta(seconds=span_s * i / n)
            usage = tinfo = None
            http, etype, ecode = 200, None, None
            if status == "ok":
                p, c = r.randint(20, 4000), r.randint(1, 2000)
                usage = Usage(
                    p, p // 4 if r.random() < 0.2 else 0, c, c // 3 if "gpt-oss" in model else 0, p + c
                )
                tinfo = TimeInfo(500, 1200, 3700, 7500)
            elif status == "error":
                http, etype, ecode = 429, "too_many_requests_error", "queue_exceeded"
            out.append(
                CallEvent(
                    event_id=new_event_id(),
                    occurred_at=when,
                    project=project,
                    route=route,
                    book=book,  # type: ignore[arg-type]
                    requested_model=model,
                    served_model=model if status == "ok" else None,
                    status=status,  # type: ignore[arg-type]
                    http_status=http,
                    error_type=etype,
                    error_code=ecode,
                    stream=r.random() < 0.4,
                    usage=usage,
                    latency_us=r.randint(80_000, 900_000),
                    ttft_us=None,
                    time_info=tinfo,
                    upstream_id=f"chatcmpl-{uuid.UUID(int=r.getrandbits(128))}" if status == "ok" else None,
                    lava_request_id=f"req_{r.getrandbits(96):024x}" if route == "lava" else None,
                    tags=(
                        ("env", "prod" if r.random() < 0.8 else "staging"),
                        ("user", f"u{r.randint(0, 49)}"),
                    ),
                    source="wrapper",
                )
            )
        return out

    # raw rows (for filling a ledger fast) ----------------------------------------------------

    def _charges(self) -> dict[tuple[str, str], Any]:
        if self._book is None:
            from ledger.pricing import BUILTIN_PRICES, PriceBook

            book = PriceBook(BUILTIN_PRICES)
            self._book = {}
            for _route, bk, model, _ in MODELS:
                pt = book.price_for(bk, model, MONTH)
                lst = book.price_for("cerebras", model, MONTH)
                self._book[(bk, model)] = (pt, lst)
        return self._book  # type: ignore[no-any-return]

    def raw_rows(
        self,
        n: int,
        first: int,
        batch_size: int,
        *,
        id_prefix: str,
        dialect: str,
        start: datetime = MONTH,
        span_s: float = MONTH_SECONDS,
        tags: bool = True,
    ) -> Iterator[tuple[str, list[tuple[Any, ...]], list[tuple[str, str, str]]]]:
        """Batches of event rows in ``store.EVENT_COLUMNS`` order as the driver takes them
        (SQLite: UTC text and 0/1; PostgreSQL: aware datetimes and bools), with their tag rows.
        Yields (batch_id, event_rows, tag_rows). Ids sort in insertion order, like UUIDv7."""
        charges = self._charges()
        r = self.rng
        sqlite = dialect == "sqlite"
        recorded = datetime(2025, 4, 1, tzinfo=UTC)
        rec = recorded.strftime("%Y-%m-%d %H:%M:%S.%f") if sqlite else recorded
        t, f = (1, 0) if sqlite else (True, False)
        i = first
        end = first + n
        while i < end:
            m = min(batch_size, end - i)
            batch_id = f"{id_prefix}b{i // batch_size:07x}-0000-7000-8000-000000000000"[:36]
            rows: list[tuple[Any, ...]] = []
            tag_rows: list[tuple[str, str, str]] = []
            for j in range(i, i + m):
                project, (route, book, model, _), status = self.pick()
                eid = f"{id_prefix}{j:07x}-0000-7000-8000-{r.getrandbits(48):012x}"
                when = start + timedelta(seconds=span_s * (j - first) / n)
                occ = when.strftime("%Y-%m-%d %H:%M:%S.%f") if sqlite else when
                pt, lst = charges[(book, model)]
                if status == "ok":
                    p, c = r.randint(20, 4000), r.randint(1, 2000)
                    cached, reasoning = (
                        (p // 4 if r.random() < 0.2 else 0),
                        (c // 3 if "gpt-oss" in model else 0),
                    )
                    usage = (t, p, cached, c, reasoning, p + c)
                    cost = (
                        None if pt is None else (0 if pt.free else pt.input.nanos * p + pt.output.nanos * c)
                    )
                    list_cost = None if lst is None else lst.input.nanos * p + lst.output.nanos * c
                    priced = pt is not None
                    http, et, ec, served = 200, None, None, model
                    times = (500, 1200, 3700, 7500)
                elif status == "error":
                    usage = (f, None, None, None, None, None)
                    cost, list_cost, priced = 0, 0, True
                    http, et, ec, served = 429, "too_many_requests_error", "queue_exceeded", None
                    times = (None, None, None, None)
                else:
                    usage = (f, None, None, None, None, None)
                    cost, list_cost, priced = None, None, False
                    http, et, ec, served = 200, None, None, model
                    times = (None, None, None, None)
                env = "prod" if r.random() < 0.8 else "staging"
                user = f"u{r.randint(0, 49)}"
                tag_json = f'{{"env": "{env}", "user": "{user}"}}' if tags else "{}"
                rows.append(
                    (
                        eid,
                        "usage",
                        None,
                        occ,
                        rec,
                        project,
                        route,
                        book,
                        model,
                        served,
                        status,
                        http,
                        et,
                        ec,
                        t if r.random() < 0.4 else f,
                        *usage,
                        r.randint(80_000, 900_000),
                        None,
                        *times,
                        f"chatcmpl-{eid}" if served else None,
                        None,
                        pt.price_id if pt is not None else None,
                        cost,
                        (t if pt.free else f) if pt is not None else f,
                        t if priced else f,
                        tag_json,
                        "wrapper",
                        None,
                        list_cost,
                        "chat.completions",
                        *_NO_WIRE_FACTS,
                        0,
                        batch_id,
                    )
                )
                if tags:
                    tag_rows.append((eid, "env", env))
                    tag_rows.append((eid, "user", user))
            from ledger.store import EVENT_COLUMNS

            assert len(rows[0]) == len(EVENT_COLUMNS), "raw_rows is out of step with the events table"
            yield batch_id, rows, tag_rows
            i += m


_NO_WIRE_FACTS = (None,) * 7  # service_tier … rl_remaining_requests_day (migration 0006)


def _cum(ws: Sequence[float]) -> Iterator[float]:
    acc = 0.0
    for w in ws:
        acc += w
        yield acc


# -- filling a ledger with raw driver inserts ----------------------------------------------------


def fill_sqlite(
    path: str,
    synth: Synth,
    n: int,
    first: int,
    *,
    batch_size: int = 2000,
    id_prefix: str,
    rolled_up: bool,
    tags: bool = True,
    commit_every: int = 100_000,
) -> int:
    """Append ``n`` synthetic events (in ingest batches of ``batch_size``) with sqlite3.executemany."""
    import sqlite3

    from ledger.store import EVENT_COLUMNS

    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-1048576")  # 1 GiB: the random-order project index stays in memory
    ev_sql = f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) VALUES ({', '.join('?' * len(EVENT_COLUMNS))})"
    since = 0
    conn.execute("BEGIN")
    for batch_id, rows, tag_rows in synth.raw_rows(
        n, first, batch_size, id_prefix=id_prefix, dialect="sqlite", tags=tags
    ):
        conn.execute(
            "INSERT INTO ingest_batches (batch_id, created_at, source, rolled_up) VALUES (?, ?, ?, ?)",
            (batch_id, f"2025-04-01 00:00:00.{first // batch_size % 1000000:06d}", "bench", int(rolled_up)),
        )
        conn.executemany(ev_sql, rows)
        if tag_rows:
            conn.executemany("INSERT INTO event_tags (event_id, key, value) VALUES (?, ?, ?)", tag_rows)
        since += len(rows)
        if since >= commit_every:
            conn.execute("COMMIT")
            conn.execute("BEGIN")
            since = 0
    conn.execute("COMMIT")
    conn.close()
    return n


def fill_pg(
    dsn: str,
    synth: Synth,
    n: int,
    first: int,
    *,
    batch_size: int = 2000,
    id_prefix: str,
    rolled_up: bool,
    tags: bool = True,
) -> int:
    """Append ``n`` synthetic events with psycopg COPY, in transactions of ~100k events."""
    import psycopg

    from ledger.store import EVENT_COLUMNS

    with psycopg.connect(dsn) as conn:
        batches: list[tuple[str, list[Any], list[Any]]] = []

        def flush() -> None:
            with conn.cursor() as cur:
                with cur.copy(
                    "COPY ingest_batches (batch_id, created_at, source, rolled_up) FROM STDIN"
                ) as cp:
                    for bid, _, _ in batches:
                        cp.write_row((bid, datetime(2025, 4, 1, tzinfo=UTC), "bench", rolled_up))
                with cur.copy(f"COPY events ({', '.join(EVENT_COLUMNS)}) FROM STDIN") as cp:
                    for _, rows, _ in batches:
                        for rw in rows:
                            cp.write_row(rw)
                if tags:
                    with cur.copy("COPY event_tags (event_id, key, value) FROM STDIN") as cp:
                        for _, _, trs in batches:
                            for tr in trs:
                                cp.write_row(tr)
            conn.commit()
            batches.clear()

        count = 0
        for b in synth.raw_rows(n, first, batch_size, id_prefix=id_prefix, dialect="postgresql", tags=tags):
            batches.append(b)
            count += len(b[1])
            if count >= 100_000:
                flush()
                count = 0
        if batches:
            flush()
    return n


def new_ledger(url: str) -> None:
    """Create (migrate) a ledger at ``url`` the ledger's own way."""
    from ledger import store

    engine = store.make_engine(url)
    try:
        store.ensure_schema(engine)
    finally:
        engine.dispose()


def dump(obj: Any, path: str) -> None:
    with open(path, "w") as fh:
        json.dump(obj, fh, indent=1, default=str)
