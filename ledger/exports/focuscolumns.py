"""FOCUS 1.2 columns: their names and order, the constants and SKU metadata their values use, and
how the ``Tags`` and ``SkuPriceDetails`` values are written.

:mod:`ledger.exports.focus` makes the rows from these; :mod:`ledger.exports.focusfiles` writes them.

Columns (:data:`COLUMNS`): the FOCUS columns that apply, in alphabetical order (allowed by FOCUS
column ordering), then the custom ``x_`` columns. Values:

* ``BilledCost`` = ``EffectiveCost`` = ``ContractedCost`` (no discounts or commitments exist);
  ``ContractedUnitPrice`` is the charging point's rate, ``ListUnitPrice`` the ``cerebras``
  book's rate for the model (the charging point's own when that book has none), both per
  ``1000000 Tokens``; ``ListCost`` = ``ListUnitPrice`` × ``PricingQuantity`` exactly.
  List rates come from the ``cerebras`` points that existed when the month was issued, so a
  point added later never changes an issued month.
* Free models, every one the same: ``ListUnitPrice`` is the free point's own rate, 0, so
  ``ListCost`` = ``BilledCost`` = 0, whether or not the ``cerebras`` book lists the model. What
  free usage would have cost at Cerebras's list price is a report figure ("free usage at list
  price"), not a FOCUS cost.
* ``SkuId`` is ``<model>/<token type>``; ``SkuMeter`` the token type in words (``Output Tokens``).
  ``SkuPriceId`` is ``<book>/<model>/<token type>`` (``lava/gpt-oss-120b/output``): the same in
  every month and across accounts, with no effective date or price in it (FOCUS 1.2), and
  exactly one parent SkuId; the row's rates come from the dated point in force, which
  ``Tags`` names. ``SkuPriceDetails`` is ``{"PriceBook": <book>, "TokenType": <type>}``, the
  same for every row of a SkuPriceId.
* ``Tags`` (JSON, Key-Value Format) holds the calls' own tags, keys and values as given, and the
  ledger's keys under the prefix ``ledger/``: ``ledger/book``, ``ledger/free``, ``ledger/route``
  and ``ledger/price_id`` (the dated price point). A call's tag whose key begins with
  ``ledger/`` is reserved and left out of ``Tags`` (it stays on the event).
* ``x_FocusVersion`` is ``1.2`` on every row. FOCUS puts ``FocusVersion`` in dataset metadata,
  separate from the data; the export is one self-contained file (or stdout), so it states the
  version in a custom column, which FOCUS allows and every tool keeps (Parquet files also carry
  it as the schema metadata key ``FocusVersion``).
* ``InvoiceIssuerName`` and ``BillingAccountId``/``Name`` are Lava when the route was ``lava``,
  else Cerebras (the ledger does not know your account number at either).
* Dates are ISO 8601 UTC with ``Z``; periods are [start, end): the billing period is the
  exported month; the charge period is the month the usage occurred in.

Nulls (FOCUS Null Handling): absent values are NULL, never an empty or placeholder string. In CSV
a NULL is an empty cell (no value the export writes is ever an empty string, so an empty cell
always means NULL); in Parquet it is a real null. Decimals are exact: plain decimal strings in
CSV, ``decimal128`` in Parquet (costs and unit prices at 9 places, quantities at 6, token counts
included, so tools that infer types read every decimal column as decimal).

The FinOps Foundation's ``focus-validator`` (1.0.0, ``--validate-version 1.0``) passes the export
with ``tests/focus_validator_overrides.yaml``, which lists the rules where that release departs
from FOCUS 1.0/1.2 (1.0-preview column names, conditional columns treated as required), each
with its reason; ``tests/test_focus_spec.py`` runs it and checks the 1.2 rules it lacks.
"""

from __future__ import annotations

import json
from decimal import Context
from typing import Any

__all__ = [
    "COLUMNS",
    "CURRENCY",
    "DATE_COLUMNS",
    "EXACT",
    "FOCUS_COLUMNS",
    "FOCUS_VERSION",
    "FORMATS",
    "IMPORTED",
    "IMPORTED_UNIT",
    "ISSUERS",
    "METERS",
    "PRICING_UNIT",
    "PROVIDER",
    "SCALES",
    "SERVICE_NAME",
    "TOKEN_TYPES",
    "TOKEN_WORDS",
    "TOTAL",
    "details",
    "tags",
]

FOCUS_COLUMNS: tuple[str, ...] = (
    "BilledCost",
    "BillingAccountId",
    "BillingAccountName",
    "BillingCurrency",
    "BillingPeriodEnd",
    "BillingPeriodStart",
    "ChargeCategory",
    "ChargeClass",
    "ChargeDescription",
    "ChargeFrequency",
    "ChargePeriodEnd",
    "ChargePeriodStart",
    "ConsumedQuantity",
    "ConsumedUnit",
    "ContractedCost",
    "ContractedUnitPrice",
    "EffectiveCost",
    "InvoiceIssuerName",
    "ListCost",
    "ListUnitPrice",
    "PricingCategory",
    "PricingQuantity",
    "PricingUnit",
    "ProviderName",
    "PublisherName",
    "ServiceCategory",
    "ServiceName",
    "ServiceSubcategory",
    "SkuId",
    "SkuMeter",
    "SkuPriceDetails",
    "SkuPriceId",
    "SubAccountId",
    "SubAccountName",
    "Tags",
)
CUSTOM_COLUMNS: tuple[str, ...] = ("x_Model", "x_TokenType", "x_Free", "x_Route", "x_FocusVersion")
COLUMNS: tuple[str, ...] = FOCUS_COLUMNS + CUSTOM_COLUMNS
assert list(FOCUS_COLUMNS) == sorted(FOCUS_COLUMNS)

TOKEN_TYPES: tuple[str, ...] = ("input", "cached_input", "output")
TOTAL = "total"  # the token type of imported costs that cannot be split
TOKEN_WORDS = {
    "input": "input tokens",
    "cached_input": "cached input tokens",
    "output": "output tokens",
    TOTAL: "tokens",
}
METERS = {
    "input": "Input Tokens",
    "cached_input": "Cached Input Tokens",
    "output": "Output Tokens",
    TOTAL: "Tokens",
}
FOCUS_VERSION = "1.2"
TAG_PREFIX = "ledger/"  # the ledger's own keys in Tags; user keys under it are reserved
IMPORTED = "imported"  # the SkuPriceId "book" of imported costs
IMPORTED_UNIT = "Charges"  # their PricingUnit: one row is one charge of its whole cost
FORMATS: tuple[str, ...] = ("csv", "parquet")

CURRENCY = "USD"
SERVICE_NAME = "Cerebras Inference"
PROVIDER = "Cerebras"
PRICING_UNIT = "1000000 Tokens"
TOKENS_PER_UNIT = 1_000_000
ISSUERS = {"lava": ("lava", "Lava"), "cerebras": ("cerebras", "Cerebras")}  # route -> (account id, name)

COST_COLUMNS = ("BilledCost", "ContractedCost", "EffectiveCost", "ListCost")
UNIT_PRICE_COLUMNS = ("ContractedUnitPrice", "ListUnitPrice")
DATE_COLUMNS = ("BillingPeriodEnd", "BillingPeriodStart", "ChargePeriodEnd", "ChargePeriodStart")
SCALES = {
    **dict.fromkeys(COST_COLUMNS, 9),
    **dict.fromkeys(UNIT_PRICE_COLUMNS, 9),
    "PricingQuantity": 6,
    "ConsumedQuantity": 6,
}

EXACT = Context(prec=60)


def tags(user_tags: str, book: str, free: bool, route: str, price_id: str | None) -> str:
    """FOCUS ``Tags``: the call's own tags as given, then the ledger's keys under :data:`TAG_PREFIX`
    (a user key under that prefix is reserved and left out)."""
    pairs: dict[str, Any] = {k: v for k, v in json.loads(user_tags).items() if not k.startswith(TAG_PREFIX)}
    pairs |= {
        f"{TAG_PREFIX}book": book,
        f"{TAG_PREFIX}free": "true" if free else "false",
        f"{TAG_PREFIX}route": route,
    }
    if price_id is not None:
        pairs[f"{TAG_PREFIX}price_id"] = price_id
    return json.dumps(pairs, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def details(book: str, token_type: str) -> str:
    """FOCUS ``SkuPriceDetails`` of ``<book>/<model>/<token type>``: what tells it from the other
    SkuPriceIds of the model's SkuId; the same for every row of that SkuPriceId, always."""
    return json.dumps({"PriceBook": book, "TokenType": token_type}, sort_keys=True, separators=(",", ":"))
