"""The writer's fast path and the general path write the very same rows.

``store.insert_spooled`` (spool records straight to driver tuples; COPY on PostgreSQL) exists
only for speed; ``store.event_row`` + ``store.insert_events`` is the plain, general path used by
import and reprice. Here a few hundred varied events (every status and route, unknown and free
models, odd text: NUL, lone surrogates, RTL marks, emoji, over-long strings, many tags) go through
both paths on SQLite and PostgreSQL, and every column of every row, and every tag row, is compared.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa

from ledger import journal, store
from ledger.events import ROUTES, STATUSES, CallEvent, TimeInfo, Usage, new_event_id, normalize_tags
from ledger.journal.codec import decode_fields, encode
from ledger.pricing import BUILTIN_PRICES, PriceBook, charge
from ledger.store.schema import EventRow
from tests.helpers import make_event

ODD = [
    "",
    "plain",
    "ü-proj",
    "a\x00b",
    "\ud800x",
    "\u202eevil",
    "zero\u200bwidth",
    "e\u0301",
    "🧪" * 3,
    "x" * 250,
    "y" * 1500,
    "'; DROP TABLE events; --",
    '=cmd|" /C calc"!A0',
    "line\nbreak",
    'tab\tq"uote',
]
MODELS = [
    "gpt-oss-120b",
    "llama3.1-8b",
    "qwen-3-235b-instruct",
    "qwen-3-235b-a22b-instruct-2507",
    "no-such-model",
    None,
]


def _events(n: int, seed: int) -> list[CallEvent]:
    rnd = random.Random(seed)
    zones = [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))]
    out = []
    for _ in range(n):
        when = datetime(
            2026,
            rnd.randint(1, 12),
            rnd.randint(1, 28),
            rnd.randint(0, 23),
            rnd.randint(0, 59),
            rnd.randint(0, 59),
            rnd.choice([0, rnd.randint(0, 999_999)]),
            tzinfo=rnd.choice(zones),
        )
        status = rnd.choice(STATUSES)
        usage = None if rnd.random() < 0.3 else Usage(*(rnd.randint(0, 10**7) for _ in range(5)))

        def opt() -> str | None:
            return rnd.choice([*ODD, None, None, None, None, None])

        out.append(
            make_event(
                occurred_at=when,
                project=rnd.choice(ODD[1:]),
                route=rnd.choice(ROUTES),
                book=rnd.choice(["cerebras", "lava"]),
                requested_model=rnd.choice(MODELS),
                served_model=rnd.choice(MODELS),
                status=status,
                http_status=rnd.choice([None, 200, 429, 500]),
                error_type=opt(),
                error_code=opt(),
                stream=rnd.random() < 0.5,
                usage=usage,
                latency_us=rnd.choice([None, rnd.randint(0, 10**8)]),
                ttft_us=rnd.choice([None, 1234]),
                time_info=rnd.choice([None, TimeInfo(1, None, 3, 4)]),
                upstream_id=opt(),
                lava_request_id=opt(),
                tags=normalize_tags({rnd.choice(ODD): rnd.choice(ODD) for _ in range(rnd.randint(0, 4))}),
                source=rnd.choice(["wrapper", "transport", "x" * 30]),
                note=opt(),
            )
        )
    return out


def _rows(engine: sa.Engine, ids: list[str]) -> tuple[list[dict[str, Any]], list[tuple[Any, ...]]]:
    with engine.connect() as conn:
        events = [
            dict(r._mapping)
            for r in conn.execute(sa.select(EventRow.__table__).where(EventRow.event_id.in_(ids)))
        ]
        tags = [tuple(r) for r in conn.execute(sa.text("SELECT event_id, key, value FROM event_tags"))]
    order = {e: i for i, e in enumerate(ids)}
    events.sort(key=lambda r: order[r["event_id"]])
    return events, [t for t in tags if t[0] in order]


def test_fast_path_rows_equal_general_path_rows(engine: sa.Engine) -> None:
    book = PriceBook(BUILTIN_PRICES)
    events = _events(300, seed=7)
    twins = [
        CallEvent(
            **{**{f: getattr(e, f) for f in CallEvent.__dataclass_fields__}, "event_id": new_event_id()}
        )
        for e in events
    ]
    now = datetime(2026, 11, 27, 12, 0, 0, 654321, tzinfo=UTC)
    with store.write_transaction(engine) as conn:
        store.insert_events(conn, [store.event_row(e, charge(e, book), now) for e in events])
    with store.write_transaction(engine) as conn:
        store.insert_spooled(conn, [decode_fields(encode(e)) for e in twins], book, now)
        store.insert_spooled(conn, [decode_fields(encode(e)) for e in twins[:50]], book, now)  # replay: no-op
    slow, slow_tags = _rows(engine, [e.event_id for e in events])
    fast, fast_tags = _rows(engine, [e.event_id for e in twins])
    assert len(slow) == len(fast) == 300
    twin_of = {t.event_id: e.event_id for e, t in zip(events, twins, strict=True)}
    for a, b in zip(slow, fast, strict=True):
        assert b["batch_id"] != a["batch_id"]
        a = {k: v for k, v in a.items() if k not in ("event_id", "batch_id")}
        b = {k: v for k, v in b.items() if k not in ("event_id", "batch_id")}
        assert a == b
    assert sorted(slow_tags) == sorted((twin_of[e], k, v) for e, k, v in fast_tags)
    assert any(r["cost_nanos"] for r in fast) and any(not r["priced"] for r in fast)
    assert any("\ufffd" in (r["project"] or "") for r in fast)  # NUL and lone surrogates replaced alike


def test_a_batch_the_fast_path_refuses_is_set_aside_line_by_line(db_url: str, tmp_path: Any) -> None:
    """An amount beyond the ledger's range refuses only its own event; the rest are written."""
    good = _events(20, seed=3)
    bad = CallEvent(
        **{
            **{f: getattr(good[0], f) for f in CallEvent.__dataclass_fields__},
            "event_id": new_event_id(),
            "book": "cerebras",
            "served_model": "zai-glm-4.7",
            "status": "ok",
            "usage": Usage(10**17, 0, 10**17, 0, 2 * 10**17),
        }
    )
    sink = journal.writer.Sink(db_url)
    reject = journal.spool.Reject(tmp_path)
    try:
        journal.writer.write_lines(sink, reject, [encode(e) for e in [*good[:10], bad, *good[10:]]])
    finally:
        sink.dispose()
    engine = store.make_engine(db_url)
    with engine.connect() as conn:
        ids = set(conn.execute(sa.text("SELECT event_id FROM events")).scalars())
    engine.dispose()
    assert ids == {e.event_id for e in good}
    assert bad.event_id.encode() in (tmp_path / "rejected.jsonl").read_bytes()
