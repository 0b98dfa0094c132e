"""Hard budgets on the call path: which projects may not call paid models right now.

A budget set with ``--hard`` (:func:`ledger.budgets.budgets.set_budget`) asks the wrapper to refuse a
project's paid-model calls once its monthly paid spend reaches the budget. Nothing on the call
path may touch the database, so the decision travels in three hops, each off the call path:

1. **The alerts check** (run by the scheduler after every rollup, or ``cerebras-ledger alerts
   check``) compares each hard budget with the month's paid spend in the rollups and keeps the
   ``budget_stops`` table: one row per project whose budget is spent, with the month and the
   instant it ends (``until``, the local month end in UTC).
2. **The writer** (the journal's thread, or the writer process) reads that table
   (:func:`ledger.budgets.stops.refresh`) every
   :data:`REFRESH_S` seconds once it has a database connection, and writes this module's *stop
   file* (``stops.json`` in the spool folder, owner-only, replaced atomically; removed when no
   project is stopped). The file also lists the models that are free in each price book now,
   because the call path has no price book.
3. **The call path** (:class:`StopList`) looks at the file at most once every :data:`CHECK_S`
   seconds (one ``stat``) and re-reads it only when it changed. A project with no stop costs a
   dict lookup on an empty dict.

A call is refused when its project has a stop whose ``until`` is still ahead and its requested
model is not free in the call's book (an unknown model is not known to be free, so a hard budget
refuses it too). The transport then sends nothing upstream: it records an ``error`` event
(HTTP status 402, ``error_type`` ``budget_exceeded_error``, ``error_code``
``hard_budget_spent``, cost zero) and answers 402 with a Cerebras-shaped error body and the
header ``x-ledger-refused: hard-budget``, so the SDKs raise their ``APIStatusError`` (not
retried) and :class:`ledger.CerebrasClient` raises :class:`ledger.call.errors.BudgetExceededError`.

What "hard" can promise, and what it cannot: spend is seen as of the last rollup and alerts
check, so a project can overshoot by what it spends in one scheduler interval plus
:data:`REFRESH_S` plus :data:`CHECK_S`; calls already under way finish. Raising or removing a
budget deletes its stop at once, and the call path sees that within the same delay. The stop
file is per spool folder (per machine): a process on a machine whose writer has not yet
reached the database goes unchecked until it has. Enforcement never breaks a call: a stop file
that cannot be read is logged once and enforces nothing until it is rewritten.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ledger.calendar import iso_z
from ledger.config import owned_by_us
from ledger.money import Money, MoneyError, usd

__all__ = ["CHECK_S", "REFRESH_S", "STOP_FILE", "Stop", "StopList", "publish"]

log = logging.getLogger("ledger.stops")

STOP_FILE = "stops.json"
REFRESH_S = 30.0  # the writer re-reads the budget_stops table this often
CHECK_S = 1.0  # the call path looks at the stop file at most this often
_VERSION = 1


@dataclass(frozen=True, slots=True)
class Stop:
    """One project whose hard monthly budget is spent: paid calls refused until ``until``."""

    project: str
    period: str  # the budget's local month, e.g. "2026-11"
    until: datetime  # the end of that month, UTC
    budget: Money
    spent: Money

    def message(self, model: str | None) -> str:
        """The one line a refused caller reads."""
        return (
            f"cerebras-ledger: project {self.project!r} has spent its hard monthly budget for "
            f"{self.period} ({self.spent} of {self.budget} USD); paid model {model!r} refused "
            f"until {iso_z(self.until)}. Free models still work; raise the budget with "
            f"`cerebras-ledger budget set`."
        )


def encode(stops: Sequence[Stop], free: Mapping[str, Iterable[str]]) -> bytes:
    """The stop file's bytes: stable for the same content, so an unchanged list is not rewritten."""
    doc = {
        "version": _VERSION,
        "stops": [
            {
                "project": s.project,
                "period": s.period,
                "until": iso_z(s.until),
                "budget_usd": str(s.budget),
                "spent_usd": str(s.spent),
            }
            for s in sorted(stops, key=lambda s: s.project)
        ],
        "free": {book: sorted(set(models)) for book, models in sorted(free.items())},
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode() + b"\n"  # ASCII: any name fits


def decode(data: bytes) -> tuple[dict[str, Stop], dict[str, frozenset[str]]]:
    """Parse a stop file; :class:`ValueError` when it is not one this version wrote."""
    try:
        doc = json.loads(data)
        if not isinstance(doc, dict) or doc.get("version") != _VERSION:
            raise ValueError("not a version 1 stop file")
        stops: dict[str, Stop] = {}
        for s in doc["stops"]:
            until = datetime.fromisoformat(s["until"])
            if until.utcoffset() is None:
                raise ValueError("naive time in the stop file")
            stop = Stop(
                str(s["project"]),
                str(s["period"]),
                until.astimezone(UTC),
                usd(s["budget_usd"]),
                usd(s["spent_usd"]),
            )
            stops[stop.project] = stop
        free = {str(book): frozenset(str(m) for m in models) for book, models in doc["free"].items()}
    except (KeyError, TypeError, AttributeError, MoneyError) as exc:
        raise ValueError(f"malformed stop file ({type(exc).__name__})") from exc
    return stops, free


class StopList:
    """The call path's view of the stop file (see the module docstring)."""

    def __init__(self, path: Path, check_s: float | None = None) -> None:
        self.path = path
        self.check_s = CHECK_S if check_s is None else check_s
        self.said: set[tuple[str, str]] = set()  # (project, period) refusals already logged
        self._next = 0.0
        self._seen: tuple[int, int, int] | None = None
        self._stops: dict[str, Stop] = {}
        self._free: dict[str, frozenset[str]] = {}
        self._complained = False

    def refused(self, project: str, book: str, model: str | None) -> Stop | None:
        """The stop that refuses this call, or ``None`` to let it go."""
        if time.monotonic() >= self._next:
            self._reload()
        if not self._stops:
            return None
        stop = self._stops.get(project)
        if stop is None or (model is not None and model in self._free.get(book, ())):
            return None
        return stop if datetime.now(UTC) < stop.until else None

    def _reload(self) -> None:
        self._next = time.monotonic() + self.check_s
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._seen, self._stops, self._free = None, {}, {}
            return
        except OSError as exc:
            self._complain(exc.strerror or str(exc))
            return
        seen = (st.st_mtime_ns, st.st_size, st.st_ino)
        if seen == self._seen:
            return
        try:
            self._stops, self._free = decode(_read_own(self.path))
            self._complained = False
        except FileNotFoundError:  # replaced between the stat and the read: the next look finds it
            self._next = 0.0
            return
        except (OSError, ValueError) as exc:
            self._stops, self._free = {}, {}
            self._complain(str(exc))
        self._seen = seen

    def _complain(self, why: str) -> None:
        if not self._complained:
            log.warning(
                "ledger: cannot read the hard-budget stop list %s (%s); hard budgets are not "
                "enforced until it is rewritten",
                self.path,
                why,
            )
            self._complained = True


def _read_own(path: Path) -> bytes:
    """The stop file's bytes, if it is a regular file this user alone may write (never through
    a symlink); :class:`ValueError` if not: a stop file planted by someone else is not obeyed."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or not owned_by_us(st):
            raise ValueError(
                f"not a regular file of this user's alone (uid {st.st_uid}, mode "
                f"{stat.S_IMODE(st.st_mode):04o}); not obeyed"
            )
        with os.fdopen(fd, "rb", closefd=False) as fh:
            return fh.read()
    finally:
        os.close(fd)


def publish(folder: Path, stops: Sequence[Stop], free: Mapping[str, Iterable[str]]) -> bool:
    """Write the stop file into ``folder`` if it would change (atomically, owner-only), or remove
    it when nothing is stopped. Returns whether the file changed."""
    path = folder / STOP_FILE
    if not stops:
        try:
            path.unlink()
            return True
        except FileNotFoundError:
            return False
    data = encode(stops, free)
    try:
        if path.read_bytes() == data:
            return False
    except OSError:
        pass
    from ledger.outfile import write_bytes  # the writer's side only: kept off the call path's imports

    write_bytes(path, data)  # whole or not at all, owner-only
    return True
