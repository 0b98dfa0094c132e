"""Issuing a billing month: :func:`export_billing` closes one UTC month and writes its FOCUS 1.2
file as CSV or Parquet (the columns: :mod:`ledger.exports.focuscolumns`; the rows:
:mod:`ledger.exports.focus`; the files: :mod:`ledger.exports.focusfiles`); :func:`catch_up`
issues every month due (the scheduler's billing job).

Closing months and late usage. ``billing_exports`` holds the months issued; a month is *closed*
once it is there. ``billed_batches`` records, per (ingest batch, month the events occurred in),
which export billed them. Issuing month M, in one transaction under a lock:

1. if M is closed, nothing is recorded: the rows are rebuilt from what M's first run recorded,
   so re-exporting a month reproduces the identical file and never adds late events;
2. otherwise every (batch, month) pair not yet billed, whose month is M or a closed month
   before M, is recorded as billed in M, and M is closed;
3. the rows of M are those pairs: pairs of M give regular rows (``ChargeClass`` null); pairs of
   an earlier, closed month give ``ChargeClass`` ``Correction`` rows with the charge period of
   the month the usage occurred in and the billing period M.

So usage that arrives after its month was issued (a late spool, an import, the
reversal/restatement rows of ``prices reprice``) is billed exactly once, by the first export run
after it arrived. Only months that have ended can be issued. The file is written to a
temporary name inside the transaction and renamed into place after the commit: a failure
before the commit records nothing and leaves no file; a crash between the commit and the rename
leaves the month issued, and exporting it again writes the identical file.

Catching up. The scheduler's job (and ``export billing --due DIR``) is :func:`catch_up`: every
month from the first one with events up to the last that has ended, that was never issued or
whose file is not in the folder, is issued (or written again) oldest first. So a run that never
happened (the database down on the 1st) is made up by the next run, and a crash between the
commit and the rename is repaired by it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, and_, exists, func, insert, literal, or_, select
from sqlalchemy.types import String

from ledger.exports import focusfiles
from ledger.exports.focus import BillingError, billing_rows, month_bounds, utc_month
from ledger.exports.focuscolumns import EXACT, FORMATS
from ledger.money import Money
from ledger.outfile import OutFile, check_target
from ledger.store import transaction_lock, write_transaction
from ledger.store.schema import BilledBatchRow, BillingExportRow, EventRow

__all__ = [
    "BillingExport",
    "catch_up",
    "export_billing",
    "export_closed_month",
    "last_month",
    "months_due",
    "parse_month",
]

_BILLING_LOCK_KEY = 0x6269_6C6C_696E_67  # "billing"
_MONTH = re.compile(r"(\d{4})-(\d{2})")


def parse_month(text: str) -> str:
    """``YYYY-MM`` checked (a real month, year 2000-9999), or :class:`BillingError`."""
    m = _MONTH.fullmatch(text.strip()) if isinstance(text, str) else None
    if not m or not 1 <= int(m.group(2)) <= 12 or int(m.group(1)) < 2000:
        raise BillingError(f"month {text!r} is not a month as YYYY-MM (e.g. 2026-11)")
    return m.group(0)


@dataclass(frozen=True, slots=True)
class BillingExport:
    """One issued month.

    Attributes:
        month: the billing period, ``YYYY-MM``.
        exported_at: when the month was first issued.
        reissued: the month was already closed; these rows are the ones first issued.
        rows: the FOCUS rows, in file order, as Python values (``Decimal``, aware ``datetime``,
            ``str``, ``bool``, ``None`` for NULL).
        billed: sum of ``BilledCost``.
        corrections: how many rows are ``Correction`` rows (late usage of closed months).
        unpriced: usage events in this export that have no cost and so are not billed.
    """

    month: str
    exported_at: datetime
    reissued: bool
    rows: list[dict[str, Any]] = field(repr=False)
    billed: Money
    corrections: int
    unpriced: int


def _unpriced(conn: Connection, month: str) -> int:
    e = EventRow.__table__.c
    bb = BilledBatchRow.__table__.c
    return int(
        conn.execute(
            select(func.count())
            .select_from(
                BilledBatchRow.__table__.join(
                    EventRow.__table__, and_(e.batch_id == bb.batch_id, utc_month(e.occurred_at) == bb.month)
                )
            )
            .where(bb.billed_in == month, e.kind == "usage", e.usage_known.is_(True), e.cost_nanos.is_(None))
        ).scalar_one()
    )


def _record(conn: Connection, month: str) -> None:
    """Record every unbilled (batch, month) pair of ``month``, or of a closed month before it, as
    billed in ``month``."""
    e = EventRow.__table__.c
    bx = BillingExportRow.__table__.c
    occurred = utc_month(e.occurred_at)
    seen = BilledBatchRow.__table__.alias("seen")
    pending = (
        select(e.batch_id, occurred, literal(month, String()))
        .where(
            e.batch_id.is_not(None),
            e.occurred_at < month_bounds(month)[1],
            or_(occurred == month, occurred.in_(select(bx.month).where(bx.month < month))),
            ~exists().where(seen.c.batch_id == e.batch_id, seen.c.month == occurred),
        )
        .distinct()
    )
    conn.execute(insert(BilledBatchRow).from_select(["batch_id", "month", "billed_in"], pending))


def _issue(conn: Connection, month: str, now: datetime) -> BillingExport:
    transaction_lock(conn, _BILLING_LOCK_KEY)
    bx = BillingExportRow.__table__.c
    issued = conn.execute(select(bx.exported_at).where(bx.month == month)).scalar_one_or_none()
    reissued = issued is not None
    if issued is None:
        _record(conn, month)
        issued = now
    rows = billing_rows(conn, month, issued)
    billed = sum((r["BilledCost"] for r in rows), Decimal(0))
    billed_nanos = int(billed.scaleb(9, EXACT))
    if not reissued:
        conn.execute(
            insert(BillingExportRow).values(
                month=month, exported_at=issued, rows=len(rows), billed_nanos=billed_nanos
            )
        )
    return BillingExport(
        month,
        issued,
        reissued,
        rows,
        Money(billed_nanos),
        sum(1 for r in rows if r["ChargeClass"] == "Correction"),
        _unpriced(conn, month),
    )


def export_billing(
    engine: Engine, month: str, out: Path | None = None, fmt: str = "csv", *, now: datetime | None = None
) -> BillingExport:
    """Issue ``month`` (``YYYY-MM``, UTC) and write its FOCUS file to ``out`` (``None``: write nothing;
    the caller prints ``result.rows``). Re-running it reproduces the same file; see the module doc."""
    month = parse_month(month)
    if fmt not in FORMATS:
        raise BillingError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    if fmt == "parquet":
        focusfiles.pyarrow()  # before anything is recorded
    now = (now or datetime.now(UTC)).astimezone(UTC)
    end = month_bounds(month)[1]
    if now < end:
        raise BillingError(
            f"month {month} has not ended (UTC); it can be exported from {end.strftime('%Y-%m-%d')} on"
        )
    if out is not None and out.is_dir():
        raise BillingError(f"{out} is a folder, not a file")
    if out is not None:
        check_target(out)  # before the month is issued: never over a device or a symlink
    tmp: OutFile | None = None
    try:
        with write_transaction(engine) as conn:
            result = _issue(conn, month, now)
            if out is not None:
                tmp = focusfiles.write_temp(result.rows, out, fmt)
        if tmp is not None:
            tmp.commit()
            tmp = None
    finally:
        if tmp is not None:
            tmp.discard()
    return result


def last_month(now: datetime) -> str:
    """The UTC month before the one ``now`` is in."""
    now = now.astimezone(UTC)
    year, mon = (now.year, now.month - 1) if now.month > 1 else (now.year - 1, 12)
    return f"{year:04d}-{mon:02d}"


def export_closed_month(engine: Engine, now: datetime, folder: Path, fmt: str = "csv") -> BillingExport:
    """Issue the month that ended last (the scheduler's monthly job) into ``folder/focus-YYYY-MM.<fmt>``.

    Safe to run again: an issued month is written again, identically."""
    month = last_month(now)
    folder.mkdir(parents=True, exist_ok=True)
    return export_billing(engine, month, folder / f"focus-{month}.{fmt}", fmt, now=now)


def _next_month(month: str) -> str:
    end = month_bounds(month)[1]
    return f"{end.year:04d}-{end.month:02d}"


def months_due(
    engine: Engine, now: datetime, folder: Path, fmt: str = "csv", grace: timedelta = timedelta(0)
) -> list[str]:
    """The months :func:`catch_up` issues, oldest first: every month from the first one with events
    up to the last that ended at least ``grace`` ago (time for late events to arrive), that was
    never issued or whose file is not in ``folder``."""
    e = EventRow.__table__.c
    bx = BillingExportRow.__table__.c
    with engine.connect() as conn:
        first = conn.execute(select(func.min(e.occurred_at))).scalar_one_or_none()
        issued = set(conn.execute(select(bx.month)).scalars())
    if first is None:
        return []
    first = first.astimezone(UTC)
    month, last = (
        max(f"{first.year:04d}-{first.month:02d}", "2000-01"),
        last_month(now - grace),
    )  # as parse_month
    due: list[str] = []
    while month <= last:
        if month not in issued or not (folder / f"focus-{month}.{fmt}").is_file():
            due.append(month)
        month = _next_month(month)
    return due


def catch_up(
    engine: Engine, now: datetime, folder: Path, fmt: str = "csv", grace: timedelta = timedelta(0)
) -> list[BillingExport]:
    """The scheduler's monthly job: issue every month :func:`months_due` names, oldest first, into
    ``folder/focus-YYYY-MM.<fmt>``.

    A run that never happened (the database down on the 1st) is made up by the next one, and a
    month whose file is missing (a crash between the commit and the rename) is written again,
    identically. The temporary files such a crash left behind are removed first."""
    folder.mkdir(parents=True, exist_ok=True)
    done: list[BillingExport] = []
    for month in months_due(engine, now, folder, fmt, grace):
        name = f"focus-{month}.{fmt}"
        for stale in folder.glob(f".{name}.*.part"):
            stale.unlink(missing_ok=True)
        done.append(export_billing(engine, month, folder / name, fmt, now=now))
    return done
