"""Pricing: the built-in books against shared/wire/prices.md, dated points, aliases and charge rules."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.events import CallEvent, Usage
from ledger.money import ZERO, Money, usd
from ledger.pricing import (
    ALIASES,
    BUILTIN_PRICES,
    Charge,
    PriceBook,
    PricePoint,
    charge,
    cost_of,
    make_price_id,
    model_names,
)
from tests.helpers import WIRE, make_event

PRICES_MD = WIRE / "prices.md"

BOOK = PriceBook(BUILTIN_PRICES)
WHEN = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def _table(heading: str) -> dict[str, tuple[str, str]]:
    """``model -> (input, output)`` from the markdown table under the heading starting ``heading``."""
    text = PRICES_MD.read_text()
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    rows: dict[str, tuple[str, str]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0] not in ("model", "") and not set(cells[0]) <= {"-", " "}:
            rows[cells[0]] = (cells[1], cells[2])
    return rows


SEED = _table("## The seed table")
CEREBRAS = _table("## Cerebras's own rates")


def _per_million(point: PricePoint) -> tuple[str, str] | tuple[Decimal, Decimal]:
    if point.free:
        return ("free", "free")
    return (point.input.per_million(), point.output.per_million())


def _as_rates(row: tuple[str, str]) -> tuple[str, str] | tuple[Decimal, Decimal]:
    return row if row == ("free", "free") else (Decimal(row[0]), Decimal(row[1]))


def _book(name: str) -> dict[str, PricePoint]:
    return {p.model: p for p in BUILTIN_PRICES if p.book == name}


USAGE = Usage(1000, 0, 500, 0, 1500)


def _event(
    model: str | None = "gpt-oss-120b",
    *,
    book: str = "cerebras",
    status: str = "ok",
    usage: Usage | None = USAGE,
    at: datetime = WHEN,
    served: str | None = None,
) -> CallEvent:
    return make_event(
        occurred_at=at,
        project="p",
        book=book,
        requested_model=model,
        served_model=served,
        status=status,
        http_status=200 if status == "ok" else 500,
        usage=usage,
        latency_us=None,
    )


def _point(
    book: str,
    model: str,
    since: datetime,
    input_per_m: str,
    output_per_m: str,
    cached_per_m: str | None = None,
    free: bool = False,
) -> PricePoint:
    def rate(s: str) -> Money:
        return Money(usd(s).nanos // 1_000_000)

    return PricePoint(
        make_price_id(book, model, since),
        book,
        model,
        since,
        rate(input_per_m),
        None if cached_per_m is None else rate(cached_per_m),
        rate(output_per_m),
        free,
        "manual",
    )


# -- the built-in books -------------------------------------------------------------------------


def test_prices_md_tables_were_read() -> None:
    assert len(SEED) == 7 and len(CEREBRAS) == 6
    assert SEED["qwen-3-235b-instruct"] == ("0.60", "1.20")
    assert CEREBRAS["zai-glm-4.7"] == ("2.25", "2.75")


def test_lava_book_is_exactly_the_seed_table() -> None:
    lava = _book("lava")
    assert sorted(lava) == sorted(SEED)
    assert {m: _per_million(p) for m, p in lava.items()} == {m: _as_rates(r) for m, r in SEED.items()}
    assert lava["qwen-3-235b-instruct"].input == Money(600) and lava["qwen-3-235b-instruct"].output == Money(
        1200
    )
    assert lava["gpt-oss-120b"].input == Money(350) and lava["gpt-oss-120b"].output == Money(750)
    free = sorted(m for m, p in lava.items() if p.free)
    assert free == sorted(
        [
            "llama3.1-8b",
            "llama-3.3-70b",
            "deepseek-r1-distill-llama-70b",
            "llama-4-scout-17b-16e-instruct",
            "qwen-3-32b",
        ]
    )
    assert all(p.input == ZERO and p.output == ZERO for p in lava.values() if p.free)


def test_cerebras_book_is_the_cerebras_rate_table() -> None:
    cerebras = _book("cerebras")
    assert sorted(cerebras) == sorted(CEREBRAS)
    assert {m: _per_million(p) for m, p in cerebras.items()} == {m: _as_rates(r) for m, r in CEREBRAS.items()}
    assert not any(p.free for p in cerebras.values())


def test_builtin_points_are_well_formed() -> None:
    ids = [p.price_id for p in BUILTIN_PRICES]
    assert len(ids) == len(set(ids))
    assert len({(p.book, p.model, p.effective_from) for p in BUILTIN_PRICES}) == len(BUILTIN_PRICES)
    for p in BUILTIN_PRICES:
        assert p.price_id == make_price_id(p.book, p.model, p.effective_from)
        assert p.effective_from.utcoffset() == timedelta(0) and p.source == "builtin" and p.cached is None
    assert (
        make_price_id("lava", "gpt-oss-120b", datetime(2024, 1, 1, tzinfo=UTC))
        == "lava/gpt-oss-120b@2024-01-01T00:00:00Z"
    )


def test_a_million_tokens_cost_the_listed_price() -> None:
    for name, table in (("lava", SEED), ("cerebras", CEREBRAS)):
        for model, (inp, out) in table.items():
            point = BOOK.price_for(name, model, WHEN)
            assert point is not None and point.book == name
            prompt_only = cost_of(Usage(1_000_000, 0, 0, 0, 1_000_000), point)
            completion_only = cost_of(Usage(0, 0, 1_000_000, 0, 1_000_000), point)
            assert (prompt_only, completion_only) == ((ZERO, ZERO) if inp == "free" else (usd(inp), usd(out)))


# -- aliases ------------------------------------------------------------------------------------


def test_alias_resolves_both_ways() -> None:
    alias, api_id = "qwen-3-235b-instruct", "qwen-3-235b-a22b-instruct-2507"
    assert ALIASES[alias] == api_id
    assert set(model_names(alias)) == set(model_names(api_id)) == {alias, api_id}
    lava = BOOK.price_for("lava", api_id, WHEN)  # the lava book lists the gateway name
    cerebras = BOOK.price_for("cerebras", alias, WHEN)  # the cerebras book lists the API id
    assert lava is not None and lava.model == alias and lava.book == "lava"
    assert cerebras is not None and cerebras.model == api_id and cerebras.book == "cerebras"
    assert BOOK.price_for("lava", alias, WHEN) == lava
    assert BOOK.price_for("cerebras", api_id, WHEN) == cerebras
    c = charge(_event(api_id, book="lava"), BOOK)
    cost = Money(1000 * 600 + 500 * 1200)  # the cerebras list price is the same for this model
    assert c == Charge(lava.price_id, cost, False, True, cost)


def test_served_model_wins_over_requested() -> None:
    event = _event("llama3.1-8b", book="lava", served="gpt-oss-120b")
    assert charge(event, BOOK).price_id == "lava/gpt-oss-120b@2024-01-01T00:00:00Z"
    assert charge(replace(event, served_model=None), BOOK).free


# -- dated points -------------------------------------------------------------------------------

CHANGE = datetime(2025, 3, 1, tzinfo=UTC)


def test_a_price_change_mid_period_applies_from_its_own_date() -> None:
    new = _point("cerebras", "gpt-oss-120b", CHANGE, "0.25", "0.69")
    book = PriceBook([*BUILTIN_PRICES, new])
    old_id = "cerebras/gpt-oss-120b@2024-01-01T00:00:00Z"
    usage = Usage(1_000_000, 0, 1_000_000, 0, 2_000_000)
    cases = [
        (CHANGE - timedelta(days=10), old_id, usd("1.10")),
        (CHANGE - timedelta(microseconds=1), old_id, usd("1.10")),
        (CHANGE, new.price_id, usd("0.94")),
        (CHANGE + timedelta(days=20), new.price_id, usd("0.94")),
        # the same instant written in another zone is the same instant
        (CHANGE.astimezone(ZoneInfo("America/Los_Angeles")), new.price_id, usd("0.94")),
    ]
    for at, price_id, cost in cases:
        assert charge(_event(usage=usage, at=at), book) == Charge(price_id, cost, False, True, cost), at
    # a later point never rewrites earlier events, and the book lists both points in date order
    assert [p.price_id for p in book.points() if p.model == "gpt-oss-120b" and p.book == "cerebras"] == [
        old_id,
        new.price_id,
    ]


def test_points_given_out_of_order_are_sorted() -> None:
    a = _point("lava", "m", datetime(2025, 1, 1, tzinfo=UTC), "1", "1")
    b = _point("lava", "m", datetime(2025, 2, 1, tzinfo=UTC), "2", "2")
    c = _point("lava", "m", datetime(2025, 3, 1, tzinfo=UTC), "3", "3")
    book = PriceBook([c, a, b])
    assert book.price_for("lava", "m", datetime(2024, 12, 31, tzinfo=UTC)) is None
    assert book.price_for("lava", "m", datetime(2025, 1, 15, tzinfo=UTC)) == a
    assert book.price_for("lava", "m", datetime(2025, 2, 15, tzinfo=UTC)) == b
    assert book.price_for("lava", "m", datetime(2026, 1, 1, tzinfo=UTC)) == c
    assert book.price_for("cerebras", "m", datetime(2026, 1, 1, tzinfo=UTC)) is None


def test_a_price_change_under_the_other_alias_name_takes_effect_too() -> None:
    """A new lava point keyed by the API id must win over the older point keyed by the gateway name."""
    alias, api_id = "qwen-3-235b-instruct", "qwen-3-235b-a22b-instruct-2507"
    new = _point("lava", api_id, CHANGE, "0.50", "1.00")
    book = PriceBook([*BUILTIN_PRICES, new])
    after = CHANGE + timedelta(days=1)
    assert book.price_for("lava", api_id, after) == new
    assert book.price_for("lava", alias, after) == new  # same model, so the same point in force
    before = CHANGE - timedelta(days=1)
    assert book.price_for("lava", api_id, before) == book.price_for("lava", alias, before)
    assert book.price_for("lava", api_id, before) is not None
    assert book.price_for("lava", api_id, before).model == alias  # type: ignore[union-attr]


def test_before_the_first_point_the_model_is_unpriced() -> None:
    event = _event(at=datetime(2023, 12, 31, 23, 59, tzinfo=UTC))
    assert charge(event, BOOK) == Charge(None, None, False, False)


# -- charge rules -------------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["ok", "error", "incomplete"])
def test_unknown_model_is_unpriced(status: str) -> None:
    assert charge(_event("no-such-model", status=status), BOOK) == Charge(None, None, False, False)
    # a known model in a book without it: unpriced, though its list price (cerebras book) is known
    list_point = BOOK.price_for("cerebras", "gpt-oss-120b", WHEN)
    assert list_point is not None
    assert charge(_event("gpt-oss-120b", book="no-such-book", status=status), BOOK) == Charge(
        None, None, False, False, cost_of(USAGE, list_point)
    )


def test_no_model_at_all_is_unpriced() -> None:
    assert charge(_event(None), BOOK) == Charge(None, None, False, False)


def test_cached_prompt_tokens_cost_the_input_rate_unless_cached_is_set() -> None:
    usage = Usage(1000, 400, 100, 0, 1100)
    plain = _point("cerebras", "m", WHEN - timedelta(days=1), "1.00", "2.00")
    cheap = _point("cerebras", "m", WHEN - timedelta(days=1), "1.00", "2.00", cached_per_m="0.10")
    assert cost_of(usage, plain) == Money(1000 * 1000 + 100 * 2000)
    assert cost_of(usage, cheap) == Money(600 * 1000 + 400 * 100 + 100 * 2000)
    assert cost_of(usage, plain) == cost_of(Usage(1000, 0, 100, 0, 1100), plain)
    free_cached = replace(plain, cached=ZERO)
    assert cost_of(usage, free_cached) == Money(600 * 1000 + 100 * 2000)


def test_reasoning_tokens_are_not_charged_twice() -> None:
    point = BOOK.price_for("cerebras", "gpt-oss-120b", WHEN)
    assert point is not None
    without = cost_of(Usage(100, 0, 300, 0, 400), point)
    with_reasoning = cost_of(Usage(100, 0, 300, 200, 400), point)
    assert without == with_reasoning == Money(100 * 350 + 300 * 750)


def test_error_without_usage_costs_zero_and_is_priced() -> None:
    c = charge(_event(status="error", usage=None), BOOK)
    assert c == Charge("cerebras/gpt-oss-120b@2024-01-01T00:00:00Z", ZERO, False, True, ZERO)
    free = charge(_event("llama3.1-8b", book="lava", status="error", usage=None), BOOK)
    assert free == Charge("lava/llama3.1-8b@2024-01-01T00:00:00Z", ZERO, True, True, ZERO)
    unknown = charge(_event("no-such-model", status="error", usage=None), BOOK)
    assert unknown.cost == ZERO and unknown.priced and unknown.price_id is None


def test_error_with_usage_is_charged_for_it() -> None:
    c = charge(_event(status="error", usage=Usage(10, 0, 5, 0, 15)), BOOK)
    assert c.cost == Money(10 * 350 + 5 * 750) and c.priced


@pytest.mark.parametrize("status", ["incomplete", "ok"])
def test_unknown_usage_is_unpriced(status: str) -> None:
    c = charge(_event(status=status, usage=None), BOOK)
    assert c.priced is False and c.cost is None
    assert c.price_id == "cerebras/gpt-oss-120b@2024-01-01T00:00:00Z"


def test_free_model_costs_zero_and_says_free() -> None:
    c = charge(_event("qwen-3-32b", book="lava", usage=Usage(10**6, 10, 10**6, 5, 2 * 10**6)), BOOK)
    # free through Lava; at Cerebras's list price ($0.40 / $0.80 per 1M) the same usage costs this:
    list_cost = Money((10**6 - 10) * 400 + 10 * 400 + 10**6 * 800)
    assert c == Charge("lava/qwen-3-32b@2024-01-01T00:00:00Z", ZERO, True, True, list_cost)
    direct = charge(_event("qwen-3-32b", book="cerebras", usage=Usage(10**6, 0, 10**6, 0, 2 * 10**6)), BOOK)
    assert direct.cost == usd("1.20") and not direct.free


@st.composite
def usages(draw: st.DrawFn) -> Usage:
    prompt = draw(st.integers(0, 10**8))
    completion = draw(st.integers(0, 10**8))
    return Usage(
        prompt,
        draw(st.integers(0, prompt)),
        completion,
        draw(st.integers(0, completion)),
        prompt + completion,
    )


rates = st.integers(0, 10**5).map(Money)
points = st.builds(
    lambda i, c, o, free: PricePoint("x", "cerebras", "m", WHEN, i, c, o, free),
    rates,
    st.none() | rates,
    rates,
    st.booleans(),
)


def _add(a: Usage, b: Usage) -> Usage:
    return Usage(
        *(
            x + y
            for x, y in zip(
                (a.prompt_tokens, a.cached_tokens, a.completion_tokens, a.reasoning_tokens, a.total_tokens),
                (b.prompt_tokens, b.cached_tokens, b.completion_tokens, b.reasoning_tokens, b.total_tokens),
                strict=True,
            )
        )
    )


@settings(max_examples=300, deadline=None)
@given(usages(), usages(), points)
def test_cost_is_additive_and_never_negative(a: Usage, b: Usage, point: PricePoint) -> None:
    ca, cb = cost_of(a, point), cost_of(b, point)
    assert ca.nanos >= 0 and cb.nanos >= 0
    assert cost_of(_add(a, b), point) == ca + cb
    assert cost_of(Usage(0, 0, 0, 0, 0), point) == ZERO
    if point.free:
        assert ca == ZERO


@settings(max_examples=100, deadline=None)
@given(usages(), st.sampled_from(BUILTIN_PRICES))
def test_charge_of_builtin_models_matches_cost_of(usage: Usage, point: PricePoint) -> None:
    c = charge(_event(point.model, book=point.book, usage=usage), BOOK)
    listed = BOOK.price_for("cerebras", point.model, WHEN)
    list_cost = cost_of(usage, listed) if listed is not None else None
    assert c == Charge(point.price_id, cost_of(usage, point), point.free, True, list_cost)
    assert c.cost is not None and c.cost.nanos >= 0
