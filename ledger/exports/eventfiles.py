"""Event files, the export side: ``events export`` in CSV or JSON Lines (the import side, which
reads the same files back: :mod:`ledger.exports.eventimport`).

The columns, in this order, are :data:`COLUMNS`. ``occurred_at`` is ISO 8601 UTC with ``Z``;
``cost_usd`` an exact decimal string (empty / ``null`` when unpriced); booleans ``true`` /
``false``; ``tags`` a JSON object; unknown token counts are empty / ``null``.

Export streams rows from the database (``yield_per``), never loading the ledger. An exported
event's ``cost_usd`` is its current cost: the original charge plus any corrections.

**A machine format: values are exact.** Unlike the report and billing CSVs, which are meant for
spreadsheets and get OWASP's leading ``'`` on cells that would begin with ``=``, ``+``, ``-``,
``@``, a tab or a carriage return, the event files are written exactly as stored, so that
``events export`` then ``events import`` gives back the very same events (a test checks the
files are byte-identical). A project name can never begin with a formula character
(:func:`ledger.config.check_project`), and ``tags`` is a JSON object (its cell begins with
``{``), but a model name or an upstream id may; open an event CSV in a spreadsheet only through
an import that reads every column as text, or use the report CSV.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import IO, Any

from sqlalchemy import Connection, and_, case, func, select

from ledger.calendar import iso_z
from ledger.config import ConfigError
from ledger.money import Money
from ledger.outfile import csv_cell
from ledger.store.schema import EventRow

__all__ = ["COLUMNS", "TOKEN_COLUMNS", "event_row", "export_rows", "write_rows"]

COLUMNS: tuple[str, ...] = (
    "event_id",
    "occurred_at",
    "project",
    "route",
    "model",
    "status",
    "http_status",
    "stream",
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "reasoning_tokens",
    "total_tokens",
    "cost_usd",
    "free",
    "priced",
    "upstream_id",
    "tags",
)
TOKEN_COLUMNS = ("prompt_tokens", "cached_tokens", "completion_tokens", "reasoning_tokens", "total_tokens")


def export_rows(
    conn: Connection, since: datetime, until: datetime, project: str | None
) -> Iterator[dict[str, Any]]:
    """Usage events with ``since <= occurred_at < until``, oldest first, each at its current cost."""
    e = EventRow.__table__.c
    corr = EventRow.__table__.alias("corr")
    deltas = (
        select(
            corr.c.corrects_event_id.label("eid"),
            func.sum(corr.c.cost_nanos).label("delta"),
            func.max(case((corr.c.note == "restatement", corr.c.correction_seq))).label("rseq"),
        )
        .where(corr.c.kind == "correction")
        .group_by(corr.c.corrects_event_id)
        .subquery()
    )
    standing = EventRow.__table__.alias("standing")  # the latest restatement: how the event stands
    query = (
        select(
            EventRow.__table__,
            deltas.c.delta,
            standing.c.free.label("s_free"),
            standing.c.priced.label("s_priced"),
        )
        .outerjoin(deltas, deltas.c.eid == e.event_id)
        .outerjoin(
            standing,
            and_(standing.c.corrects_event_id == e.event_id, standing.c.correction_seq == deltas.c.rseq),
        )
        .where(and_(e.kind == "usage", e.occurred_at >= since, e.occurred_at < until))
        .order_by(e.occurred_at, e.event_id)
    )
    if project is not None:
        query = query.where(e.project == project)
    for r in conn.execution_options(yield_per=2000).execute(query):
        yield event_row(r, r.delta, r.s_free, r.s_priced)


def event_row(r: Any, delta: int | None, s_free: bool | None, s_priced: bool | None) -> dict[str, Any]:
    """One usage event row (any row with the ``events`` columns) as it stands: its cost plus
    the ``delta`` of its corrections, and the free / priced flags of its latest restatement
    (``None`` when it has none). The one shape of :data:`COLUMNS`, for files and the service."""
    # A correction may price an event that had no price: it then has a cost after all.
    cost = None if r.cost_nanos is None and delta is None else Money(int(r.cost_nanos or 0) + int(delta or 0))
    restated = s_free is not None
    return {
        "event_id": r.event_id,
        "occurred_at": iso_z(r.occurred_at),
        "project": r.project,
        "route": r.route,
        "model": r.served_model or r.requested_model,
        "status": r.status,
        "http_status": r.http_status,
        "stream": bool(r.stream),
        **{k: getattr(r, k) for k in TOKEN_COLUMNS},
        "cost_usd": None if cost is None else str(cost),
        "free": bool(s_free if restated else r.free),
        "priced": bool(s_priced) if restated else (bool(r.priced) or delta is not None),
        "upstream_id": r.upstream_id,
        "tags": json.loads(r.tags or "{}"),
    }


def write_rows(rows: Iterable[dict[str, Any]], out: IO[str], fmt: str) -> int:
    """Write rows as ``csv`` or ``jsonl``; returns how many."""
    n = 0
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        # The csv module quotes a cell holding a line terminator's characters only: with "\n"
        # as the terminator, a lone "\r" (a model name, a tag) would go out bare and end the
        # record when read back. Such a row is written with every cell quoted.
        quoted = csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_ALL)
        writer.writerow(COLUMNS)
        for row in rows:
            cells = [csv_cell(row[c]) for c in COLUMNS]
            (quoted if any("\r" in c for c in cells) else writer).writerow(cells)
            n += 1
    elif fmt == "jsonl":
        for row in rows:
            out.write(json.dumps({c: row[c] for c in COLUMNS}, ensure_ascii=False) + "\n")
            n += 1
    else:
        raise ConfigError(f"unknown format {fmt!r}: use csv or jsonl")
    return n
