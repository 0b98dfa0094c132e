"""Pricing: which price applies to a call, and what the call cost.

This is the one home for prices. A :class:`PricePoint` is a rate for (book, model) from its
``effective_from`` until the next point of the same (book, model). A :class:`PriceBook` answers
"which point was in force at time *t*", and :func:`charge` turns a :class:`~ledger.events.CallEvent`
into a :class:`Charge`: the price id used, the exact cost, and the free / priced flags.

Books:

* ``lava``: Lava managed mode (Lava's keys, Lava's prices). Holds exactly the seed table of
  ``shared/wire/prices.md``: two paid models and five free ones.
* ``cerebras``: direct calls and Lava bring-your-own-key calls, at Cerebras's own rates.

Rules decided here:

* Rates are per token, in exact :class:`~ledger.money.Money`. Cached prompt tokens cost the
  input rate unless the point sets ``cached``. Reasoning tokens are part of completion tokens
  and are not charged twice.
* A model with no point in force is *unpriced*: ``priced=False`` and no cost, never a silent $0.
* An ``error`` attempt with no usage is charged zero (the upstream bills nothing for a refused
  request) and counts as priced. An attempt whose usage is unknown (cut stream, broken usage)
  is unpriced, with no cost.
* Model aliases (``qwen-3-235b-instruct`` = ``qwen-3-235b-a22b-instruct-2507``) resolve both ways.
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from ledger.calendar import iso_z
from ledger.events import CallEvent, Usage
from ledger.money import ZERO, Money, usd

__all__ = [
    "ALIASES",
    "BOOKS",
    "BUILTIN_PRICES",
    "Charge",
    "PriceBook",
    "PricePoint",
    "charge",
    "charge_nanos",
    "cost_of",
    "make_price_id",
    "model_names",
]

BOOKS: tuple[str, ...] = ("cerebras", "lava")

# Gateway name -> API model id. Resolution goes both ways (see model_names).
ALIASES: dict[str, str] = {"qwen-3-235b-instruct": "qwen-3-235b-a22b-instruct-2507"}

# The built-in books take effect from this instant, so back-filled history is priced too.
BUILTIN_SINCE = datetime(2024, 1, 1, tzinfo=UTC)


def make_price_id(book: str, model: str, effective_from: datetime) -> str:
    """The stable id of a price point, e.g. ``lava/gpt-oss-120b@2024-01-01T00:00:00Z``."""
    return f"{book}/{model}@{iso_z(effective_from, 'seconds')}"


@dataclass(frozen=True, slots=True)
class PricePoint:
    """A dated rate for one model in one book.

    Attributes:
        price_id: stable id, see :func:`make_price_id`; events keep it.
        book: ``cerebras`` or ``lava``.
        model: the model name as the book lists it.
        effective_from: when the rate takes effect (UTC); it lasts until the next point.
        input: per input (prompt) token.
        cached: per cached prompt token; ``None`` means the input rate.
        output: per output (completion) token.
        free: whether calls at this point are free.
        source: ``builtin``, ``manual`` or ``sync``.
    """

    price_id: str
    book: str
    model: str
    effective_from: datetime
    input: Money
    cached: Money | None
    output: Money
    free: bool
    source: str = "builtin"


@dataclass(frozen=True, slots=True)
class Charge:
    """What an event costs.

    Attributes:
        price_id: the point used, or ``None`` when none applied.
        cost: exact cost, or ``None`` when unpriced.
        free: the point in force marks the model free.
        priced: a cost is known.
        list_cost: what the same usage costs at the ``cerebras`` book's rates (Cerebras's list
            price), or ``None`` when that book has no rate for the model or usage is unknown.
            For a free Lava call this is "free usage at list price".
    """

    price_id: str | None
    cost: Money | None
    free: bool
    priced: bool
    list_cost: Money | None = None


def _point(book: str, model: str, input_per_m: str, output_per_m: str) -> PricePoint:
    """A built-in point from USD-per-million-token strings (``"free"`` for free)."""
    free = input_per_m == "free"

    def per_token(s: str) -> Money:
        if s == "free":
            return ZERO
        if usd(s).nanos % 1_000_000:
            raise ValueError(f"built-in rate {s} is not a whole nano-dollar per token")
        return Money(usd(s).nanos // 1_000_000)

    return PricePoint(
        make_price_id(book, model, BUILTIN_SINCE),
        book,
        model,
        BUILTIN_SINCE,
        per_token(input_per_m),
        None,
        per_token(output_per_m),
        free,
    )


BUILTIN_PRICES: tuple[PricePoint, ...] = (
    # Lava managed mode: the seed table, exactly.
    _point("lava", "qwen-3-235b-instruct", "0.60", "1.20"),
    _point("lava", "gpt-oss-120b", "0.35", "0.75"),
    _point("lava", "llama3.1-8b", "free", "free"),
    _point("lava", "llama-3.3-70b", "free", "free"),
    _point("lava", "deepseek-r1-distill-llama-70b", "free", "free"),
    _point("lava", "llama-4-scout-17b-16e-instruct", "free", "free"),
    _point("lava", "qwen-3-32b", "free", "free"),
    # Cerebras's own rates (direct, or Lava with your own provider key).
    _point("cerebras", "gpt-oss-120b", "0.35", "0.75"),
    _point("cerebras", "qwen-3-235b-a22b-instruct-2507", "0.60", "1.20"),
    _point("cerebras", "zai-glm-4.7", "2.25", "2.75"),
    _point("cerebras", "qwen-3-32b", "0.40", "0.80"),
    _point("cerebras", "llama-3.3-70b", "0.85", "1.20"),
    _point("cerebras", "llama3.1-8b", "0.10", "0.10"),
)


@functools.lru_cache(maxsize=1024)
def model_names(model: str) -> tuple[str, ...]:
    """The names a model may be listed under in a book: itself, then its aliases."""
    canonical = ALIASES.get(model, model)
    others = tuple(alias for alias, target in ALIASES.items() if target == canonical)
    names = [model, canonical, *others]
    return tuple(dict.fromkeys(names))


class PriceBook:
    """All price points, searchable by (book, model, time)."""

    def __init__(self, points: Iterable[PricePoint]) -> None:
        by_key: dict[tuple[str, str], list[PricePoint]] = {}
        for p in points:
            by_key.setdefault((p.book, p.model), []).append(p)
        self._points = {k: sorted(v, key=lambda p: p.effective_from) for k, v in by_key.items()}
        self._starts = {k: [p.effective_from for p in v] for k, v in self._points.items()}
        self._memo: dict[tuple[str, str], tuple[PricePoint | None, datetime, datetime]] = {}

    def points(self) -> list[PricePoint]:
        return [p for k in sorted(self._points) for p in self._points[k]]

    def books(self) -> list[str]:
        """The names of the books that have points."""
        return sorted({book for book, _ in self._points})

    def free_models(self, book: str, at: datetime) -> frozenset[str]:
        """Every name (model or alias) that :meth:`price_for` finds free in ``book`` at ``at``."""
        names = {alias for b, model in self._points if b == book for alias in model_names(model)}
        return frozenset(n for n in names if (p := self.price_for(book, n, at)) is not None and p.free)

    def price_for(self, book: str, model: str | None, at: datetime) -> PricePoint | None:
        """The point in force for ``model`` in ``book`` at ``at``, or ``None``."""
        if not model:
            return None
        hit = self._memo.get((book, model))
        if hit is not None and hit[1] <= at < hit[2]:
            return hit[0]  # the writer prices thousands of events of a few models a second
        best: PricePoint | None = None
        lo, hi = _EARLIEST, _LATEST  # where the answer stays the same
        for name in model_names(model):  # a point under any alias counts; the latest in force wins
            key = (book, name)
            starts = self._starts.get(key)
            if starts:
                i = bisect.bisect_right(starts, at) - 1
                if i >= 0:
                    lo = max(lo, starts[i])
                    if best is None or starts[i] > best.effective_from:
                        best = self._points[key][i]
                if i + 1 < len(starts):
                    hi = min(hi, starts[i + 1])
        if len(self._memo) >= 4096:
            self._memo.clear()
        self._memo[(book, model)] = (best, lo, hi)
        return best


_EARLIEST = datetime.min.replace(tzinfo=UTC)
_LATEST = datetime.max.replace(tzinfo=UTC)


def _cost_nanos(point: PricePoint, prompt: int, cached: int, completion: int) -> int:
    # integer arithmetic on nano-dollars (the writer prices every event: one int, not six Moneys)
    if point.free:
        return 0
    rate_in = point.input.nanos
    rate_cached = rate_in if point.cached is None else point.cached.nanos
    return rate_in * (prompt - cached) + rate_cached * cached + point.output.nanos * completion


def cost_of(usage: Usage, point: PricePoint) -> Money:
    """Exact cost of ``usage`` at ``point``."""
    return Money(_cost_nanos(point, usage.prompt_tokens, usage.cached_tokens, usage.completion_tokens))


LIST_BOOK = "cerebras"


def charge(event: CallEvent, book: PriceBook) -> Charge:
    """Price one event by the point in force at its ``occurred_at``."""
    u = event.usage
    tokens = None if u is None else (u.prompt_tokens, u.cached_tokens, u.completion_tokens)
    price_id, cost, list_cost, free, priced = charge_nanos(
        book, event.book, event.model, event.occurred_at, event.status, tokens
    )
    return Charge(
        price_id,
        None if cost is None else Money(cost),
        free,
        priced,
        None if list_cost is None else Money(list_cost),
    )


def charge_nanos(
    book: PriceBook,
    book_name: str,
    model: str | None,
    at: datetime,
    status: str,
    tokens: tuple[int, int, int] | None,
) -> tuple[str | None, int | None, int | None, bool, bool]:
    """The one pricing rule, as plain values: ``(price_id, cost, list_cost, free, priced)``
    with amounts in nano-dollars. The writer calls this for every spooled event."""
    point = book.price_for(book_name, model, at)
    if tokens is None:
        if status == "error":  # an error with no usage costs nothing, and that is known
            return (point.price_id if point else None), 0, 0, bool(point and point.free), True
        return (point.price_id if point else None), None, None, bool(point and point.free), False
    listed = point if book_name == LIST_BOOK else book.price_for(LIST_BOOK, model, at)
    list_cost = _cost_nanos(listed, *tokens) if listed is not None else None
    if point is None:
        return None, None, list_cost, False, False
    return point.price_id, _cost_nanos(point, *tokens), list_cost, point.free, True
