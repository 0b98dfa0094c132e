"""FOCUS 1.2 (FinOps Open Cost and Usage Specification): the rows of a billing month.

:func:`billing_rows` turns what a month's export billed (``billed_batches``, kept by
:mod:`ledger.exports.billing`, which issues months) into FOCUS rows; :mod:`ledger.exports.focusfiles`
writes them as CSV or Parquet.

Rows. One row per billing period charge: (charge month, project, route, book, model, price
point, list price point, free, the calls' tags) × token type, where the token types are ``input``
(uncached prompt tokens), ``cached_input`` and ``output`` (completion tokens, reasoning included).
Grouping by the price point and by the list price point in force makes ``ContractedUnitPrice``
and ``ListUnitPrice`` single-valued on each row, so a price change in the middle of a month gives
two rows (with the same ``SkuPriceId``). Token counts are summed in SQL (events grouped by key,
never loaded one by one); money is exact: ``BilledCost`` = tokens × the point's per-token rate
(cached tokens at the cached rate, else the input rate), and the export refuses to run if those
products do not add up to the events' own ``cost_nanos`` (they always do unless a price row was
tampered with).

Unpriced usage. Events with no cost (a model no book prices, unknown usage) are not billed: no
row, since there is no cost to state. The export counts them (``BillingExport.unpriced``; the
CLI warns with the count) and ``prices check`` lists them; once the model is priced, ``prices
reprice`` gives them a cost and the next export bills it as ``Correction`` rows.

Imported costs. Events imported with a cost of their own and no price point (``events import``
with ``cost_usd``) cannot be split by token type: they give one row per group with
``x_TokenType`` ``total``, priced as one charge of its whole cost: ``PricingUnit`` ``Charges``,
``PricingQuantity`` 1 (-1 for a negative cost), ``ContractedUnitPrice`` = ``ListUnitPrice`` =
the cost's size, ``SkuPriceId`` ``imported/<model>/total``; ``ConsumedQuantity`` is still the
tokens.

The columns, their constants and what their values look like: :mod:`ledger.exports.focuscolumns`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, and_, case, func, literal, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import String

from ledger.exports.focuscolumns import (
    COLUMNS,
    CURRENCY,
    EXACT,
    FOCUS_VERSION,
    IMPORTED,
    IMPORTED_UNIT,
    ISSUERS,
    METERS,
    PRICING_UNIT,
    PROVIDER,
    SERVICE_NAME,
    TOKEN_TYPES,
    TOKEN_WORDS,
    TOTAL,
    details,
    tags,
)
from ledger.money import Money
from ledger.pricing import LIST_BOOK, PriceBook, PricePoint
from ledger.store.schema import BilledBatchRow, EventRow, PriceRow

__all__ = [
    "BillingError",
    "billing_rows",
    "month_bounds",
    "utc_month",
]


class BillingError(ValueError):
    """A billing export that cannot be made, said in one line."""


class utc_month(FunctionElement[str]):  # noqa: N801 - reads like the SQL function it is
    """The UTC month of a timestamp column, as ``'YYYY-MM'``."""

    type = String()
    inherit_cache = True
    name = "utc_month"


@compiles(utc_month, "sqlite")
def _utc_month_sqlite(element: utc_month, compiler: SQLCompiler, **kw: Any) -> str:
    # SQLite keeps 'YYYY-MM-DD HH:MM:SS.ffffff' in UTC.
    return f"substr({compiler.process(element.clauses, **kw)}, 1, 7)"


@compiles(utc_month, "postgresql")
def _utc_month_pg(element: utc_month, compiler: SQLCompiler, **kw: Any) -> str:
    # In UTC explicitly, whatever the session's time zone.
    return f"to_char(({compiler.process(element.clauses, **kw)} AT TIME ZONE 'UTC'), 'YYYY-MM')"


def month_bounds(month: str) -> tuple[datetime, datetime]:
    """[start, end) of a UTC month."""
    year, mon = int(month[:4]), int(month[5:7])
    start = datetime(year, mon, 1, tzinfo=UTC)
    end = datetime(year + mon // 12, mon % 12 + 1, 1, tzinfo=UTC)
    return start, end


# -- the rows ------------------------------------------------------------------------------------


def _points(conn: Connection) -> tuple[dict[str, PricePoint], list[tuple[PricePoint, datetime]]]:
    """Every price point by id, and the list book's points with their creation time."""
    by_id: dict[str, PricePoint] = {}
    listed: list[tuple[PricePoint, datetime]] = []
    for r in conn.execute(select(PriceRow.__table__)).all():
        p = PricePoint(
            r.price_id,
            r.book,
            r.model,
            r.effective_from,
            Money(int(r.input_nanos)),
            None if r.cached_nanos is None else Money(int(r.cached_nanos)),
            Money(int(r.output_nanos)),
            bool(r.free),
            r.source,
        )
        by_id[p.price_id] = p
        if p.book == LIST_BOOK:
            listed.append((p, r.created_at))
    return by_id, listed


def _rates(point: PricePoint) -> dict[str, int]:
    """Nano-dollars per token, by token type."""
    if point.free:
        return dict.fromkeys(TOKEN_TYPES, 0)
    cached = point.input if point.cached is None else point.cached
    return {"input": point.input.nanos, "cached_input": cached.nanos, "output": point.output.nanos}


def _usd(nanos: int) -> Decimal:
    return Money(nanos).to_decimal()


def _per_million(rate_nanos: int) -> Decimal:
    # nano-dollars per token -> dollars per million tokens: exactly three decimal places.
    return Decimal(rate_nanos).scaleb(-3, EXACT).quantize(Decimal("0.001"), context=EXACT)


def _quantity(tokens: int) -> Decimal:
    return Decimal(tokens).scaleb(-6, EXACT).quantize(Decimal("0.000001"), context=EXACT)


def _tokens(tokens: int) -> Decimal:
    # whole tokens, written at the quantities' six places (a column of bare integers reads as
    # integers, not decimals, in pandas-based FOCUS tools such as the FinOps Foundation's validator)
    return Decimal(tokens).quantize(Decimal("0.000001"), context=EXACT)


def _grouped(conn: Connection, month: str, bounds: list[datetime]) -> Any:
    """Sums per (charge month, project, route, book, model, price, free, list segment) of the
    events billed in ``month``'s export, computed in SQL."""
    e = EventRow.__table__.c
    bb = BilledBatchRow.__table__.c
    occurred = utc_month(e.occurred_at)
    segment: Any = (
        case(*[(e.occurred_at < b, i) for i, b in enumerate(bounds)], else_=len(bounds))
        if bounds
        else literal(0)
    )
    inner = (
        select(
            bb.month.label("charge_month"),
            e.project.label("project"),
            e.route.label("route"),
            e.book.label("book"),
            func.coalesce(e.served_model, e.requested_model, "").label("model"),
            e.price_id.label("price_id"),
            e.free.label("free"),
            segment.label("segment"),
            e.tags.label("tags"),
            (func.coalesce(e.prompt_tokens, 0) - func.coalesce(e.cached_tokens, 0)).label("uncached"),
            func.coalesce(e.cached_tokens, 0).label("cached"),
            func.coalesce(e.completion_tokens, 0).label("completion"),
            func.coalesce(e.total_tokens, 0).label("total"),
            e.cost_nanos.label("cost"),
        )
        .select_from(
            BilledBatchRow.__table__.join(
                EventRow.__table__, and_(e.batch_id == bb.batch_id, occurred == bb.month)
            )
        )
        .where(bb.billed_in == month, e.cost_nanos.is_not(None))
        .subquery()
    )
    g = inner.c
    keys = (g.charge_month, g.project, g.route, g.book, g.model, g.price_id, g.free, g.segment, g.tags)
    return conn.execute(
        select(
            *keys,
            func.sum(g.uncached),
            func.sum(g.cached),
            func.sum(g.completion),
            func.sum(g.total),
            func.sum(g.cost),
        ).group_by(*keys)
    )


def billing_rows(conn: Connection, month: str, issued_at: datetime) -> list[dict[str, Any]]:
    """The FOCUS rows of ``month``'s export, from what ``billed_batches`` says it billed.

    List rates come from the ``cerebras`` points created by ``issued_at``, so the rows of an
    issued month never change."""
    by_id, listed = _points(conn)
    month_start, month_end = month_bounds(month)
    list_points = [p for p, created in listed if created <= issued_at]
    list_book = PriceBook(list_points)
    bounds = sorted({p.effective_from for p in list_points if p.effective_from < month_end})

    # (charge month, project, route, book, model, price id, free, list point id, tags) -> sums
    merged: dict[tuple[Any, ...], list[int]] = {}
    for (
        charge_month,
        project,
        route,
        book,
        model,
        price_id,
        free,
        segment,
        user_tags,
        uncached,
        cached,
        completion,
        total,
        cost,
    ) in _grouped(conn, month, bounds):
        free = bool(free)
        sums = [int(uncached or 0), int(cached or 0), int(completion or 0), int(total or 0), int(cost or 0)]
        list_id: str | None = None
        if price_id is not None:
            point = by_id.get(price_id)
            if point is None:
                raise BillingError(
                    f"events of {project!r} name price {price_id!r}, which the ledger does not have"
                )
            rates = _rates(point)
            computed = sum(n * rates[t] for n, t in zip(sums[:3], TOKEN_TYPES, strict=True))
            if computed != sums[4]:
                raise BillingError(
                    f"events priced at {price_id} cost {Money(sums[4])} USD but their tokens "
                    f"at its rates cost {Money(computed)} USD; refusing to bill"
                )
            if book == LIST_BOOK or free:  # a free model is listed at its own free point
                list_id = price_id
            else:
                start = month_bounds(charge_month)[0]  # segment i starts at bounds[i - 1]
                if int(segment):
                    start = max(start, bounds[int(segment) - 1])
                found = list_book.price_for(LIST_BOOK, model, start)
                list_id = found.price_id if found is not None else price_id
        key = (charge_month, project, route, book, model, price_id, free, list_id, user_tags or "{}")
        have = merged.setdefault(key, [0, 0, 0, 0, 0])
        for i, n in enumerate(sums):
            have[i] += n

    billing_start, billing_end = month_start, month_end
    rows: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    for key, sums in merged.items():
        charge_month, project, route, book, model, price_id, free, list_id, user_tags = key
        correction = charge_month != month
        charge_start, charge_end = month_bounds(charge_month)
        account_id, issuer = ISSUERS.get(route, (route, route.capitalize()))
        common = {
            "BillingAccountId": account_id,
            "BillingAccountName": issuer,
            "BillingCurrency": CURRENCY,
            "BillingPeriodEnd": billing_end,
            "BillingPeriodStart": billing_start,
            "ChargeCategory": "Usage",
            "ChargeClass": "Correction" if correction else None,
            "ChargeFrequency": "Usage-Based",
            "ChargePeriodEnd": charge_end,
            "ChargePeriodStart": charge_start,
            "ConsumedUnit": "Tokens",
            "InvoiceIssuerName": issuer,
            "PricingCategory": "Standard",
            "PricingUnit": PRICING_UNIT,
            "ProviderName": PROVIDER,
            "PublisherName": PROVIDER,
            "ServiceCategory": "AI and Machine Learning",
            "ServiceName": SERVICE_NAME,
            "ServiceSubcategory": "Generative AI",
            "SubAccountId": project,
            "SubAccountName": project,
            "Tags": tags(user_tags, book, free, route, price_id),
            "x_Model": model,
            "x_Free": free,
            "x_Route": route,
            "x_FocusVersion": FOCUS_VERSION,
        }
        late = f" (late usage from {charge_month})" if correction else ""
        if price_id is None:  # imported with a cost of its own: one row, not split by token type
            if not sums[3] and not sums[4]:
                continue
            # The one charge of the whole imported cost: 1 Charge (-1 for a negative cost) at its size, so
            # unit price x PricingQuantity = cost exactly and the unit price is never negative.
            cost = _usd(sums[4])
            unit = abs(cost)
            row = {
                **common,
                "BilledCost": cost,
                "ContractedCost": cost,
                "EffectiveCost": cost,
                "ListCost": cost,
                "ContractedUnitPrice": unit,
                "ListUnitPrice": unit,
                "PricingUnit": IMPORTED_UNIT,
                "PricingQuantity": Decimal(-1 if cost < 0 else 1).quantize(Decimal("0.000001")),
                "SkuId": f"{model}/{TOTAL}",
                "SkuMeter": METERS[TOTAL],
                "SkuPriceId": f"{IMPORTED}/{model}/{TOTAL}",
                "SkuPriceDetails": details(IMPORTED, TOTAL),
                "ConsumedQuantity": _tokens(sums[3]),
                "x_TokenType": TOTAL,
                "ChargeDescription": f"{model} tokens via {issuer}, imported cost{late}",
            }
            order = (
                correction,
                charge_month,
                project,
                model,
                route,
                book,
                "",
                "",
                free,
                len(TOKEN_TYPES),
                user_tags,
            )
            rows.append((order, row))
            continue
        rates = _rates(by_id[price_id])
        list_rates = _rates(by_id[list_id]) if list_id is not None else rates
        for i, token_type in enumerate(TOKEN_TYPES):
            tokens = sums[i]
            if not tokens:
                continue
            cost = _usd(tokens * rates[token_type])
            row = {
                **common,
                "BilledCost": cost,
                "ContractedCost": cost,
                "EffectiveCost": cost,
                "ListCost": _usd(tokens * list_rates[token_type]),
                "ContractedUnitPrice": _per_million(rates[token_type]),
                "ListUnitPrice": _per_million(list_rates[token_type]),
                "SkuId": f"{model}/{token_type}",
                "SkuMeter": METERS[token_type],
                "SkuPriceId": f"{book}/{model}/{token_type}",
                "SkuPriceDetails": details(book, token_type),
                "ConsumedQuantity": _tokens(tokens),
                "PricingQuantity": _quantity(tokens),
                "x_TokenType": token_type,
                "ChargeDescription": f"{model} {TOKEN_WORDS[token_type]} via {issuer}{late}",
            }
            order = (
                correction,
                charge_month,
                project,
                model,
                route,
                book,
                price_id,
                list_id or "",
                free,
                i,
                user_tags,
            )
            rows.append((order, row))
    rows.sort(key=lambda kr: kr[0])
    return [{c: row[c] for c in COLUMNS} for _, row in rows]
