"""Money: one exact type, one way to make it (``usd``), and sums that never lose a digit."""

from __future__ import annotations

import random
from decimal import Decimal, localcontext

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ledger.money import NANOS_PER_USD, ZERO, Money, MoneyError, usd

# Amounts a BIGINT column can hold: the ledger's whole admissible range.
BIGINT = 2**63 - 1
nanos_in_range = st.integers(min_value=-BIGINT, max_value=BIGINT)


def _dollars(nanos: int, places: int = 9) -> str:
    """``nanos`` written as a plain decimal string with ``places`` (≤ 9) fraction digits."""
    sign = "-" if nanos < 0 else ""
    whole, frac = divmod(abs(nanos), NANOS_PER_USD)
    digits = f"{frac:09d}"
    assert places == 9 or digits[places:] == "0" * (9 - places)
    return f"{sign}{whole}" + (f".{digits[:places]}" if places else "")


@st.composite
def decimal_strings(draw: st.DrawFn) -> tuple[str, int]:
    """A decimal string with at most nine places, and the nano-dollars it means."""
    places = draw(st.integers(0, 9))
    unit = 10 ** (9 - places)
    nanos = draw(st.integers(-BIGINT // unit, BIGINT // unit)) * unit
    return _dollars(nanos, places), nanos


@settings(max_examples=400, deadline=None)
@given(decimal_strings())
@example(("0.000000001", 1))
@example(("-0.000000001", -1))
@example(("0.00000035", 350))
@example(("9223372036.854775807", BIGINT))
def test_usd_round_trips_decimal_strings_exactly(case: tuple[str, int]) -> None:
    text, nanos = case
    money = usd(text)
    assert money == Money(nanos)
    assert money.to_decimal() == Decimal(text)
    assert usd(str(money)) == money
    assert usd(Decimal(text)) == money
    assert str(money) == _dollars(nanos)  # nine places, no exponent, no float noise


@settings(max_examples=200, deadline=None)
@given(st.integers(-(10**10) + 1, 10**10 - 1))
def test_usd_of_whole_dollars(dollars: int) -> None:
    assert usd(dollars) == Money(dollars * NANOS_PER_USD)
    assert usd(str(dollars)) == usd(dollars)


@pytest.mark.parametrize("amount", [10**10, -(10**10), "1e10", "12345678901234567890.123456789"])
def test_amounts_a_bigint_cannot_hold_are_refused(amount: object) -> None:
    # 1e10 USD is 1e19 nano-dollars: more than a BIGINT column holds
    with pytest.raises(MoneyError, match="too large"):
        usd(amount)  # type: ignore[arg-type]


def test_per_token_rate_reads_back_per_million() -> None:
    assert usd("0.00000035").per_million() == Decimal("0.35")
    assert usd("0.00000075") * 1_000_000 == usd("0.75")
    assert ZERO.per_million() == 0


@settings(max_examples=200, deadline=None)
@given(st.floats(allow_nan=True, allow_infinity=True))
def test_usd_refuses_every_float(value: float) -> None:
    with pytest.raises(MoneyError):
        usd(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "value",
    [
        True,
        False,
        None,
        1.5,
        0.1,
        [],
        {},
        b"1",
        bytearray(b"1"),
        complex(1, 0),
        object(),
        "nan",
        "NaN",
        "-nan",
        "sNaN",
        "inf",
        "-Infinity",
        "Infinity",
        Decimal("NaN"),
        Decimal("sNaN"),
        Decimal("Infinity"),
        Decimal("-Infinity"),
        "",
        " ",
        "abc",
        "1.2.3",
        "$1",
        "1,000",
        "0x10",
        "1e",
        "e5",
        "--1",
        "1 2",
        "½",
    ],
)
def test_usd_refuses_non_money(value: object) -> None:
    with pytest.raises(MoneyError):
        usd(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "value",
    [
        "0.0000000001",
        "1e-10",
        "-0.0000000005",
        "1.0000000001",
        Decimal("1e-10"),
        "0.3333333333",
        # so small that scaling by 1e9 underflows the default decimal context to zero
        "1e-1000036",
        "-1e-2000000",
    ],
)
def test_usd_refuses_sub_nano_amounts(value: object) -> None:
    with pytest.raises(MoneyError):
        usd(value)  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(nanos_in_range, st.text(alphabet="0123456789", min_size=1, max_size=12).filter(lambda s: s.strip("0")))
def test_usd_refuses_any_amount_finer_than_a_nano(nanos: int, extra: str) -> None:
    text = _dollars(nanos) + extra  # ten or more places, the extra ones not all zero
    with pytest.raises(MoneyError):
        usd(text)


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=30))
@example("10000000000000000000000000001")  # 29 digits: past the default decimal precision
def test_usd_on_any_text_gives_money_or_money_error(text: str) -> None:
    try:
        money = usd(text)
    except MoneyError:
        return
    assert isinstance(money, Money) and type(money.nanos) is int
    with localcontext() as ctx:
        ctx.prec = 200
        assert Decimal(money.nanos) == Decimal(text.strip()) * NANOS_PER_USD


@settings(max_examples=200, deadline=None)
@given(st.integers(10**18, 10**40), st.integers(1, 10**9 - 1))
@example(12345678901234567890, 123456789)
def test_huge_amounts_are_exact_or_refused_never_rounded(whole: int, frac: int) -> None:
    """Past the default 28-digit decimal context, ``usd`` must not silently round."""
    text = f"{whole}.{frac:09d}"
    try:
        money = usd(text)
    except MoneyError:
        return
    assert money.nanos == whole * NANOS_PER_USD + frac  # exact to the last nano-dollar


@pytest.mark.parametrize("text", ["1e30", "1e999999", "-1e999999999"])
def test_absurd_amounts_are_exact_or_money_error(text: str) -> None:
    try:
        money = usd(text)
    except MoneyError:
        return
    assert money.nanos == int(Decimal(text)) * NANOS_PER_USD


def test_money_refuses_non_int_nanos_and_counts() -> None:
    for bad in (1.0, True, "1", Decimal(1)):
        with pytest.raises(MoneyError):
            Money(bad)  # type: ignore[arg-type]
    for bad in (1.5, True, Decimal(2)):
        with pytest.raises(MoneyError):
            usd("1") * bad  # type: ignore[operator]


money = nanos_in_range.map(Money)


@settings(max_examples=300, deadline=None)
@given(money, money, money)
def test_addition_is_exact_and_associative(a: Money, b: Money, c: Money) -> None:
    assert (a + b) + c == a + (b + c)
    assert a + b == b + a
    assert (a + b).nanos == a.nanos + b.nanos
    assert (a + b) - b == a
    assert a + ZERO == a and a + (-a) == ZERO
    with localcontext() as ctx:
        ctx.prec = 100
        assert (a + b + c).to_decimal() == a.to_decimal() + b.to_decimal() + c.to_decimal()


def test_a_million_amounts_sum_to_the_last_digit() -> None:
    rng = random.Random(20240101)
    ns = [rng.getrandbits(44) - (1 << 43) for _ in range(1_000_000)]  # about ±$8,796 each
    total = sum(map(Money, ns), ZERO)
    with localcontext() as ctx:
        ctx.prec = 80  # the reference must not round either
        reference = sum(map(Decimal, map("{}e-9".format, ns)), Decimal(0))
    assert total.to_decimal() == reference
    assert str(total) == format(reference.quantize(Decimal("1e-9")), "f")
    # and the same amounts made from their dollar strings add up the same
    sample = ns[:20_000]
    assert sum((usd(_dollars(n)) for n in sample), ZERO) == sum(map(Money, sample), ZERO)
