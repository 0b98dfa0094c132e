"""Shared fixtures: real SQLite files, a real PostgreSQL, a real loopback upstream.

Database tests take the ``db_url`` fixture, which runs each test twice: on a fresh SQLite file
and on a fresh schema of the PostgreSQL at ``LEDGER_TEST_POSTGRES_URL`` (default
``postgresql+psycopg://postgres@127.0.0.1:5432/test``). With no PostgreSQL reachable, the
PostgreSQL half skips and says why. ``engine`` is an engine on that ledger, migrated to the head.
Plain helpers (paths, databases, ``make_event``) are in :mod:`tests.helpers`.

The folders mirror the package's stages; a test file sits with the stage it mainly exercises:

* ``call/``: the call path: wrapper clients, the SDKs, the wire and its recorded shapes, the
  stream tap, misbehaving upstreams, the public types (``_replay.py``: the replaying upstream).
* ``journal/``: the spool encoding of events, the writer process.
* ``store/``: migrations, the writer's two insert paths, rollups, ``verify``, corrections.
* ``budgets/``: alerts, webhook delivery, hard budgets.
* ``reports/``: spend reports, a generated month end to end.
* ``exports/``: the FOCUS export and its validator, billing catch-up, event import.
* ``cli/``: the command line, ``--out`` files, the scheduler and its jobs, the ``Ledger`` API.
* ``system/``: durability, storage faults, stalls, load, soak, hostile inputs, secrets
  (``_caller.py`` and ``_load_worker.py``: the child processes they start).
* top level: the package as a whole (``test_package``, ``test_layout``), the foundations
  (``test_money``, ``test_pricing``), ``_reliability.py`` (RELIABILITY.md's table, from the rows
  the ``reliability`` fixture records) and ``focus_validator_overrides.yaml`` (the README names
  its path).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from ledger import journal
from ledger.testing import StandIn
from tests.helpers import fresh_pg_schema, pg_problem


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
