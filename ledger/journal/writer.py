"""Writer: the journal's hand-off to the store stage, the one place the journal reaches the database.

:class:`Sink` is the database side of every writer (the writer thread, the writer process, a
recovery): it opens the engine lazily (SQLAlchemy and :mod:`ledger.store` are imported here, in
function scope, never on the call path), prices and inserts decoded records in one transaction
(idempotent by event id), re-reads the price book every :data:`PRICE_REFRESH_S`, and publishes the
hard-budget stop file (through :mod:`ledger.budgets.stops`, also imported lazily).
:func:`write_lines` turns spool lines into such writes: an undecodable line, or an event the
database refuses (:class:`BadEvent` and the like), is set aside in ``rejected.jsonl``; the others
go on.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ledger.call import stops
from ledger.config import describe, first_line, redact
from ledger.journal.codec import EventDecodeError, decode_fields
from ledger.journal.spool import Reject

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

    from ledger.pricing import PriceBook

__all__ = ["Sink", "write_lines"]

log = logging.getLogger("ledger.journal")  # the stage's one logger

PRICE_REFRESH_S = 5.0


class Sink:
    """The database side, opened lazily on the writer thread (SQLAlchemy is imported here)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine: Engine | None = None
        self._book: PriceBook | None = None
        self._book_at = 0.0
        self._stops_due = 0.0
        self._stops_problem = False

    def engine(self) -> Engine:
        if self._engine is None:
            from ledger import store

            engine = store.make_engine(self.url)
            try:
                store.ensure_schema(engine)
            except Exception:
                engine.dispose()
                raise
            self._engine = engine
        return self._engine

    def write(self, records: list[list[Any]]) -> None:
        """Price and insert spool records (:func:`~ledger.journal.codec.decode_fields`) in one
        transaction (idempotent by event id)."""
        from ledger import store

        engine = self.engine()
        now = datetime.now(UTC)
        with store.write_transaction(engine) as conn:
            book = self.price_book(conn)
            try:
                store.insert_spooled(conn, records, book, now)
            except (ValueError, TypeError, ArithmeticError, AttributeError, LookupError) as exc:
                # priced out of range, a field of the wrong type or shape (made into a row in
                # Python, before the database sees it): this record, every time it is tried
                raise BadEvent(describe(exc)) from exc

    def price_book(self, conn: Connection) -> PriceBook:
        """The price book, re-read from ``conn`` when older than :data:`PRICE_REFRESH_S`."""
        if self._book is None or time.monotonic() - self._book_at > PRICE_REFRESH_S:
            from ledger import store

            self._book = store.load_price_book(conn)
            self._book_at = time.monotonic()
        return self._book

    def refresh_stops(self, folder: Path) -> None:
        """Publish the hard-budget stop file (:mod:`ledger.call.stops`) when due, once this sink has
        reached the database (a process that has written nothing yet does not connect for it).
        A failure is logged once and leaves the last file in place; it never stops the writer."""
        if self._engine is None or time.monotonic() < self._stops_due:
            return
        from ledger import store
        from ledger.budgets.stops import refresh  # the hand-off to the budgets stage, off the call path

        self._stops_due = time.monotonic() + stops.REFRESH_S
        try:
            with store.read_snapshot(self._engine) as conn:
                refresh(conn, lambda: self.price_book(conn), folder)
            self._stops_problem = False
        except Exception as exc:  # noqa: BLE001 - the writer must never die
            if not self._stops_problem:
                why = redact(first_line(exc), self.url)
                log.warning(
                    "ledger: cannot refresh the hard-budget stop list in %s (%s: %s); the last one "
                    "stays in force",
                    folder,
                    type(exc).__name__,
                    why,
                )
                self._stops_problem = True

    def dispose(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


class BadEvent(ValueError):
    """An event that cannot become a row (the same every time it is tried)."""


def _refused(exc: BaseException) -> bool:
    """Whether the database refused this data and will refuse it again (set it aside).

    Anything else (database down, locked, migrating, a bug) is retried later unchanged. The
    PostgreSQL ``COPY`` path raises the driver's own exceptions, so PEP 249's ``DataError`` and
    ``IntegrityError`` count as well as SQLAlchemy's wrappers of them."""
    from sqlalchemy import exc as sa_exc

    if isinstance(exc, (BadEvent, sa_exc.IntegrityError, sa_exc.DataError)):
        return True
    if isinstance(exc, sa_exc.StatementError):
        return isinstance(exc.orig, (ValueError, TypeError))
    return any(c.__name__ in ("DataError", "IntegrityError") for c in type(exc).__mro__)


def write_lines(sink: Sink, reject: Reject, lines: list[bytes], *, trusted: bool = False) -> None:
    """Decode and write lines. Undecodable ones are set aside; a batch the database refuses
    is retried line by line, so one bad event never blocks the others."""
    records: list[list[Any]] = []
    raw: list[bytes] = []
    for line in lines:
        if not line.strip():
            continue
        try:
            records.append(decode_fields(line, trusted=trusted))
            raw.append(line)
        except EventDecodeError as exc:
            reject.keep(line, str(exc))
    if not records:
        return
    try:
        sink.write(records)
    except Exception as exc:
        if not _refused(exc):
            raise
        for one, line in zip(records, raw, strict=True):
            try:
                sink.write([one])
            except Exception as inner:
                if not _refused(inner):
                    raise
                reject.keep(line, f"database refused the event: {type(inner).__name__}")
