"""The analyst's DataFrame behind :meth:`ledger.Ledger.frame`: usage in [since, until) from the
quarter-hour rollups, one row per combination of the ``by`` keys, money exact (the contract is
:meth:`ledger.Ledger.frame`'s docstring).

It owns the ``by`` keys (:data:`FRAME_KEYS`, ``tag:<key>``), the rollup queries, the measures and
the frame's columns, and :func:`span`, the ``[since, until)`` check every :class:`ledger.Ledger`
method uses. Only the standard library and the ledger's foundations load with this module:
SQLAlchemy loads when the rollups are read, pandas when the frame is made.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, tzinfo
from typing import TYPE_CHECKING, Any

from ledger.calendar import parse_instant, parse_zone
from ledger.money import Money

if TYPE_CHECKING:
    from sqlalchemy import Engine

__all__ = ["When", "span", "usage_frame"]

When = datetime | date | str

# The keys Ledger.frame groups by, besides ``tag:<key>``.
FRAME_KEYS = ("project", "model", "route", "book", "status", "free", "priced", "day")
_USAGE_MEASURES = (
    "calls",
    "input_tokens",
    "cached_tokens",
    "output_tokens",
    "reasoning_tokens",
    "total_tokens",
    "cost_nanos",
)
_TAG_MEASURES = ("calls", "total_tokens", "cost_nanos")
_QUARTER = 900  # seconds: the rollups' grain
_INT64_MAX = 2**63 - 1


def span(since: When, until: When, tz: tzinfo = UTC) -> tuple[datetime, datetime]:
    """``[since, until)`` as aware UTC datetimes (:func:`ledger.calendar.parse_instant`: a date is
    local midnight in ``tz``); ``until`` must come after ``since``."""
    start, end = parse_instant(since, "since", tz), parse_instant(until, "until", tz)
    if end <= start:
        raise ValueError("until must be after since")
    return start, end


@dataclass(frozen=True, slots=True)
class _Key:
    """One parsed ``by`` key: a column of usage_rollup, ``day``, or a tag key."""

    name: str  # the frame's column name
    tag: str | None = None


def _parse_by(by: Sequence[str] | str) -> list[_Key]:
    items = [by] if isinstance(by, str) else list(by)
    keys: list[_Key] = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"by: {item!r} is not a key name")
        if item.startswith("tag:"):
            tag = item[4:]
            if not tag:
                raise ValueError("by: 'tag:' needs a tag key, e.g. 'tag:user'")
            keys.append(_Key(item, tag))
        elif item in FRAME_KEYS:
            keys.append(_Key(item))
        else:
            raise ValueError(f"by: unknown key {item!r}; use any of {', '.join(FRAME_KEYS)} or tag:<key>")
    names = [k.name for k in keys]
    if len(set(names)) != len(names):
        raise ValueError(f"by: a key repeats in {names}")
    tags = [k for k in keys if k.tag is not None]
    if len(tags) > 1:
        raise ValueError("by: at most one tag:<key> (tag sums are kept per tag, not per combination)")
    if tags and any(k.name not in ("project", "day") for k in keys if k.tag is None):
        raise ValueError("by: tag:<key> combines only with project and day (the tag rollup's grain)")
    return keys


def _local_day(bucket: datetime, tz: tzinfo) -> date:
    local = bucket.astimezone(tz)
    offset = local.utcoffset()
    if offset is None or offset.total_seconds() % _QUARTER:
        raise ValueError(f"time zone {tz} is not a whole number of quarter hours from UTC at {bucket}")
    return local.date()


def usage_frame(
    engine: Callable[[], Engine],
    since: When,
    until: When,
    by: Sequence[str] | str = ("project", "model"),
    tz: str | tzinfo = "UTC",
    *,
    refresh: Callable[[], object] | None = None,
) -> Any:
    """The pandas DataFrame of :meth:`ledger.Ledger.frame` (see there). ``engine`` gives the engine
    when the rollups are first read, after the arguments are checked; ``refresh``, when given, is
    called before they are read (the ledger's rollup)."""
    keys = _parse_by(by)
    zone = parse_zone(tz)
    start, end = span(since, until, zone)
    for name, when in (("since", start), ("until", end)):
        if when.timestamp() % _QUARTER:
            raise ValueError(f"{name}: {when.isoformat()} is not on a quarter hour (the rollups' grain)")
    if refresh is not None:
        refresh()
    tag = next((k.tag for k in keys if k.tag is not None), None)
    sums = (
        _tag_sums(engine, keys, tag, start, end, zone) if tag else _usage_sums(engine, keys, start, end, zone)
    )
    measures = _TAG_MEASURES if tag else _USAGE_MEASURES
    return _to_frame([k.name for k in keys], measures, sums)


def _usage_sums(
    engine: Callable[[], Engine], keys: list[_Key], start: datetime, end: datetime, zone: tzinfo
) -> dict[tuple[Any, ...], list[int]]:
    from sqlalchemy import case, func, select

    from ledger.store.schema import UsageRollupRow

    r = UsageRollupRow.__table__.c
    cols = [r.bucket if k.name == "day" else r[k.name] for k in keys]
    query = (
        select(
            *cols,
            func.sum(case((r.kind == "usage", r.events), else_=0)),
            func.sum(r.prompt_tokens),
            func.sum(r.cached_tokens),
            func.sum(r.completion_tokens),
            func.sum(r.reasoning_tokens),
            func.sum(r.total_tokens),
            func.sum(r.cost_nanos),
        )
        .where(r.bucket >= start, r.bucket < end)
        .group_by(*cols)
    )
    with engine().connect() as conn:
        rows = conn.execute(query).all()
    return _accumulate(keys, rows, zone, len(_USAGE_MEASURES))


def _tag_sums(
    engine: Callable[[], Engine], keys: list[_Key], tag: str, start: datetime, end: datetime, zone: tzinfo
) -> dict[tuple[Any, ...], list[int]]:
    """Sums per tag value, plus the value ``None``: usage minus the tagged part, per project
    and bucket (both rollups sum the same rows, so the difference is exact)."""
    from sqlalchemy import case, func, select

    from ledger.store import clip, read_snapshot
    from ledger.store.schema import TagRollupRow, UsageRollupRow

    tag = clip(tag, 100) or ""  # as the store keeps tag keys (see EventTagRow)
    t, r = TagRollupRow.__table__.c, UsageRollupRow.__table__.c
    key_cols = [k for k in keys if k.tag is None]
    tcols = [t.bucket if k.name == "day" else t[k.name] for k in key_cols]
    rcols = [r.bucket if k.name == "day" else r[k.name] for k in key_cols]
    tagged_q = (
        select(*tcols, t.value, func.sum(t.events), func.sum(t.total_tokens), func.sum(t.cost_nanos))
        .where(t.key == tag, t.bucket >= start, t.bucket < end)
        .group_by(*tcols, t.value)
    )
    all_q = (
        select(
            *rcols,
            func.sum(case((r.kind == "usage", r.events), else_=0)),
            func.sum(r.total_tokens),
            func.sum(r.cost_nanos),
        )
        .where(r.bucket >= start, r.bucket < end)
        .group_by(*rcols)
    )
    with read_snapshot(engine()) as conn:  # both reads see the same rollups
        tagged_rows = conn.execute(tagged_q).all()
        all_rows = conn.execute(all_q).all()
    n = len(_TAG_MEASURES)
    # Place the tag value where tag:<key> stands among the keys.
    pos = [i for i, k in enumerate(keys) if k.tag is not None][0]
    plain = _accumulate(key_cols, all_rows, zone, n)
    tagged_by_plain: dict[tuple[Any, ...], list[int]] = {}
    out: dict[tuple[Any, ...], list[int]] = {}
    for row in tagged_rows:
        *kv, value = row[: len(key_cols) + 1]
        measures = row[len(key_cols) + 1 :]
        plain_key = _key_values(key_cols, kv, zone)
        figures = [int(x or 0) for x in measures]
        _add(tagged_by_plain, plain_key, figures)
        full = plain_key[:pos] + (str(value),) + plain_key[pos:]
        _add(out, full, figures)
    for plain_key, figures in plain.items():
        tagged = tagged_by_plain.get(plain_key, [0] * n)
        rest = [a - b for a, b in zip(figures, tagged, strict=True)]
        if any(rest):
            _add(out, plain_key[:pos] + (None,) + plain_key[pos:], rest)
    return out


def _key_values(keys: list[_Key], values: Sequence[Any], zone: tzinfo) -> tuple[Any, ...]:
    out: list[Any] = []
    for k, v in zip(keys, values, strict=True):
        if k.name == "day":
            out.append(_local_day(v, zone))
        elif k.name in ("free", "priced"):
            out.append(bool(v))
        else:
            out.append(str(v))
    return tuple(out)


def _add(into: dict[tuple[Any, ...], list[int]], key: tuple[Any, ...], figures: list[int]) -> None:
    have = into.get(key)
    if have is None:
        into[key] = list(figures)
    else:
        for i, f in enumerate(figures):
            have[i] += f


def _accumulate(
    keys: list[_Key], rows: Sequence[Any], zone: tzinfo, n: int
) -> dict[tuple[Any, ...], list[int]]:
    out: dict[tuple[Any, ...], list[int]] = {}
    for row in rows:
        measures = row[len(keys) : len(keys) + n]
        if all(x is None for x in measures):  # no keys and no rows: SQL's one row of NULL sums
            continue
        _add(out, _key_values(keys, row[: len(keys)], zone), [int(x or 0) for x in measures])
    return out


def _to_frame(names: list[str], measures: Sequence[str], sums: dict[tuple[Any, ...], list[int]]) -> Any:
    import pandas as pd  # type: ignore[import-untyped, unused-ignore]

    def order(item: tuple[tuple[Any, ...], list[int]]) -> tuple[Any, ...]:
        return tuple((v is None, "" if v is None else v) for v in item[0])

    items = sorted(sums.items(), key=order)
    for key, figures in items:
        if any(abs(f) > _INT64_MAX for f in figures):
            raise ValueError(f"a figure of {key} does not fit an int64 column")
    data: dict[str, Any] = {}
    for i, name in enumerate(names):
        values = [k[i] for k, _ in items]
        dtype = bool if name in ("free", "priced") else object
        data[name] = pd.Series(values, dtype=dtype)
    for j, m in enumerate(measures):
        data[m] = pd.Series([f[j] for _, f in items], dtype="int64")
    cost = measures.index("cost_nanos")
    data["cost_usd"] = pd.Series([Money(f[cost]).to_decimal() for _, f in items], dtype=object)
    return pd.DataFrame(data)
