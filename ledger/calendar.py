"""Periods, zones and instants: the one home for reading and writing them.

Everything the ledger stores and compares is timezone-aware UTC. A zone is used only to say
where a local day, week or month begins (reports, budgets, the scheduler's daily job) and to
present an instant. This module owns:

* :class:`Period` and :func:`parse_period`: a day (``2026-11-27``), an ISO week (``2026-W48``)
  or a calendar month (``2026-11``), as local dates; :func:`day_of` and :func:`month_of` for the
  day and the month a date is in.
* :func:`parse_zone`: an IANA zone by name, the same check and message everywhere.
* :func:`local_midnight` and :func:`period_bounds`: the UTC instant a local day starts. The
  rollups are quarter-hour buckets, so a local midnight that is not on a UTC quarter hour is
  refused (every zone in use today is a whole number of quarter hours from UTC).
* :func:`parse_instant`: what a user may type or pass for a moment (a date, or ISO 8601 with a
  zone), as aware UTC.
* :func:`iso_z`: an instant written as ISO 8601 UTC with a ``Z``.

Standard library only; every problem is a one-line :class:`CalendarError`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Literal
from zoneinfo import ZoneInfo

from ledger.config import ConfigError

__all__ = [
    "QUARTER_HOUR",
    "CalendarError",
    "Period",
    "day_of",
    "iso_z",
    "local_midnight",
    "month_of",
    "parse_instant",
    "parse_period",
    "parse_zone",
    "period_bounds",
    "zone_name",
]

QUARTER_HOUR = 900  # seconds: the rollups' grain, and the alignment every local midnight needs


class CalendarError(ConfigError):
    """A period, zone or instant that cannot be read, said in one line."""


@dataclass(frozen=True, slots=True)
class Period:
    """A day, an ISO week or a calendar month, as local dates.

    Attributes:
        kind: ``day``, ``week`` or ``month``.
        label: how it is written (``2026-11-27``, ``2026-W48``, ``2026-11``).
        first: its first local day.
        days: how many local days it has.
    """

    kind: str
    label: str
    first: date
    days: int

    def local_days(self) -> list[date]:
        return [self.first + timedelta(days=i) for i in range(self.days)]

    def previous(self) -> Period:
        """The period of the same kind just before this one."""
        if self.kind == "day":
            return day_of(self.first - timedelta(days=1))
        if self.kind == "week":
            return _week(self.first - timedelta(days=7))
        return month_of(self.first - timedelta(days=1))


def day_of(day: date) -> Period:
    """The one local day ``day``."""
    return Period("day", day.isoformat(), day, 1)


def _week(monday: date) -> Period:
    year, week, _ = monday.isocalendar()
    return Period("week", f"{year:04d}-W{week:02d}", monday, 7)


def month_of(day: date) -> Period:
    """The calendar month ``day`` is in."""
    first = day.replace(day=1)
    nxt = date(first.year + (first.month == 12), first.month % 12 + 1, 1)
    return Period("month", f"{first.year:04d}-{first.month:02d}", first, (nxt - first).days)


_PERIOD = re.compile(r"(\d{4})-(?:(\d{2})-(\d{2})|W(\d{2})|(\d{2}))")


def parse_period(text: str) -> Period:
    """``2026-11-27`` (a day), ``2026-W48`` (an ISO week) or ``2026-11`` (a month)."""
    m = _PERIOD.fullmatch(text.strip())
    problem = f"{text!r} is not a day (2026-11-27), an ISO week (2026-W48) or a month (2026-11)"
    if not m:
        raise CalendarError(problem)
    year = int(m[1])
    if not 1971 <= year <= 9998:
        raise CalendarError(f"{text!r}: the year must be between 1971 and 9998")
    try:
        if m[2]:
            return day_of(date(year, int(m[2]), int(m[3])))
        if m[4]:
            return _week(date.fromisocalendar(year, int(m[4]), 1))
        return month_of(date(year, int(m[5]), 1))
    except ValueError:
        raise CalendarError(problem + " (no such date)") from None


def parse_zone(name: str | tzinfo) -> tzinfo:
    """An IANA zone by name (a ``tzinfo`` passes through), or :class:`CalendarError`."""
    if isinstance(name, tzinfo):
        return name
    try:
        if not isinstance(name, str) or not name or name != name.strip() or len(name) > 64:
            raise ValueError(name)
        if not name.isprintable():
            raise ValueError(name)
        return ZoneInfo(name)
    except Exception:  # noqa: BLE001 - ZoneInfoNotFoundError, ValueError for paths, IsADirectoryError, ...
        raise CalendarError(
            f"unknown time zone {name!r} (use an IANA name such as Europe/Berlin or UTC)"
        ) from None


def zone_name(tz: tzinfo) -> str:
    """The IANA key of a zone (``str(tz)`` for a fixed offset)."""
    return str(getattr(tz, "key", None) or tz)


def local_midnight(day: date, tz: tzinfo) -> datetime:
    """The UTC instant local ``day`` starts in ``tz``. A midnight in a DST gap is the instant the
    day starts (``fold=0``). Refused unless it falls on a UTC quarter hour."""
    local = datetime.combine(day, time(0), tzinfo=tz)
    offset = local.utcoffset()
    if offset is None or offset.total_seconds() % QUARTER_HOUR:
        raise CalendarError(
            f"time zone {zone_name(tz)} is not a whole number of quarter hours from UTC "
            f"at {local.replace(tzinfo=None).isoformat()}"
        )
    return local.astimezone(UTC)


def period_bounds(period: Period, tz: tzinfo) -> list[datetime]:
    """UTC instants of the local midnights that start each day of ``period``, and the one that ends
    it (``period.days + 1`` instants), each on a UTC quarter hour (:func:`local_midnight`), so every
    rollup bucket falls in one local day."""
    out = [local_midnight(period.first + timedelta(days=i), tz) for i in range(period.days + 1)]
    if any(b >= a for a, b in zip(out[1:], out[:-1], strict=True)):
        raise CalendarError(f"time zone {zone_name(tz)} does not move forward over {period.label}")
    return out


def parse_instant(value: str | date | datetime, name: str, tz: tzinfo = UTC) -> datetime:
    """A moment as aware UTC: a ``datetime`` with a zone; a ``date`` (or ``YYYY-MM-DD``), which is
    local midnight in ``tz``; or ISO 8601 text with a zone (``Z`` or an offset). ``name`` says which
    argument was wrong in the one-line :class:`CalendarError`."""
    if isinstance(value, str):
        text = value.strip()
        try:
            parsed: datetime | date = (
                date.fromisoformat(text)
                if len(text) == 10
                else datetime.fromisoformat(text.replace("Z", "+00:00"))
            )
        except ValueError:
            raise CalendarError(
                f"{name}: {value!r} is not a date (YYYY-MM-DD) or ISO 8601 timestamp"
            ) from None
        if isinstance(parsed, datetime) and parsed.tzinfo is None:
            raise CalendarError(f"{name}: {value!r} needs a time zone (e.g. Z)")
        value = parsed
    try:
        if isinstance(value, datetime):
            if value.tzinfo is None or value.utcoffset() is None:
                raise CalendarError(
                    f"{name}: {value.isoformat()!r} is naive; give a time zone (e.g. tzinfo=UTC)"
                )
            return value.astimezone(UTC)
        if isinstance(value, date):
            return datetime.combine(value, time(0), tzinfo=tz).astimezone(UTC)
    except OverflowError:
        raise CalendarError(f"{name}: {value.isoformat()!r} is out of range in UTC") from None
    raise CalendarError(f"{name}: expected a datetime, a date or an ISO string, got {type(value).__name__}")


def iso_z(when: datetime, timespec: Literal["auto", "seconds"] = "auto") -> str:
    """``when`` as ISO 8601 in UTC with a ``Z`` (``2026-11-27T09:00:00Z``); ``timespec="seconds"``
    drops any fraction (FOCUS columns, price ids)."""
    return when.astimezone(UTC).isoformat(timespec=timespec).replace("+00:00", "Z")
