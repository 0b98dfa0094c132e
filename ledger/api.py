"""The library-first API: :class:`Ledger` owns one ledger's engine, schema and recovery.

``Ledger(url)`` is what the CLI, the scheduler and a user's notebook open to work with a ledger
without shelling out (sqlite-utils' ``Database`` is the model)::

    with Ledger("postgresql://ledger@db/ledger") as led:
        led.rollup()
        df = led.frame("2026-11-01", "2026-12-01", by=["project", "day"], tz="Europe/Berlin")
        led.budgets.set("search", monthly="500")

This module owns the lifecycle (URL resolution, engine, migrations, spool recovery, disposal);
every other method is a thin call into the module that owns the work (:mod:`ledger.store.rollup`,
:mod:`ledger.reports.build`, :mod:`ledger.reports.frame` for the analyst's DataFrame,
:mod:`ledger.exports.billing`, :mod:`ledger.exports.eventfiles`, :mod:`ledger.reports.summary`,
:mod:`ledger.store.verify`, :mod:`ledger.budgets.budgets`, :mod:`ledger.store.prices`,
:mod:`ledger.store.reprice`). Each CLI command is a thin wrapper over the same calls.

Only the standard library is imported here at module level: SQLAlchemy, Alembic, pandas and
the report code load inside the methods that need them, so ``import ledger`` stays light.
"""

from __future__ import annotations

import builtins
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ledger.calendar import parse_instant, parse_period, parse_zone
from ledger.config import ConfigError, database_url, first_line, redact, redact_url
from ledger.config import spool_dir as _spool_dir
from ledger.money import Money

if TYPE_CHECKING:
    import os

    from sqlalchemy import Engine

    from ledger.budgets.budgets import Budget
    from ledger.exports.billing import BillingExport
    from ledger.pricing import PricePoint
    from ledger.reports.build import Report
    from ledger.reports.frame import When
    from ledger.reports.summary import ProjectSummary
    from ledger.store.reprice import RepriceResult, Unpriced
    from ledger.store.rollup import RollupResult
    from ledger.store.verify import Finding

__all__ = ["Budgets", "Ledger", "Prices"]


class Budgets:
    """Paid-spend budgets per project (``cerebras-ledger budget set/list/remove``)."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    def set(
        self,
        project: str,
        *,
        monthly: str | Money | None = None,
        daily: str | Money | None = None,
        thresholds: str | Iterable[int] = "50,80,100",
        timezone: str = "UTC",
        free_only: bool = False,
        hard: bool = False,
    ) -> Budget:
        """Create or replace ``project``'s budget; amounts are decimal USD strings (exact).
        Bad input raises :class:`ConfigError` with one line."""
        from ledger.budgets import budgets

        return budgets.set_budget(
            self._ledger.engine,
            project,
            monthly=monthly,
            daily=daily,
            thresholds=thresholds,
            timezone=timezone,
            free_only=free_only,
            hard=hard,
        )

    def list(self) -> list[Budget]:
        """Every budget, by project."""
        from ledger.budgets import budgets

        with self._ledger.engine.connect() as conn:
            return budgets.list_budgets(conn)

    def remove(self, project: str) -> bool:
        """Remove ``project``'s budget (its past alerts stay); whether there was one."""
        from ledger.budgets import budgets

        return budgets.remove_budget(self._ledger.engine, project)


class Prices:
    """Dated price points (``cerebras-ledger prices list/add/check/reprice``)."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    def list(self, book: str | None = None) -> list[PricePoint]:
        """Every price point, optionally of one book (``cerebras`` or ``lava``)."""
        from ledger import store

        with self._ledger.engine.connect() as conn:
            points = store.load_price_book(conn).points()
        return [p for p in points if book is None or p.book == book]

    def add(
        self,
        book: str,
        model: str,
        input: str,  # noqa: A002 - the CLI's --input
        output: str,
        *,
        cached: str | None = None,
        free: bool = False,
        effective_from: When | None = None,
    ) -> PricePoint:
        """Add a dated point; rates are decimal USD per million tokens. Events already priced keep
        their price. Raises :class:`ConfigError` (one line) for bad input or an existing point."""
        from ledger import store
        from ledger.store.prices import new_point

        when = None if effective_from is None else parse_instant(effective_from, "effective_from")
        point = new_point(book, model, input, output, cached_per_m=cached, free=free, effective_from=when)
        with store.write_transaction(self._ledger.engine) as conn:
            added = store.insert_prices(conn, [point])
        if not added:
            raise ConfigError(
                f"a price for {book}/{model} at {point.effective_from.isoformat()} already exists"
            )
        return point

    def check(self) -> builtins.list[Unpriced]:
        """(book, model) pairs with usage but no price, busiest first (empty: all priced)."""
        from ledger.store.reprice import unpriced

        with self._ledger.engine.connect() as conn:
            return unpriced(conn)

    def reprice(
        self,
        since: When,
        until: When,
        project: str | None = None,
        *,
        dry_run: bool = False,
        include_imported: bool = False,
    ) -> RepriceResult:
        """Re-price [since, until) with today's book, writing correction rows (never updates)."""
        from ledger import store
        from ledger.reports.frame import span
        from ledger.store.reprice import reprice

        start, end = span(since, until)
        with store.write_transaction(self._ledger.engine) as conn:
            return reprice(conn, start, end, project, dry_run=dry_run, include_imported=include_imported)


class Ledger:
    """One ledger database: its engine, schema, migrations and spool recovery, and every
    operation the CLI offers on it.

    ``url`` is resolved as the CLI does (:func:`ledger.config.database_url`): the argument, else
    ``LEDGER_DATABASE_URL``, else the embedded SQLite file. ``spool_dir`` is the spool whose dead
    segments are recovered and checked (default: ``LEDGER_SPOOL_DIR``, else the URL's own).

    Opening is lazy: constructing a ``Ledger`` touches nothing. The first use (any method, or
    :attr:`engine`) makes the engine, migrates the schema to this code's head (Alembic) and
    writes what dead processes left in the spool (:func:`ledger.journal.recover`), once. A
    database that cannot be reached or used then raises :class:`ConfigError` with one line
    (credentials hidden). Use it as a context manager, or call :meth:`close`.

    Times are aware datetimes, dates or the CLI's strings (``2026-11-01``: midnight UTC, or in
    ``tz`` where a method takes one; ISO 8601 with a zone). A naive datetime is refused.
    """

    def __init__(self, url: str | None = None, *, spool_dir: str | os.PathLike[str] | None = None) -> None:
        self.url = database_url(url)
        self.spool_dir: Path = _spool_dir(self.url, spool_dir)
        self._spool_arg = spool_dir
        self._engine: Engine | None = None
        self._lock = threading.Lock()
        self.budgets = Budgets(self)
        self.prices = Prices(self)

    def __repr__(self) -> str:
        return f"Ledger({redact_url(self.url)!r})"

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine, opened (schema migrated, spool recovered) on first use."""
        with self._lock:
            if self._engine is None:
                self._engine = self._open()
            return self._engine

    def _open(self, recover: bool = True) -> Engine:
        from sqlalchemy.exc import SQLAlchemyError

        from ledger import journal, store

        engine = store.make_engine(self.url)
        try:
            store.ensure_schema(engine)
            if recover:
                journal.recover(self.url, self._spool_arg)
        except SQLAlchemyError as exc:
            engine.dispose()
            why = first_line(exc.orig if hasattr(exc, "orig") else exc)
            raise ConfigError(
                f"database {redact_url(self.url)} unreachable or unusable: {redact(why, self.url)}"
            ) from None
        except BaseException:
            engine.dispose()
            raise
        return engine

    def close(self) -> None:
        """Dispose of the engine (its pooled connections). The ledger reopens if used again."""
        with self._lock:
            engine, self._engine = self._engine, None
        if engine is not None:
            engine.dispose()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- operations ------------------------------------------------------------------------------

    def rollup(self, *, rebuild: bool = False, progress: Callable[[int], None] | None = None) -> RollupResult:
        """Add newly arrived events to the quarter-hour rollups, exactly once (``rebuild``: empty
        them and roll every event up again). ``progress`` gets the events of each chunk."""
        from ledger.store import rollup

        return (rollup.rebuild if rebuild else rollup.rollup)(self.engine, progress)

    def report(
        self,
        project: str | None,
        period: str,
        tz: str = "UTC",
        *,
        progress: Callable[[int], None] | None = None,
    ) -> Report:
        """The spend report the CLI renders (:class:`ledger.reports.build.Report`) for ``project``
        (``None``: all) over ``period`` (``2026-11-27``, ``2026-W48`` or ``2026-11``) in the IANA
        zone ``tz``; rolls up first. Write it with ``ledger.reports.files.write_report``/``render``."""
        from ledger.config import check_project
        from ledger.reports import build as reports

        spec = parse_period(period)
        zone = parse_zone(tz)
        if project is not None:
            check_project(project)
        return reports.build_report(self.engine, spec, zone, project, progress=progress)

    def export_billing(
        self, month: str, out: str | os.PathLike[str] | None = None, fmt: str = "csv"
    ) -> BillingExport:
        """Issue ``month`` (``YYYY-MM``, UTC, ended) as FOCUS 1.2 rows, written whole to ``out``
        (``csv`` or ``parquet``) when given. Running it again reproduces the same file."""
        from ledger.exports.billing import export_billing

        return export_billing(self.engine, month, None if out is None else Path(out), fmt)

    def export_billing_due(self, folder: str | os.PathLike[str], fmt: str = "csv") -> list[BillingExport]:
        """Issue every ended month not yet issued (or whose file is missing) into
        ``folder/focus-YYYY-MM.<fmt>``, oldest first (``export billing --due``)."""
        from ledger.exports.billing import catch_up

        return catch_up(self.engine, datetime.now(UTC), Path(folder), fmt)

    def events(self, since: When, until: When, project: str | None = None) -> Iterator[dict[str, Any]]:
        """Usage events with ``since <= occurred_at < until``, oldest first, as the export gives
        them (``cost_usd`` an exact decimal string at the event's current cost). Streams; the
        arguments are checked at the call, not at the first row."""
        from ledger.reports.frame import span

        start, end = span(since, until)
        engine = self.engine

        def rows() -> Iterator[dict[str, Any]]:
            from ledger.exports.eventfiles import export_rows

            with engine.connect() as conn:
                yield from export_rows(conn, start, end, project)

        return rows()

    def summary(self, since: When | None = None, until: When | None = None) -> list[ProjectSummary]:
        """Per-project totals straight from the events (``paid_cost`` exact :class:`~ledger.Money`)."""
        from ledger.reports.summary import project_summaries

        start = None if since is None else parse_instant(since, "since")
        end = None if until is None else parse_instant(until, "until")
        with self.engine.connect() as conn:
            return project_summaries(conn, start, end)

    def verify(self) -> list[Finding]:
        """Every integrity problem found (empty: consistent); see :mod:`ledger.store.verify`."""
        from ledger.store.verify import verify

        with self.engine.connect() as conn:
            return verify(conn, self.spool_dir)

    # -- the analyst's frame ---------------------------------------------------------------------

    def frame(
        self,
        since: When,
        until: When,
        by: Sequence[str] | str = ("project", "model"),
        tz: str | tzinfo = "UTC",
        *,
        refresh: bool = True,
    ) -> Any:
        """A pandas DataFrame of usage in [since, until), one row per combination of ``by``.

        ``by`` takes any of ``project``, ``model``, ``route``, ``book``, ``status``, ``free``,
        ``priced``, ``day`` (the local calendar day in the IANA zone ``tz``, a ``datetime.date``)
        and one ``tag:<key>`` (a tag's value; combines only with ``project`` and ``day``). Rows
        are sorted by the keys.

        Columns: the keys, then ``calls`` (attempts, whatever their status), token counts
        (``input_tokens``, ``cached_tokens``, ``output_tokens``, ``reasoning_tokens``,
        ``total_tokens``; a tag frame has ``total_tokens`` only) and money.

        Money is exact, never float: ``cost_nanos`` is an ``int64`` column of integer
        nano-dollars (1e-9 USD) and ``cost_usd`` holds :class:`decimal.Decimal` objects (dtype
        ``object``) equal to ``cost_nanos / 10**9`` exactly, nine decimal places
        (:meth:`ledger.Money.to_decimal`). Sum money with
        ``df["cost_usd"].sum()`` (a Decimal) or ``df["cost_nanos"].sum()``; never convert either
        to float. Counts are ``int64`` too. Corrections (re-pricings) are included: costs are
        as the events stand now.

        It reads the quarter-hour rollups (UTC buckets), rolled up first unless ``refresh`` is
        false, so its totals equal :meth:`summary`'s and the report's to the nano-dollar. For
        that, ``since`` and ``until`` must fall on a quarter hour (any date's midnight does, in
        every zone in use: a date or ``YYYY-MM-DD`` means local midnight in ``tz``); ``day`` is
        exact because no quarter hour straddles a local midnight. A tag frame has a row with
        the tag value ``None`` for the events without that tag, so it adds up too.

        Bad input (an unknown ``by`` key, an unknown zone, a naive datetime, bounds off the
        quarter hour) raises :class:`ValueError` (:class:`ConfigError` for the zone) with one line.
        """
        from ledger.reports.frame import usage_frame

        return usage_frame(
            lambda: self.engine, since, until, by, tz, refresh=self.rollup if refresh else None
        )
