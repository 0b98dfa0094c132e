"""Price-book upkeep: the ``prices`` rows, add a dated point, and sync from Cerebras's public feed.

The rules of pricing itself live in :mod:`ledger.pricing`; this module only changes which
points exist, and never rewrites an event (finding unpriced usage and re-pricing a past period
with corrections: :mod:`ledger.store.reprice`):

* :func:`insert_prices` adds price points (a point already there is left alone),
  :func:`seed_builtin_prices` adds the missing built-in ones, and :func:`load_price_book`
  reads them all back as a :class:`~ledger.pricing.PriceBook`.

* :func:`new_point` checks a point a person typed (rates in USD per million tokens).
* :func:`feed_points` reads ``GET {feed}/public/v1/models`` (per-token decimal strings) and
  returns a new ``cerebras`` point, dated now, for each model whose rate changed or is new.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, select

from ledger.config import ConfigError
from ledger.money import Money, MoneyError, usd
from ledger.pricing import BOOKS, BUILTIN_PRICES, PriceBook, PricePoint, make_price_id
from ledger.store.engine import insert_or_skip, write_transaction
from ledger.store.schema import PriceRow

__all__ = [
    "feed_points",
    "fetch_feed",
    "insert_prices",
    "load_price_book",
    "new_point",
    "seed_builtin_prices",
]

PER_MILLION = 1_000_000
MAX_RATE = usd(100_000)  # USD per million tokens; anything above is a typo, not a price


def per_token(per_million: str, what: str) -> Money:
    """A rate given in USD per million tokens, as exact money per token."""
    try:
        amount = usd(per_million)
    except MoneyError as exc:
        raise ConfigError(f"{what}: {exc}") from None
    if amount.nanos < 0:
        raise ConfigError(f"{what} must not be negative")
    if amount > MAX_RATE:
        raise ConfigError(f"{what} {per_million} is above {MAX_RATE} USD per million tokens")
    if amount.nanos % PER_MILLION:
        raise ConfigError(f"{what} {per_million} is finer than $0.001 per million tokens")
    return Money(amount.nanos // PER_MILLION)


def new_point(
    book: str,
    model: str,
    input_per_m: str,
    output_per_m: str,
    *,
    cached_per_m: str | None = None,
    free: bool = False,
    effective_from: datetime | None = None,
    source: str = "manual",
) -> PricePoint:
    """A checked price point; raises :class:`ConfigError` with a one-line reason."""
    if book not in BOOKS:
        raise ConfigError(f"unknown book {book!r}: use one of {', '.join(BOOKS)}")
    if not model or len(model) > 200 or not model.isprintable():
        raise ConfigError("model must be 1-200 printable characters")
    when = effective_from or datetime.now(UTC)
    if when.tzinfo is None:
        raise ConfigError("effective date needs a time zone")
    rates = (per_token(input_per_m, "input rate"), per_token(output_per_m, "output rate"))
    cached = None if cached_per_m is None else per_token(cached_per_m, "cached rate")
    if free and (rates[0].nanos or rates[1].nanos or (cached and cached.nanos)):
        raise ConfigError("a free model has zero rates")
    return PricePoint(
        make_price_id(book, model, when),
        book,
        model,
        when.astimezone(UTC),
        rates[0],
        cached,
        rates[1],
        free,
        source,
    )


def _feed_rate(value: Any) -> Money | None:
    if not isinstance(value, str):
        return None
    try:
        rate = usd(value)
    except MoneyError:
        return None
    return rate if rate.nanos >= 0 else None


def feed_points(feed: Any, book: PriceBook, at: datetime) -> tuple[list[PricePoint], list[str]]:
    """New ``cerebras`` points for models whose feed price differs from the book at ``at``.

    Returns the points and a list of one-line problems (entries skipped)."""
    if not isinstance(feed, Mapping) or not isinstance(feed.get("data"), list):
        raise ConfigError("price feed is not a model list (no 'data' array)")
    points: list[PricePoint] = []
    problems: list[str] = []
    for entry in feed["data"]:
        model = entry.get("id") if isinstance(entry, Mapping) else None
        pricing = entry.get("pricing") if isinstance(entry, Mapping) else None
        if not isinstance(model, str) or not model or len(model) > 200 or not isinstance(pricing, Mapping):
            problems.append(f"skipped an entry without a usable id and pricing: {str(model)[:60]!r}")
            continue
        prompt, completion = _feed_rate(pricing.get("prompt")), _feed_rate(pricing.get("completion"))
        if prompt is None or completion is None:
            problems.append(f"{model}: prices are not exact decimal strings (finer than 1e-9 USD per token?)")
            continue
        current = book.price_for("cerebras", model, at)
        if current and current.input == prompt and current.output == completion and current.cached is None:
            continue
        points.append(
            PricePoint(
                make_price_id("cerebras", model, at),
                "cerebras",
                model,
                at,
                prompt,
                None,
                completion,
                prompt.nanos == 0 and completion.nanos == 0,
                "sync",
            )
        )
    return points, problems


def fetch_feed(base_url: str, timeout: float = 10.0) -> Any:
    import httpx

    url = base_url.rstrip("/") + "/public/v1/models"
    try:
        response = httpx.get(url, timeout=timeout)
        response.raise_for_status()
        return response.json()
    except httpx.HTTPStatusError as exc:
        raise ConfigError(f"price feed {url} answered {exc.response.status_code}") from None
    except httpx.HTTPError as exc:
        raise ConfigError(f"price feed {url} unreachable: {type(exc).__name__}") from None
    except ValueError:
        raise ConfigError(f"price feed {url} did not return JSON") from None


def price_row(point: PricePoint, created_at: datetime) -> dict[str, Any]:
    return {
        "price_id": point.price_id,
        "book": point.book,
        "model": point.model,
        "effective_from": point.effective_from,
        "input_nanos": point.input.nanos,
        "cached_nanos": None if point.cached is None else point.cached.nanos,
        "output_nanos": point.output.nanos,
        "free": point.free,
        "source": point.source,
        "created_at": created_at,
    }


def insert_prices(conn: Connection, points: Iterable[PricePoint]) -> int:
    """Add price points; a point whose id or (book, model, date) exists is left alone."""
    now = datetime.now(UTC)
    rows = [price_row(p, now) for p in points]
    if not rows:
        return 0
    before = conn.execute(select(PriceRow.price_id)).all()
    conn.execute(insert_or_skip(conn, PriceRow.__table__), rows)
    after = conn.execute(select(PriceRow.price_id)).all()
    return len(after) - len(before)


def seed_builtin_prices(engine: Engine) -> int:
    """Add the built-in price points that are missing; writes nothing when all are there."""
    with engine.connect() as conn:
        have = set(conn.execute(select(PriceRow.price_id)).scalars())
    missing = [p for p in BUILTIN_PRICES if p.price_id not in have]
    if not missing:
        return 0
    with write_transaction(engine) as conn:
        return insert_prices(conn, missing)


def load_price_book(conn: Connection) -> PriceBook:
    rows = conn.execute(select(PriceRow.__table__)).all()
    return PriceBook(
        PricePoint(
            price_id=r.price_id,
            book=r.book,
            model=r.model,
            effective_from=r.effective_from,
            input=Money(r.input_nanos),
            cached=None if r.cached_nanos is None else Money(r.cached_nanos),
            output=Money(r.output_nanos),
            free=bool(r.free),
            source=r.source,
        )
        for r in rows
    )
