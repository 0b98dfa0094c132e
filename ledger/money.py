"""Money: the one money type of the ledger, and the one way to make it.

Every amount is a whole number of **nano-dollars** (1e-9 USD) held in an ``int``. The database
stores that integer in a BIGINT, so SQLite (which keeps ``Numeric`` as a float) and PostgreSQL
sum it exactly. ``Decimal`` appears only at the edges: parsing a price a person typed, and
printing an amount. No ``float`` ever touches money: :func:`usd` refuses one.

A per-token rate is money too: Cerebras quotes ``"0.00000035"`` USD per token, which is 350
nano-dollars. A rate finer than one nano-dollar per token ($0.001 per million tokens) is refused
rather than rounded, so ``cost = tokens * rate`` is always an exact integer.

This module imports nothing from the rest of the package.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Context, Decimal, Inexact, InvalidOperation

__all__ = ["NANOS_PER_USD", "ZERO", "Money", "MoneyError", "usd"]

NANOS_PER_USD = 1_000_000_000
_NANO = Decimal("1e-9")
# Wide enough for any amount we accept (|x| < 1e10 USD at nano precision), and loud on rounding.
_EXACT = Context(prec=40, traps=[Inexact, InvalidOperation])
MAX_USD_DIGITS = 10  # a BIGINT holds 9.2e18 nano-dollars: refuse 1e10 USD and up


class MoneyError(ValueError):
    """An amount that is not exact money (a float, garbage, or finer than a nano-dollar)."""


@dataclass(frozen=True, slots=True, order=True)
class Money:
    """An exact amount of US dollars.

    Attributes:
        nanos: the amount in nano-dollars (1e-9 USD); negative for credits.
    """

    nanos: int

    def __post_init__(self) -> None:
        if type(self.nanos) is not int:  # bool and float are both refused
            raise MoneyError(f"Money needs whole nano-dollars, got {self.nanos!r}")

    def __add__(self, other: Money) -> Money:
        return Money(self.nanos + other.nanos)

    def __sub__(self, other: Money) -> Money:
        return Money(self.nanos - other.nanos)

    def __neg__(self) -> Money:
        return Money(-self.nanos)

    def __mul__(self, count: int) -> Money:
        if type(count) is not int:
            raise MoneyError(f"Money can only be multiplied by a whole count, got {count!r}")
        return Money(self.nanos * count)

    __rmul__ = __mul__

    def to_decimal(self) -> Decimal:
        """The exact amount in dollars, with nine decimal places."""
        return Decimal(self.nanos).scaleb(-9).quantize(_NANO)

    def __str__(self) -> str:
        return format(self.to_decimal(), "f")

    def per_million(self) -> Decimal:
        """Read this amount as a per-token rate and give the rate per million tokens, in dollars."""
        return (Decimal(self.nanos) / 1000).normalize() if self.nanos else Decimal(0)


ZERO = Money(0)


def usd(value: str | Decimal | int) -> Money:
    """Make :class:`Money` from dollars given as a decimal string, a ``Decimal`` or an ``int``.

    >>> usd("0.00000035")
    Money(nanos=350)
    """
    if isinstance(value, bool) or not isinstance(value, (str, Decimal, int)):
        raise MoneyError(f"money must be a decimal string, Decimal or int, not {type(value).__name__}")
    try:
        amount = Decimal(value.strip()) if isinstance(value, str) else Decimal(value)
    except InvalidOperation:
        raise MoneyError(f"not a decimal amount: {value!r}") from None
    if not amount.is_finite():
        raise MoneyError(f"not a finite amount: {value!r}")
    if amount and amount.adjusted() >= MAX_USD_DIGITS:
        raise MoneyError(f"{value!r} is too large an amount (10 billion USD or more)")
    try:
        exact = amount.quantize(_NANO, context=_EXACT)
    except (Inexact, InvalidOperation):
        raise MoneyError(f"{value!r} is finer than one nano-dollar (1e-9 USD)") from None
    return Money(int(exact.scaleb(9, context=_EXACT)))
