"""`cerebras-ledger verify` finds each kind of inconsistency, and nothing on a healthy ledger."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from ledger import store
from ledger.cli.main import main
from ledger.pricing import BUILTIN_PRICES, make_price_id
from ledger.store import rollup
from ledger.store.verify import verify
from tests.helpers import random_event, write_events


@pytest.fixture
def engine(engine: sa.Engine) -> sa.Engine:
    """The shared ``engine`` with 60 events written and rolled up: a healthy ledger."""
    rng = random.Random(9)
    write_events(
        engine,
        [random_event(datetime(2026, 11, 2, tzinfo=UTC) + timedelta(minutes=i * 7), rng) for i in range(60)],
    )
    rollup.rollup(engine)
    return engine


def _checks(engine: sa.Engine, spool: Path | None = None) -> list[str]:
    with engine.connect() as conn:
        return [f.check for f in verify(conn, spool)]


def test_a_healthy_ledger_has_no_findings(
    engine: sa.Engine, tmp_path: Path, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _checks(engine, tmp_path) == []
    assert main(["--database-url", db_url, "verify"]) == 0
    assert "ledger is consistent" in capsys.readouterr().out


def test_rollup_drift_and_pending_batches_are_found(
    engine: sa.Engine, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with store.write_transaction(engine) as conn:
        conn.execute(
            sa.text(
                "UPDATE usage_rollup SET cost_nanos = cost_nanos + 1 WHERE project = 'alpha' "
                "AND kind = 'usage' AND priced = :t"
            ),
            {"t": True},
        )
    assert "rollup" in _checks(engine)
    write_events(engine, [random_event(datetime(2026, 11, 3, tzinfo=UTC), random.Random(1))])
    with engine.connect() as conn:
        problems = [f.problem for f in verify(conn)]
    assert any("not rolled up yet" in p for p in problems)
    assert main(["--database-url", db_url, "verify", "--format", "json"]) == 1
    assert '"check": "rollup"' in capsys.readouterr().out


def test_unflagged_costs_are_found(engine: sa.Engine) -> None:
    with store.write_transaction(engine) as conn:
        conn.execute(
            sa.text(
                "UPDATE events SET priced = :f WHERE cost_nanos > 0 AND kind = 'usage' "
                "AND event_id = (SELECT MIN(event_id) FROM events WHERE cost_nanos > 0)"
            ),
            {"f": False},
        )
    assert "pricing" in _checks(engine)


def test_spool_leftovers_are_found(engine: sa.Engine, tmp_path: Path) -> None:
    (tmp_path / "123-abc.seg").write_bytes(b"")  # nobody holds its lock: its process died
    assert _checks(engine, tmp_path) == ["spool"]
    (tmp_path / "123-abc.seg").unlink()
    (tmp_path / "rejected.jsonl").write_bytes(b"garbage\n")
    assert _checks(engine, tmp_path) == ["spool"]


def test_ambiguous_prices_are_found(engine: sa.Engine) -> None:
    lava = next(p for p in BUILTIN_PRICES if p.book == "lava" and p.model == "qwen-3-235b-instruct")
    twin = replace(
        lava,
        model="qwen-3-235b-a22b-instruct-2507",
        price_id=make_price_id("lava", "qwen-3-235b-a22b-instruct-2507", lava.effective_from),
    )
    with store.write_transaction(engine) as conn:
        store.insert_prices(conn, [twin])
    assert _checks(engine) == ["prices"]


def test_corrections_pointing_nowhere_are_found(engine: sa.Engine, db_url: str) -> None:
    if engine.dialect.name == "postgresql":
        pytest.skip("PostgreSQL's foreign key already refuses a correction of a missing event")
    raw = sa.create_engine(db_url)  # a connection without the ledger's foreign_keys=ON
    with raw.begin() as conn:
        from ledger.store import EVENT_COLUMNS

        fixed = {
            "event_id": "'ffffffff-0000-7000-8000-000000000000'",
            "kind": "'correction'",
            "corrects_event_id": "'00000000-dead-7000-8000-000000000000'",
            "correction_seq": "1",
        }
        conn.execute(
            sa.text(
                f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) "
                f"SELECT {', '.join(fixed.get(c, c) for c in EVENT_COLUMNS)} FROM events LIMIT 1"
            )
        )
    raw.dispose()
    assert "corrections" in _checks(engine)
