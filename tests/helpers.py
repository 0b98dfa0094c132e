"""What the tests share that is not a fixture: paths, databases, and one way to make a ``CallEvent``.

Fixtures live in ``tests/conftest.py`` (pytest applies them to every folder); the plain helpers
they and the tests use live here, so a test imports them by name (``from tests.helpers import
make_event``) whatever folder it sits in.

* Paths: :data:`ROOT` (the checkout), :data:`TESTS` (this folder), :data:`WIRE` (the shared wire
  captures, ``../shared/wire`` beside the checkout); none depends on the depth of a test file.
* Databases: :data:`PG_URL`, :func:`pg_problem`, :func:`pg_schema_url`, :func:`fresh_pg_schema`,
  :func:`write_events`, :func:`fetch_events`.
* Events: :func:`make_event` (one plain call, any field overridden) and :func:`random_event`
  (a varied one drawn from a seeded ``random.Random``).
"""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from ledger import journal
from ledger.events import CallEvent, Usage, new_event_id

__all__ = [
    "PG_URL",
    "ROOT",
    "TESTS",
    "WIRE",
    "fetch_events",
    "fresh_pg_schema",
    "make_event",
    "pg_problem",
    "pg_schema_url",
    "random_event",
    "write_events",
]

# -- paths ---------------------------------------------------------------------------------------

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
WIRE = ROOT.parent / "shared" / "wire"
if not WIRE.is_dir():  # pragma: no cover - a checkout elsewhere
    WIRE = Path("/work/shared/wire")


# -- databases -----------------------------------------------------------------------------------

PG_URL = os.environ.get("LEDGER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _pg_problem() -> str | None:
    try:
        engine = sa.create_engine(PG_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        engine.dispose()
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means "no PostgreSQL here"
        return f"PostgreSQL not reachable at {PG_URL}: {type(exc).__name__}"


_PG_PROBLEM: str | None | bool = False


def pg_problem() -> str | None:
    global _PG_PROBLEM
    if _PG_PROBLEM is False:
        _PG_PROBLEM = _pg_problem()
    return _PG_PROBLEM  # type: ignore[return-value]


def pg_schema_url(schema: str) -> str:
    sep = "&" if "?" in PG_URL else "?"
    return f"{PG_URL}{sep}options=-csearch_path%3D{schema}"


@contextmanager
def fresh_pg_schema() -> Iterator[str]:
    """A URL of a PostgreSQL schema of its own, dropped afterwards (PostgreSQL must be reachable)."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield pg_schema_url(schema)
    finally:
        journal.close_all(2.0)
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


def write_events(target: sa.Engine | str, events: Sequence[Any], source: str = "spool") -> None:
    """Price ``events`` (``CallEvent``s) by the book in the database and insert them as one ingest
    batch, as the writer would; ``target`` is an engine, or a URL (its schema made first)."""
    from ledger import store
    from ledger.pricing import charge

    engine = store.make_engine(target) if isinstance(target, str) else target
    try:
        if isinstance(target, str):
            store.ensure_schema(engine)
        with store.write_transaction(engine) as conn:
            book = store.load_price_book(conn)
            now = datetime.now(UTC)
            store.insert_events(conn, [store.event_row(e, charge(e, book), now) for e in events], source)
    finally:
        if isinstance(target, str):
            engine.dispose()


def fetch_events(url: str, where: str = "1=1") -> list[dict[str, Any]]:
    """Every row of the events table, as dicts, oldest first."""
    from ledger import store

    engine = store.make_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text(f"SELECT * FROM events WHERE {where} ORDER BY occurred_at, event_id"))
            return [dict(r._mapping) for r in rows]
    finally:
        engine.dispose()


# -- events --------------------------------------------------------------------------------------


def make_event(**overrides: Any) -> CallEvent:
    """One plain attempt, any field overridden: a fresh id, now, project ``alpha``, a direct
    Cerebras call of ``gpt-oss-120b`` (no served model) answered 200 with 1000 prompt and 500
    completion tokens, not streamed, 1 ms, no timings, ids or tags. ``book`` follows ``route``
    unless given."""
    values: dict[str, Any] = {
        "event_id": new_event_id(),
        "occurred_at": datetime.now(UTC),
        "project": "alpha",
        "route": "cerebras",
        "requested_model": "gpt-oss-120b",
        "served_model": None,
        "status": "ok",
        "http_status": 200,
        "error_type": None,
        "error_code": None,
        "stream": False,
        "usage": Usage(1000, 0, 500, 0, 1500),
        "latency_us": 1000,
        "ttft_us": None,
        "time_info": None,
        "upstream_id": None,
        "lava_request_id": None,
        "tags": (),
    }
    values.update(overrides)
    values.setdefault("book", values["route"])
    return CallEvent(**values)


_MODELS = ("gpt-oss-120b", "llama3.1-8b", "qwen-3-235b-instruct", "mystery-model")


def random_event(when: datetime, rng: random.Random, project: str | None = None) -> CallEvent:
    """A varied attempt at ``when``: route, model, status (mostly ok), usage, streaming and a
    ``feature`` tag drawn from ``rng``; the project too, unless given."""
    route = rng.choice(("cerebras", "lava"))
    prompt, completion = rng.randint(1, 5000), rng.randint(1, 3000)
    status = rng.choices(("ok", "error", "incomplete"), weights=(90, 5, 5))[0]
    usage = Usage(prompt, rng.randint(0, prompt), completion, rng.randint(0, completion), prompt + completion)
    return make_event(
        occurred_at=when,
        project=project or rng.choice(("alpha", "beta", "gamma")),
        route=route,
        requested_model=rng.choice(_MODELS),
        status=status,
        http_status=200 if status != "error" else 429,
        stream=rng.random() < 0.5,
        usage=usage if status == "ok" else None,
        tags=(("feature", rng.choice(("chat", "search"))),),
    )
