"""Corrections are exact and happen once (issue 11, section 2).

* Two ``prices reprice`` runs at once, each on its own engine, leave exactly one set of
  corrections, on SQLite and PostgreSQL. The runs are held in their transactions until the other
  has finished too or is provably waiting on the database, so the race is always exercised.
* The schema refuses a second correction set of the same generation.
* ``verify`` reports an event whose corrections add up to a cost no price point gives.
* Re-pricing leaves a cost that came from outside (an imported ``cost_usd``) alone unless asked.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
import sqlalchemy as sa

from ledger import store
from ledger.cli.main import main
from ledger.events import CallEvent, Usage, new_event_id
from ledger.money import Money
from ledger.pricing import charge
from ledger.store import prices as pricedb
from ledger.store import reprice as repricing
from ledger.store.schema import EventRow
from ledger.store.verify import verify
from tests.helpers import make_event, write_events

T0 = datetime(2026, 10, 5, 12, tzinfo=UTC)
SINCE, UNTIL = datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC)
NEW_IN, NEW_OUT = 500, 1000  # nano-dollars per token: 0.50 / 1.00 USD per million


def _event(i: int, tags: tuple[tuple[str, str], ...] = (("feature", "chat"),)) -> CallEvent:
    prompt, completion = 100 + i, 50 + 2 * i
    return make_event(
        occurred_at=T0 + timedelta(minutes=i),
        served_model="gpt-oss-120b",
        usage=Usage(prompt, 0, completion, 0, prompt + completion),
        tags=tags,
    )


def _write(engine: sa.Engine, events: list[CallEvent]) -> None:
    write_events(engine, events, "test")


def _new_price(engine: sa.Engine) -> None:
    with store.write_transaction(engine) as conn:
        store.insert_prices(
            conn, [pricedb.new_point("cerebras", "gpt-oss-120b", "0.50", "1.00", effective_from=SINCE)]
        )


def _net(engine: sa.Engine) -> dict[str, tuple[int, int]]:
    """event id -> (net cost, number of correction rows)."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT COALESCE(corrects_event_id, event_id), SUM(cost_nanos), "
                "SUM(CASE WHEN kind = 'correction' THEN 1 ELSE 0 END) FROM events GROUP BY 1"
            )
        ).all()
    return {r[0]: (int(r[1]), int(r[2])) for r in rows}


def _blocked(url: str, probe: sa.Engine, other: dict[str, Any]) -> bool:
    """Whether the other run is provably waiting on the database (so it cannot be in the race)."""
    if url.startswith("sqlite"):
        # write_transaction is BEGIN IMMEDIATE: while this run holds the write lock, the other
        # cannot have begun; if it has begun anyway, it is in the race and must be waited for.
        return not other["began"].is_set()
    if "pid" not in other:
        return False
    with probe.connect() as conn:
        wait = conn.execute(
            sa.text("SELECT wait_event_type FROM pg_stat_activity WHERE pid = :p"), {"p": other["pid"]}
        ).scalar()
    return wait == "Lock"


def _race(url: str, *, allow: type[BaseException] | None = None, **kw: Any) -> list[Any]:
    """Two reprice runs at once, each on its own engine. Each holds its transaction open after
    re-pricing until the other has re-priced too, or is waiting on a database lock."""
    runs: list[dict[str, Any]] = [{"began": threading.Event(), "done": threading.Event()} for _ in range(2)]
    start = threading.Barrier(2)
    probe = store.make_engine(url)

    def one(me: dict[str, Any], other: dict[str, Any]) -> None:
        eng = store.make_engine(url)
        try:
            start.wait(timeout=60)
            with store.write_transaction(eng) as conn:
                if conn.dialect.name == "postgresql":
                    me["pid"] = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar()
                me["began"].set()
                me["result"] = repricing.reprice(conn, SINCE, UNTIL, **kw)
                me["done"].set()
                deadline = time.monotonic() + 60
                while not other["done"].is_set() and not _blocked(url, probe, other):
                    if time.monotonic() > deadline:
                        raise AssertionError("the other run neither finished nor waited on a lock")
                    time.sleep(0.01)
        except BaseException as exc:  # noqa: BLE001 - handed to the test below
            me["error"] = exc
            me["done"].set()
        finally:
            eng.dispose()

    threads = [threading.Thread(target=one, args=(runs[i], runs[1 - i])) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    probe.dispose()
    for r in runs:
        if "error" in r and not (allow and isinstance(r["error"], allow)):
            raise r["error"]
    return [r.get("result", r.get("error")) for r in runs]


def test_two_reprice_runs_at_once_correct_each_event_once(
    db_url: str, engine: sa.Engine, reliability: Any
) -> None:
    events = [_event(i) for i in range(200)]
    _write(engine, events)
    before = _net(engine)
    _new_price(engine)
    results = _race(db_url)
    want = {
        e.event_id: e.usage.prompt_tokens * NEW_IN + e.usage.completion_tokens * NEW_OUT  # type: ignore[union-attr]
        for e in events
    }
    net = _net(engine)
    once = sum(1 for k, v in net.items() if v == (want[k], 2))
    reliability(
        load="two `prices reprice` runs at once, each on its own engine",
        fault="both held in their transactions until the other re-priced or waits on a lock",
        inputs="200 events, one back-dated price",
        expected=len(events),
        recorded=once,
        lost=len(events) - once,
    )
    assert {k: v[0] for k, v in net.items()} == want  # each event at the new price, exactly once
    assert all(v[1] == 2 for v in net.values())  # one reversal and one restatement each
    assert sorted(r.corrections for r in results) == [0, len(events)]
    assert sum(r.delta.nanos for r in results) == sum(want.values()) - sum(v[0] for v in before.values())
    with engine.connect() as conn:
        assert verify(conn) == [] or all(f.check == "rollup" for f in verify(conn))
    # and a third run finds nothing left to do
    with store.write_transaction(engine) as conn:
        assert repricing.reprice(conn, SINCE, UNTIL).corrections == 0


def test_without_the_lock_the_unique_key_still_stops_a_second_set(
    db_url: str, engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lock switched off (as a writer that skips it would be): on PostgreSQL the second run's
    insert waits on the first one's unique key, then fails whole with RepriceConflict (its
    transaction rolls back); on SQLite BEGIN IMMEDIATE still serializes the runs."""
    events = [_event(i) for i in range(50)]
    _write(engine, events)
    _new_price(engine)
    monkeypatch.setattr(repricing, "transaction_lock", lambda conn, key: None)
    outcomes = _race(db_url, allow=repricing.RepriceConflict)
    net = _net(engine)
    assert all(v[1] == 2 for v in net.values()) and len(net) == len(events)
    conflicts = [o for o in outcomes if isinstance(o, repricing.RepriceConflict)]
    written = [o.corrections for o in outcomes if isinstance(o, repricing.RepriceResult)]
    if engine.dialect.name == "postgresql":
        assert len(conflicts) == 1 and written == [len(events)]
        assert "run it again" in str(conflicts[0])
    else:
        assert sorted(written) == [0, len(events)]


def test_the_schema_refuses_a_second_correction_set_of_one_generation(engine: sa.Engine) -> None:
    _write(engine, [_event(1)])
    _new_price(engine)
    with store.write_transaction(engine) as conn:
        assert repricing.reprice(conn, SINCE, UNTIL).corrections == 1
    with engine.connect() as conn:
        rows = _corrections(conn)
    assert len(rows) == 2
    for row in rows:  # the same set again, under new ids: refused by a unique key
        copy = {**row, "event_id": new_event_id()}
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
            conn.execute(sa.insert(cast(sa.Table, EventRow.__table__)), [copy])
    assert len(_net(engine)) == 1 and next(iter(_net(engine).values()))[1] == 2


def _corrections(conn: sa.Connection) -> list[dict[str, Any]]:
    t = EventRow.__table__
    return [
        dict(r._mapping)
        for r in conn.execute(sa.select(t).where(t.c.kind == "correction").order_by(t.c.event_id))
    ]


def _doubled(engine: sa.Engine) -> str:
    """One event re-priced, then its correction set inserted a second time, as a lost race would
    have: a second reversal of the original charge, and a second restatement."""
    _write(engine, [_event(3)])
    _new_price(engine)
    with store.write_transaction(engine) as conn:
        repricing.reprice(conn, SINCE, UNTIL)
    with engine.begin() as conn:
        rows = _corrections(conn)
        top = max(r["correction_seq"] for r in rows)
        copies = [
            {**r, "event_id": new_event_id(), "correction_seq": r["correction_seq"] + top} for r in rows
        ]
        conn.execute(sa.insert(cast(sa.Table, EventRow.__table__)), copies)
    return str(rows[0]["corrects_event_id"])


def test_verify_reports_a_doubled_correction_set(engine: sa.Engine) -> None:
    eid = _doubled(engine)
    with engine.connect() as conn:
        findings = [f for f in verify(conn) if f.check == "corrections"]
    assert len(findings) == 1 and eid in findings[0].problem, findings


def test_verify_cli_reports_a_doubled_correction_set(
    engine: sa.Engine, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    eid = _doubled(engine)
    capsys.readouterr()
    code = main(["--database-url", db_url, "verify"])
    out = capsys.readouterr()
    assert code != 0 and eid in out.out + out.err


def test_verify_is_quiet_after_honest_repricing_twice(engine: sa.Engine) -> None:
    _write(engine, [_event(i) for i in range(5)])
    _new_price(engine)
    with store.write_transaction(engine) as conn:
        repricing.reprice(conn, SINCE, UNTIL)
    with store.write_transaction(engine) as conn:  # and back to a third price: a second generation
        store.insert_prices(
            conn,
            [
                pricedb.new_point(
                    "cerebras", "gpt-oss-120b", "0.70", "1.40", effective_from=SINCE + timedelta(days=1)
                )
            ],
        )
        assert repricing.reprice(conn, SINCE, UNTIL).corrections == 5
    with engine.connect() as conn:
        assert [f for f in verify(conn) if f.check == "corrections"] == []
        seqs = sorted(
            conn.execute(sa.text("SELECT correction_seq FROM events WHERE kind = 'correction'")).scalars()
        )
    assert seqs == sorted([1, 2, 3, 4] * 5)


def _import(tmp_path: Path, db_url: str, capsys: pytest.CaptureFixture[str], cost: str) -> str:
    eid = new_event_id()
    path = tmp_path / "in.csv"
    path.write_text(
        "event_id,occurred_at,project,route,model,status,http_status,stream,prompt_tokens,cached_tokens,"
        "completion_tokens,reasoning_tokens,total_tokens,cost_usd,free,priced,upstream_id,tags\n"
        f"{eid},2026-10-05T12:00:00Z,alpha,cerebras,gpt-oss-120b,ok,200,false,1000,0,500,0,1500,{cost},"
        "false,true,,{}\n",
        encoding="utf-8",
    )
    capsys.readouterr()
    assert main(["--database-url", db_url, "events", "import", str(path)]) == 0
    return eid


def test_reprice_leaves_an_imported_cost_alone_unless_asked(
    engine: sa.Engine, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    imported = _import(tmp_path, db_url, capsys, "12.50")
    _write(engine, [_event(7)])
    _new_price(engine)
    args = ["--database-url", db_url, "prices", "reprice", "--since", "2026-10-01", "--until", "2026-11-01"]
    capsys.readouterr()
    assert main(args) == 0
    assert "wrote 1 correction(s)" in capsys.readouterr().out  # the recorded event only
    assert _net(engine)[imported] == (12_500_000_000, 0)
    assert main(args) == 0 and "wrote 0 correction(s)" in capsys.readouterr().out
    assert main([*args, "--include-imported"]) == 0
    assert "wrote 1 correction(s)" in capsys.readouterr().out
    assert _net(engine)[imported] == (1000 * NEW_IN + 500 * NEW_OUT, 2)
    with engine.connect() as conn:
        assert [f for f in verify(conn) if f.check == "corrections"] == []


def test_migration_numbers_existing_corrections_and_verify_finds_an_old_doubled_set(db_url: str) -> None:
    """A ledger at 0004 with one honest correction set and one doubled by the old race: 0005
    numbers them in the order they were written, and verify names the doubled event."""
    from ledger.pricing import BUILTIN_PRICES, Charge

    eng = store.make_engine(db_url)
    try:
        store.upgrade(eng, "0004")
        point = pricedb.new_point("cerebras", "gpt-oss-120b", "0.50", "1.00", effective_from=SINCE)
        honest, doubled = _event(1), _event(2)
        with store.write_transaction(eng) as conn:
            store.insert_prices(conn, BUILTIN_PRICES)  # (seeded at the head only)
            old_book = store.load_price_book(conn)  # the originals were charged before the new point
            store.insert_prices(conn, [point])
            events = sa.Table("events", sa.MetaData(), autoload_with=conn)
            now = datetime.now(UTC)
            rows = []
            for e, sets in ((honest, 1), (doubled, 2)):
                c0 = charge(e, old_book)
                rows.append(store.event_row(e, c0, now))
                cost = e.usage.prompt_tokens * NEW_IN + e.usage.completion_tokens * NEW_OUT  # type: ignore[union-attr]
                u = e.usage
                assert u is not None and c0.cost is not None
                for _ in range(sets):  # each set reverses the original, as two racing runs did
                    neg = Usage(-u.prompt_tokens, 0, -u.completion_tokens, 0, -u.total_tokens)
                    rows.append(
                        store.event_row(
                            repricing._event_of(_Row(e), neg, "reversal"),
                            Charge(c0.price_id, -c0.cost, False, True),
                            now,
                            kind="correction",
                            corrects=e.event_id,
                        )
                    )
                    rows.append(
                        store.event_row(
                            repricing._event_of(_Row(e), u, "restatement"),
                            Charge(point.price_id, Money(cost), False, True),
                            now,
                            kind="correction",
                            corrects=e.event_id,
                        )
                    )
            keep = {c.name for c in events.columns}
            conn.execute(sa.insert(events), [{k: v for k, v in r.items() if k in keep} for r in rows])
        store.upgrade(eng)
        with eng.connect() as conn:
            seqs: dict[str, int] = dict(
                conn.execute(sa.text("SELECT event_id, correction_seq FROM events")).all()
            )
            findings = [f for f in verify(conn) if f.check == "corrections"]
        by_event: dict[str, list[int]] = {}
        for r in rows:
            if r["corrects_event_id"]:
                by_event.setdefault(r["corrects_event_id"], []).append(seqs[r["event_id"]])
        assert by_event == {honest.event_id: [1, 2], doubled.event_id: [1, 2, 3, 4]}
        assert len(findings) == 1 and doubled.event_id in findings[0].problem
        assert honest.event_id not in findings[0].problem
    finally:
        eng.dispose()


class _Row:
    """An event as reprice reads it from the database (the fields _event_of takes)."""

    def __init__(self, e: CallEvent) -> None:
        self.occurred_at, self.project, self.route, self.book = e.occurred_at, e.project, e.route, e.book
        self.requested_model, self.served_model, self.status = e.requested_model, e.served_model, e.status
        self.http_status, self.error_type, self.error_code, self.stream = e.http_status, None, None, e.stream
        self.upstream_id, self.lava_request_id, self.tags = None, None, "{}"
        self.endpoint = e.endpoint
