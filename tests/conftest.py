"""Shared fixtures: real SQLite files, a real PostgreSQL, a real loopback upstream.

Database tests take the ``db_url`` fixture, which runs each test twice: on a fresh SQLite file
and on a fresh schema of the PostgreSQL at ``LEDGER_TEST_POSTGRES_URL`` (default
``postgresql+psycopg://postgres@127.0.0.1:5432/test``). With no PostgreSQL reachable, the
PostgreSQL half skips and says why.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from ledger import journal
from ledger.testing import StandIn

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


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty ledger database URL: a SQLite file, or a PostgreSQL schema of its own."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.db'}"
        return
    problem = pg_problem()
    if problem:
        pytest.skip(problem)
    with fresh_pg_schema() as url:
        yield url


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


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    """An engine on a fresh ledger (``db_url``), migrated to the head."""
    from ledger import store

    eng = store.make_engine(db_url)
    store.ensure_schema(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def ledger_env(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """Point the process at a fresh ledger: its database, spool and home under ``tmp_path``."""
    env = {
        "LEDGER_HOME": str(tmp_path / "home"),
        "LEDGER_DATABASE_URL": db_url,
        "LEDGER_SPOOL_DIR": str(tmp_path / "spool"),
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    for k in (
        "LEDGER_PROJECT",
        "CEREBRAS_API_KEY",
        "LAVA_FORWARD_TOKEN",
        "CEREBRAS_BASE_URL",
        "LAVA_BASE_URL",
    ):
        monkeypatch.delenv(k, raising=False)
    yield env
    journal.close_all(5.0)


@pytest.fixture
def upstream() -> Iterator[StandIn]:
    with StandIn() as server:
        yield server


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


@pytest.fixture(autouse=True)
def _close_journals() -> Iterator[None]:
    yield
    journal.close_all(5.0)


@pytest.fixture
def reliability(request: pytest.FixtureRequest) -> Iterator[Any]:
    """Record one RELIABILITY.md row from a fault, load or hostile-input test.

    Call ``reliability(load=..., fault=..., inputs=..., expected=N, recorded=M, lost=K)`` after
    the test has measured them (``expected``/``recorded`` are event counts, or short text).
    With ``LEDGER_RELIABILITY_OUT=path.jsonl`` set, rows are appended there;
    ``python -m tests._reliability path.jsonl`` turns them into the RELIABILITY.md table.
    """
    rows: list[dict[str, Any]] = []

    def record(
        *, load: str, fault: str, inputs: str = "-", expected: object, recorded: object, lost: object = 0
    ) -> None:
        rows.append(
            {
                "load": load,
                "fault": fault,
                "inputs": inputs,
                "expected": str(expected),
                "recorded": str(recorded),
                "lost": str(lost),
            }
        )

    yield record
    out = os.environ.get("LEDGER_RELIABILITY_OUT")
    failed = getattr(request.node, "rep_call", None)
    if out and rows:
        import json as _json

        status = (
            "xfailed"
            if hasattr(failed, "wasxfail")
            else "failed"
            if failed is not None and failed.failed
            else "passed"
        )
        with open(out, "a", encoding="utf-8") as fh:
            for row in rows:
                fh.write(_json.dumps({"test": request.node.nodeid, "status": status, **row}) + "\n")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    rep = yield
    if rep.when == "call":
        item.rep_call = rep  # type: ignore[attr-defined]
    return rep
