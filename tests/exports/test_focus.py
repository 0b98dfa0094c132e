"""FOCUS 1.2 monthly billing export: columns, nulls, exact money, price points, issuers, late usage,
closed months, idempotency, atomicity, Parquet and the CLI, on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
import json
import random
import re
import sys
import threading
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from ledger import store
from ledger.cli.main import main
from ledger.events import CallEvent, Usage
from ledger.exports import billing, focus, focuscolumns, focusfiles
from ledger.money import Money, usd
from ledger.pricing import Charge, charge
from ledger.reports.summary import project_summaries
from ledger.store import prices as pricedb
from ledger.store import reprice as repricing
from ledger.store import rollup
from ledger.store.schema import EventRow, UsageRollupRow
from tests.helpers import make_event

AUG, SEP, OCT = "2026-08", "2026-09", "2026-10"
EXPECTED_COLUMNS = [
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
    "x_Model",
    "x_TokenType",
    "x_Free",
    "x_Route",
    "x_FocusVersion",
]
MONEY = ("BilledCost", "ContractedCost", "EffectiveCost", "ListCost")


def at(month: str, day: int, hour: int = 12, minute: int = 0) -> datetime:
    return datetime(int(month[:4]), int(month[5:]), day, hour, minute, tzinfo=UTC)


def event(
    when: datetime,
    project: str = "alpha",
    route: str = "lava",
    model: str = "gpt-oss-120b",
    prompt: int = 1000,
    cached: int = 0,
    completion: int = 500,
    status: str = "ok",
    book: str | None = None,
) -> CallEvent:
    usage = Usage(prompt, cached, completion, 0, prompt + completion) if status == "ok" else None
    return make_event(
        occurred_at=when,
        project=project,
        route=route,
        book=book or route,
        requested_model=model,
        status=status,
        http_status=200 if status != "error" else 429,
        usage=usage,
        tags=(("feature", "chat"),),
    )


def write(engine: sa.Engine, events: list[CallEvent], charges: list[Charge] | None = None) -> None:
    with store.write_transaction(engine) as conn:
        book = store.load_price_book(conn)
        now = datetime.now(UTC)
        rows = [
            store.event_row(e, charges[i] if charges else charge(e, book), now) for i, e in enumerate(events)
        ]
        store.insert_events(conn, rows)


def add_point(
    engine: sa.Engine, book: str, model: str, inp: str, out: str, when: datetime, cached: str | None = None
) -> None:
    with store.write_transaction(engine) as conn:
        store.insert_prices(
            conn, [pricedb.new_point(book, model, inp, out, cached_per_m=cached, effective_from=when)]
        )


def export(engine: sa.Engine, month: str, path: Path, fmt: str = "csv", **kw: Any) -> billing.BillingExport:
    return billing.export_billing(engine, month, path, fmt, **kw)


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def cents(rows: list[dict[str, str]], column: str = "BilledCost", **where: str) -> Decimal:
    return sum((Decimal(r[column]) for r in rows if all(r[k] == v for k, v in where.items())), Decimal(0))


def raw_by_project(engine: sa.Engine, since: datetime, until: datetime) -> dict[str, tuple[int, int, int]]:
    """(cost nanos, list cost nanos with the charge as fallback and free usage at 0, tokens) per project,
    straight from events."""
    e = EventRow.__table__.c
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(
                e.project,
                sa.func.sum(e.cost_nanos),
                sa.func.sum(
                    sa.case(
                        (e.free.is_(True), e.cost_nanos),
                        else_=sa.func.coalesce(e.list_cost_nanos, e.cost_nanos),
                    )
                ),
                sa.func.coalesce(sa.func.sum(e.total_tokens), 0),
            )
            .where(e.occurred_at >= since, e.occurred_at < until, e.cost_nanos.is_not(None))
            .group_by(e.project)
        ).all()
    return {r[0]: (int(r[1]), int(r[2]), int(r[3])) for r in rows}


def nanos(value: str | Decimal) -> int:
    return usd(Decimal(value)).nanos


def mixed_month(month: str, rng: random.Random, n: int = 240) -> list[CallEvent]:
    models = (
        "gpt-oss-120b",
        "qwen-3-235b-instruct",
        "llama3.1-8b",
        "deepseek-r1-distill-llama-70b",
        "mystery-model",
    )
    out = []
    for _ in range(n):
        route = rng.choice(("lava", "cerebras"))
        model = rng.choice(
            models
            if route == "lava"
            else (
                "gpt-oss-120b",
                "zai-glm-4.7",
                "llama3.1-8b",
                "qwen-3-235b-a22b-instruct-2507",
                "mystery-model",
            )
        )
        prompt = rng.randint(1, 90_000)
        when = at(month, 1, 0) + timedelta(seconds=rng.randint(0, 27 * 86400))
        out.append(
            event(
                when,
                rng.choice(("alpha", "beta", "gamma ünïcode")),
                route,
                model,
                prompt,
                rng.choice((0, rng.randint(0, prompt))),
                rng.randint(1, 40_000),
                rng.choices(("ok", "error", "incomplete"), (90, 5, 5))[0],
            )
        )
    return out


# -- shape ---------------------------------------------------------------------------------------


def test_columns_in_order_and_null_rules(engine: sa.Engine, tmp_path: Path) -> None:
    write(engine, mixed_month(SEP, random.Random(1), 120))
    # imported usage with a cost of its own and no price point: one "total" row
    imported = event(at(SEP, 3), "beta", "lava", "some-import", 10, 0, 5)
    write(engine, [imported], [Charge(None, usd("0.000123456"), False, True)])
    out = tmp_path / "sep.csv"
    result = export(engine, SEP, out)
    header, rows = read_csv(out)
    assert header == EXPECTED_COLUMNS == list(focuscolumns.COLUMNS)
    assert len(rows) == len(result.rows) > 10
    text = out.read_text(encoding="utf-8")
    # an empty cell is NULL; a quoted empty string is never written
    assert not re.search(r'(^|,)""(,|$)', text, re.MULTILINE)
    for r in rows:
        assert r["ChargeClass"] == ""  # regular rows: NULL
        assert {c for c, v in r.items() if v == ""} == {"ChargeClass"}, r  # imported-cost rows included
        assert r["BillingCurrency"] == "USD" and r["ChargeCategory"] == "Usage"
        assert r["ChargeFrequency"] == "Usage-Based"
        assert (r["ServiceCategory"], r["ServiceSubcategory"]) == ("AI and Machine Learning", "Generative AI")
        assert r["ProviderName"] == r["PublisherName"] == "Cerebras"
        assert (r["PricingUnit"], r["ConsumedUnit"]) == (
            "Charges" if r["x_TokenType"] == "total" else "1000000 Tokens",
            "Tokens",
        )
        assert r["SubAccountId"] == r["SubAccountName"] and r["SubAccountId"] in (
            "alpha",
            "beta",
            "gamma ünïcode",
        )
        assert (r["BillingPeriodStart"], r["BillingPeriodEnd"]) == (
            "2026-09-01T00:00:00Z",
            "2026-10-01T00:00:00Z",
        )
        assert (r["ChargePeriodStart"], r["ChargePeriodEnd"]) == (
            "2026-09-01T00:00:00Z",
            "2026-10-01T00:00:00Z",
        )
        assert r["x_Free"] in ("true", "false")
        tags = json.loads(r["Tags"])
        assert (
            tags["ledger/route"] == r["x_Route"]
            and tags["ledger/free"] == r["x_Free"]
            and "ledger/book" in tags
        )
        assert tags["feature"] == "chat"  # the call's own tag, as given
    total = [r for r in rows if r["x_TokenType"] == "total"]
    assert len(total) == 1 and total[0]["BilledCost"] == total[0]["ListCost"] == "0.000123456"
    assert total[0]["ConsumedQuantity"] == "15.000000"
    assert (
        total[0]["PricingQuantity"],
        total[0]["PricingUnit"],
        total[0]["ContractedUnitPrice"],
        total[0]["ListUnitPrice"],
        total[0]["SkuPriceId"],
    ) == ("1.000000", "Charges", "0.000123456", "0.000123456", "imported/some-import/total")
    assert {r["x_TokenType"] for r in rows} == {"input", "cached_input", "output", "total"}
    # one row per (project, model, token type, price point, list price, route)
    keys = Counter(
        (r["SubAccountId"], r["x_Model"], r["x_TokenType"], r["SkuPriceId"], r["ListUnitPrice"], r["x_Route"])
        for r in rows
    )
    assert max(keys.values()) == 1
    assert not any(r["x_Model"] == "mystery-model" for r in rows)  # unpriced usage is not billed
    assert result.unpriced > 0


def test_row_arithmetic_is_exact(engine: sa.Engine, tmp_path: Path) -> None:
    add_point(
        engine, "cerebras", "zai-glm-4.7", "2.25", "2.75", at(SEP, 1, 0) - timedelta(days=40), cached="0.50"
    )
    write(engine, mixed_month(SEP, random.Random(2), 150))
    out = tmp_path / "sep.csv"
    export(engine, SEP, out)
    _, rows = read_csv(out)
    for r in rows:
        qty, consumed = Decimal(r["PricingQuantity"]), Decimal(r["ConsumedQuantity"])
        assert qty * 1_000_000 == consumed and consumed > 0
        assert Decimal(r["BilledCost"]) == Decimal(r["EffectiveCost"]) == Decimal(r["ContractedCost"])
        assert Decimal(r["ContractedUnitPrice"]) * qty == Decimal(r["BilledCost"])
        assert Decimal(r["ListUnitPrice"]) * qty == Decimal(r["ListCost"])
        assert r["SkuId"] == f"{r['x_Model']}/{r['x_TokenType']}"
        tags = json.loads(r["Tags"])
        assert r["SkuPriceId"] == f"{tags['ledger/book']}/{r['x_Model']}/{r['x_TokenType']}"
        assert tags["ledger/price_id"].startswith(f"{tags['ledger/book']}/{r['x_Model']}@")  # the dated point
        if r["x_Free"] == "true":
            assert Decimal(r["BilledCost"]) == 0
    glm_cached = [r for r in rows if r["x_Model"] == "zai-glm-4.7" and r["x_TokenType"] == "cached_input"]
    assert glm_cached and all(r["ContractedUnitPrice"] == "0.500" for r in glm_cached)  # the cached rate
    gpt_cached = [r for r in rows if r["x_Model"] == "gpt-oss-120b" and r["x_TokenType"] == "cached_input"]
    assert gpt_cached and all(r["ContractedUnitPrice"] == "0.350" for r in gpt_cached)  # the input rate


def test_totals_equal_raw_events_summary_and_rollup(engine: sa.Engine, tmp_path: Path) -> None:
    rng = random.Random(3)
    write(engine, mixed_month(SEP, rng, 300))
    # neighbours that must stay out: the last microsecond of August, the first of October
    write(engine, [event(at(SEP, 1, 0) - timedelta(microseconds=1)), event(at(OCT, 1, 0))])
    out = tmp_path / "sep.csv"
    result = export(engine, SEP, out)
    _, rows = read_csv(out)
    start, end = focus.month_bounds(SEP)
    raw = raw_by_project(engine, start, end)
    got: dict[str, list[int | Decimal]] = defaultdict(lambda: [0, 0, 0])  # billed, list, consumed
    for r in rows:
        got[r["SubAccountId"]][0] += nanos(r["BilledCost"])
        got[r["SubAccountId"]][1] += nanos(r["ListCost"])
        got[r["SubAccountId"]][2] += Decimal(r["ConsumedQuantity"])
    assert {p: tuple(v) for p, v in got.items()} == raw
    assert result.billed == Money(sum(v[0] for v in raw.values()))
    with engine.connect() as conn:
        summaries = {s.project: s.paid_cost.nanos for s in project_summaries(conn, start, end)}
        recorded = conn.execute(
            sa.text("SELECT rows, billed_nanos FROM billing_exports WHERE month = :m"), {"m": SEP}
        ).one()
    assert summaries == {p: v[0] for p, v in got.items()}  # free usage costs nothing, so paid = billed
    assert (int(recorded[0]), int(recorded[1])) == (len(rows), result.billed.nanos)
    rollup.rollup(engine)
    ur = UsageRollupRow.__table__.c
    with engine.connect() as conn:
        rolled = dict(
            conn.execute(
                sa.select(ur.project, sa.func.sum(ur.cost_nanos))
                .where(ur.bucket >= start, ur.bucket < end)
                .group_by(ur.project)
            ).all()
        )
    assert {p: int(v) for p, v in rolled.items() if int(v)} == {p: v[0] for p, v in got.items() if v[0]}


# -- prices and issuers ---------------------------------------------------------------------------


def test_price_change_mid_month_keeps_the_sku_price_id_and_gives_two_rows(
    engine: sa.Engine, tmp_path: Path
) -> None:
    add_point(engine, "lava", "gpt-oss-120b", "0.50", "1.00", at(SEP, 15, 0))
    add_point(engine, "cerebras", "gpt-oss-120b", "0.40", "0.80", at(SEP, 20, 0))  # the list price moves too
    write(
        engine,
        [
            event(at(SEP, 5), prompt=1_000_000, completion=2_000_000),
            event(at(SEP, 17), prompt=3_000_000, completion=1),
            event(at(SEP, 25), prompt=5_000_000, completion=1),
        ],
    )
    out = tmp_path / "sep.csv"
    export(engine, SEP, out)
    _, rows = read_csv(out)
    inputs = sorted(
        (
            (
                r["SkuPriceId"],
                r["ContractedUnitPrice"],
                r["ListUnitPrice"],
                r["ConsumedQuantity"],
                r["BilledCost"],
                r["ListCost"],
            )
            for r in rows
            if r["x_TokenType"] == "input"
        ),
        key=str,
    )
    assert inputs == [
        ("lava/gpt-oss-120b/input", "0.350", "0.350", "1000000.000000", "0.350000000", "0.350000000"),
        ("lava/gpt-oss-120b/input", "0.500", "0.350", "3000000.000000", "1.500000000", "1.050000000"),
        ("lava/gpt-oss-120b/input", "0.500", "0.400", "5000000.000000", "2.500000000", "2.000000000"),
    ]
    outputs = [r for r in rows if r["x_TokenType"] == "output"]
    assert (
        len({r["SkuPriceId"] for r in outputs}) == 1 and len({r["ContractedUnitPrice"] for r in outputs}) == 2
    )
    assert {json.loads(r["Tags"])["ledger/price_id"] for r in outputs} == {
        "lava/gpt-oss-120b@2024-01-01T00:00:00Z",
        "lava/gpt-oss-120b@2026-09-15T00:00:00Z",
    }
    assert (
        cents(rows)
        == Decimal("0.350") + Decimal("1.500") + Decimal("2.500") + Decimal("1.50") + Decimal("0.000001") * 2
    )


def test_lava_and_direct_issuers_and_free_usage(engine: sa.Engine, tmp_path: Path) -> None:
    write(
        engine,
        [
            event(at(SEP, 2), route="lava", model="gpt-oss-120b"),
            event(at(SEP, 2), route="cerebras", model="gpt-oss-120b"),
            event(at(SEP, 3), route="lava", model="llama3.1-8b", prompt=2_000_000, completion=1_000_000),
            event(at(SEP, 3), route="lava", model="deepseek-r1-distill-llama-70b"),
            event(
                at(SEP, 4), route="lava", book="cerebras", model="qwen-3-32b"
            ),  # Lava with your own provider key
        ],
    )
    out = tmp_path / "sep.csv"
    export(engine, SEP, out)
    _, rows = read_csv(out)
    by = {(r["x_Route"], r["x_Model"], r["x_TokenType"]): r for r in rows}
    lava, direct = by[("lava", "gpt-oss-120b", "output")], by[("cerebras", "gpt-oss-120b", "output")]
    assert (lava["InvoiceIssuerName"], lava["BillingAccountName"], lava["BillingAccountId"]) == (
        "Lava",
        "Lava",
        "lava",
    )
    assert (direct["InvoiceIssuerName"], direct["BillingAccountName"]) == ("Cerebras", "Cerebras")
    assert lava["ChargeDescription"] == "gpt-oss-120b output tokens via Lava"
    assert direct["ChargeDescription"] == "gpt-oss-120b output tokens via Cerebras"
    assert json.loads(lava["Tags"])["ledger/route"] == "lava"
    assert json.loads(direct["Tags"])["ledger/book"] == "cerebras"
    free = by[("lava", "llama3.1-8b", "input")]
    assert (free["x_Free"], free["BilledCost"], free["ListUnitPrice"], free["ListCost"]) == (
        "true",
        "0.000000000",
        "0.000",
        "0.000000000",
    )  # every free model: listed at its own free price
    no_list = by[("lava", "deepseek-r1-distill-llama-70b", "input")]
    assert (no_list["ListUnitPrice"], no_list["ListCost"]) == ("0.000", "0.000000000")  # its own (free) rate
    byok = by[("lava", "qwen-3-32b", "output")]
    assert byok["InvoiceIssuerName"] == "Lava" and byok["SkuPriceId"] == "cerebras/qwen-3-32b/output"
    assert byok["x_Free"] == "false" and Decimal(byok["BilledCost"]) > 0


# -- closed months and late usage -----------------------------------------------------------------


def test_late_usage_is_billed_once_as_corrections_in_the_next_export(
    engine: sa.Engine, tmp_path: Path
) -> None:
    write(engine, [event(at(AUG, 10), "alpha"), event(at(AUG, 11), "beta", "cerebras")])
    aug = export(engine, AUG, tmp_path / "aug-1.csv")
    first = (tmp_path / "aug-1.csv").read_bytes()
    assert not aug.reissued and aug.corrections == 0

    late = event(
        at(AUG, 31, 23, 59), "alpha", prompt=7000, cached=3000, completion=900
    )  # arrives after Aug closed
    write(engine, [late, event(at(SEP, 2), "alpha")])
    add_point(
        engine, "cerebras", "gpt-oss-120b", "9.00", "9.00", at(AUG, 1, 0)
    )  # back-dated: Aug stays as issued
    again = export(engine, AUG, tmp_path / "aug-2.csv")
    assert again.reissued and again.rows == aug.rows
    assert (tmp_path / "aug-2.csv").read_bytes() == first

    sep = export(engine, SEP, tmp_path / "sep.csv")
    _, rows = read_csv(tmp_path / "sep.csv")
    corrections = [r for r in rows if r["ChargeClass"] == "Correction"]
    regular = [r for r in rows if r["ChargeClass"] == ""]
    assert sep.corrections == len(corrections) == 3  # input, cached_input, output of the late event
    assert {(r["ChargePeriodStart"], r["ChargePeriodEnd"]) for r in corrections} == {
        ("2026-08-01T00:00:00Z", "2026-09-01T00:00:00Z")
    }
    assert {(r["BillingPeriodStart"], r["BillingPeriodEnd"]) for r in rows} == {
        ("2026-09-01T00:00:00Z", "2026-10-01T00:00:00Z")
    }
    assert {r["ChargePeriodStart"] for r in regular} == {"2026-09-01T00:00:00Z"}
    assert all("(late usage from 2026-08)" in r["ChargeDescription"] for r in corrections)
    assert sum(nanos(r["BilledCost"]) for r in corrections) == charge_of(engine, late.event_id)
    assert sorted(Decimal(r["ConsumedQuantity"]) for r in corrections) == [900, 3000, 4000]
    assert rows.index(corrections[0]) > rows.index(regular[-1])  # regular rows first, then corrections

    # billed once: October's export has no trace of it, and re-exporting September is unchanged
    sep_bytes = (tmp_path / "sep.csv").read_bytes()
    oct_ = export(engine, OCT, tmp_path / "oct.csv")
    assert oct_.rows == [] and oct_.corrections == 0
    assert export(engine, SEP, tmp_path / "sep-2.csv").reissued
    assert (tmp_path / "sep-2.csv").read_bytes() == sep_bytes
    with engine.connect() as conn:
        billed: dict[str, int] = dict(
            conn.execute(sa.text("SELECT month, COUNT(*) FROM billed_batches GROUP BY month")).all()
        )
        months = [m for (m,) in conn.execute(sa.text("SELECT month FROM billing_exports ORDER BY month"))]
    assert months == [AUG, SEP, OCT]
    assert {m: int(n) for m, n in billed.items()} == {
        AUG: 2,
        SEP: 1,
    }  # the late batch holds an Aug and a Sep pair


def charge_of(engine: sa.Engine, event_id: str) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.text("SELECT cost_nanos FROM events WHERE event_id = :e"), {"e": event_id}
            ).scalar_one()
        )


def test_reprice_corrections_of_a_closed_month_follow_the_same_rule(
    engine: sa.Engine, tmp_path: Path
) -> None:
    write(engine, [event(at(AUG, d), "alpha", prompt=100_000 * d, completion=10_000 * d) for d in (3, 9, 27)])
    export(engine, AUG, tmp_path / "aug.csv")
    aug_bytes = (tmp_path / "aug.csv").read_bytes()
    add_point(
        engine, "lava", "gpt-oss-120b", "0.70", "1.50", at(AUG, 1, 0)
    )  # back-dated price, then re-priced
    with store.write_transaction(engine) as conn:
        result = repricing.reprice(conn, *focus.month_bounds(AUG))
    assert result.corrections == 3
    sep = export(engine, SEP, tmp_path / "sep.csv")
    _, rows = read_csv(tmp_path / "sep.csv")
    assert all(r["ChargeClass"] == "Correction" for r in rows) and sep.corrections == len(rows) == 4
    reversal = [r for r in rows if "2024-01-01" in r["SkuPriceId"]]
    restatement = [r for r in rows if "2026-08-01" in r["SkuPriceId"]]
    assert all(Decimal(r["BilledCost"]) < 0 and Decimal(r["ConsumedQuantity"]) < 0 for r in reversal)
    assert all(Decimal(r["BilledCost"]) > 0 for r in restatement)
    assert sum(nanos(r["BilledCost"]) for r in rows) == result.delta.nanos
    assert sum(Decimal(r["ConsumedQuantity"]) for r in rows) == 0  # tokens moved between prices, none added
    assert export(engine, AUG, tmp_path / "aug-2.csv").reissued
    assert (tmp_path / "aug-2.csv").read_bytes() == aug_bytes
    # everything billed across both files equals every event's cost: each billed exactly once
    _, aug_rows = read_csv(tmp_path / "aug.csv")
    with engine.connect() as conn:
        everything = int(conn.execute(sa.text("SELECT SUM(cost_nanos) FROM events")).scalar_one())
    assert sum(nanos(r["BilledCost"]) for r in aug_rows + rows) == everything


def test_reexport_is_idempotent_and_concurrent_exports_agree(
    engine: sa.Engine, db_url: str, tmp_path: Path
) -> None:
    write(engine, mixed_month(SEP, random.Random(4), 80))
    results: list[billing.BillingExport] = []
    errors: list[BaseException] = []

    def run(n: int) -> None:
        eng = store.make_engine(db_url)
        try:
            results.append(export(eng, SEP, tmp_path / f"sep-{n}.csv"))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            eng.dispose()

    threads = [threading.Thread(target=run, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert sorted(r.reissued for r in results) == [False, True, True]
    files = {(tmp_path / f"sep-{n}.csv").read_bytes() for n in range(3)}
    assert len(files) == 1
    with engine.connect() as conn:
        before = conn.execute(
            sa.text("SELECT batch_id, month, billed_in FROM billed_batches ORDER BY 1, 2")
        ).all()
        issued = conn.execute(sa.text("SELECT exported_at FROM billing_exports")).all()
    again = export(engine, SEP, tmp_path / "sep-again.csv")
    with engine.connect() as conn:
        after = conn.execute(
            sa.text("SELECT batch_id, month, billed_in FROM billed_batches ORDER BY 1, 2")
        ).all()
    assert again.reissued and after == before and len(issued) == 1
    assert (tmp_path / "sep-again.csv").read_bytes() in files


def test_a_failed_export_records_nothing_and_leaves_no_file(
    engine: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(engine, [event(at(SEP, 4))])
    real = focusfiles.write_csv

    def crash(rows: Any, out: Any) -> int:
        out.write("BilledCost,half a file")
        raise RuntimeError("disk died mid-write")

    monkeypatch.setattr(focusfiles, "write_csv", crash)
    target = tmp_path / "out" / "sep.csv"
    target.parent.mkdir()
    with pytest.raises(RuntimeError):
        export(engine, SEP, target)
    assert list(target.parent.iterdir()) == []
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM billing_exports")).scalar_one() == 0
        assert conn.execute(sa.text("SELECT COUNT(*) FROM billed_batches")).scalar_one() == 0
    monkeypatch.setattr(focusfiles, "write_csv", real)
    result = export(engine, SEP, target)
    assert not result.reissued and len(result.rows) == 2
    assert [p.name for p in target.parent.iterdir()] == ["sep.csv"]


def test_only_ended_months_and_real_months(engine: sa.Engine, tmp_path: Path) -> None:
    with pytest.raises(focus.BillingError, match="has not ended"):
        export(engine, SEP, tmp_path / "x.csv", now=at(SEP, 30, 23, 59))
    for bad in ("2026-13", "2026-00", "2026-9", "26-09", "2026/09", "", "1999-12"):
        with pytest.raises(focus.BillingError, match="YYYY-MM"):
            billing.parse_month(bad)
    assert focus.month_bounds("2026-12") == (
        datetime(2026, 12, 1, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )
    assert not (tmp_path / "x.csv").exists()
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM billing_exports")).scalar_one() == 0


def test_scheduler_entry_point_issues_last_month(engine: sa.Engine, tmp_path: Path) -> None:
    write(engine, [event(at(SEP, 4))])
    result = billing.export_closed_month(engine, at(OCT, 1, 3), tmp_path / "billing")
    assert result.month == SEP and (tmp_path / "billing" / "focus-2026-09.csv").exists()
    assert billing.last_month(datetime(2027, 1, 1, tzinfo=UTC)) == "2026-12"


# -- parquet --------------------------------------------------------------------------------------


def test_parquet_round_trip_is_exact(engine: sa.Engine, tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    write(engine, mixed_month(SEP, random.Random(5), 60))
    write(engine, [event(at(AUG, 31), prompt=123_457, cached=1, completion=7)])  # Aug is not issued: not here
    export(engine, AUG, tmp_path / "aug.csv")
    write(engine, [event(at(AUG, 31), prompt=999_999, cached=1, completion=3)])  # late: a Correction in Sep
    export(engine, SEP, tmp_path / "sep.csv")
    result = export(engine, SEP, tmp_path / "sep.parquet", "parquet")
    assert result.reissued
    table = pq.read_table(tmp_path / "sep.parquet")
    assert table.column_names == EXPECTED_COLUMNS
    schema = table.schema
    for c in MONEY:
        assert schema.field(c).type == pa.decimal128(38, 9)
    assert schema.field("PricingQuantity").type == pa.decimal128(38, 6)
    assert schema.field("ListUnitPrice").type == pa.decimal128(38, 9)
    assert schema.field("BillingPeriodStart").type == pa.timestamp("ms", tz="UTC")
    assert schema.field("x_Free").type == pa.bool_()
    back = table.to_pylist()
    _, csv_rows = read_csv(tmp_path / "sep.csv")
    assert len(back) == len(csv_rows) == len(result.rows)
    for got, want in zip(back, csv_rows, strict=True):
        for c in MONEY + ("PricingQuantity", "ConsumedQuantity", "ListUnitPrice", "ContractedUnitPrice"):
            assert isinstance(got[c], Decimal) and got[c] == Decimal(want[c]), c
        assert got["BillingPeriodStart"] == datetime(2026, 9, 1, tzinfo=UTC)
        assert got["ChargeClass"] == (want["ChargeClass"] or None)
        assert got["x_Free"] == (want["x_Free"] == "true")
        for c, v in got.items():
            assert v != "", c  # never an empty string in parquet
    assert any(r["ChargeClass"] == "Correction" for r in back) and any(r["ChargeClass"] is None for r in back)
    assert sum(r["BilledCost"] for r in back) == result.billed.to_decimal()
    export(engine, SEP, tmp_path / "sep-2.parquet", "parquet")
    assert pq.read_table(tmp_path / "sep-2.parquet").equals(table)


def test_parquet_without_pyarrow_is_one_line_and_records_nothing(
    engine: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(engine, [event(at(SEP, 4))])
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(focus.BillingError) as info:
        export(engine, SEP, tmp_path / "sep.parquet", "parquet")
    assert "pyarrow" in str(info.value) and "\n" not in str(info.value)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM billing_exports")).scalar_one() == 0
    assert not (tmp_path / "sep.parquet").exists()


# -- the command line -----------------------------------------------------------------------------


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def one_error(code: int, err: str, want: int) -> str:
    lines = err.splitlines()
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("error: "), err
    assert code == want, (code, err)
    return lines[0]


def test_cli_help_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    for args in (["export", "--help"], ["export", "billing", "--help"]):
        code, out, _ = cli(capsys, *args)
        assert code == 0 and "Example" in out and "export billing --month" in out


def test_cli_end_to_end(
    ledger_env: dict[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    eng = store.make_engine(ledger_env["LEDGER_DATABASE_URL"])
    try:
        store.ensure_schema(eng)
        write(
            eng,
            [
                event(at(SEP, 4)),
                event(at(SEP, 5), "beta", "cerebras"),
                event(at(SEP, 6), model="mystery-model"),
            ],
        )
    finally:
        eng.dispose()
    out = tmp_path / "sep.csv"
    code, stdout, err = cli(capsys, "export", "billing", "--month", SEP, "--out", str(out))
    assert code == 0, err
    assert (
        "issued 2026-09: 4 row(s), 0 correction row(s)" in err and "1 event(s) with usage but no price" in err
    )
    assert stdout == ""
    code, stdout, err = cli(capsys, "export", "billing", "--month", SEP)
    assert code == 0 and err.startswith("reissued 2026-09")
    assert stdout == out.read_text(encoding="utf-8")  # stdout and the file agree, byte for byte
    header = next(csv.reader(io.StringIO(stdout)))
    assert header == EXPECTED_COLUMNS

    for bad in ("2026-13", "2026-9", "nov", "2026-09-01"):
        code, _, err = cli(capsys, "export", "billing", "--month", bad)
        assert "--month" in one_error(code, err, 2)
    code, _, err = cli(capsys, "export", "billing")
    assert "--month" in one_error(code, err, 2)
    this_month = datetime.now(UTC).strftime("%Y-%m")
    code, _, err = cli(capsys, "export", "billing", "--month", this_month, "--out", str(tmp_path / "now.csv"))
    assert "has not ended" in one_error(code, err, 1)
    code, _, err = cli(capsys, "export", "billing", "--month", SEP, "--format", "parquet")
    assert "--out" in one_error(code, err, 2)
    code, _, err = cli(capsys, "export", "billing", "--month", SEP, "--out", str(tmp_path))
    one_error(code, err, 2)
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    code, _, err = cli(
        capsys,
        "export",
        "billing",
        "--month",
        "2026-10",
        "--format",
        "parquet",
        "--out",
        str(tmp_path / "oct.parquet"),
    )
    assert "pyarrow" in one_error(code, err, 1)
    assert not (tmp_path / "oct.parquet").exists()


def test_months_issued_out_of_order_bill_each_event_once(engine: sa.Engine, tmp_path: Path) -> None:
    write(engine, [event(at(SEP, 3), "alpha"), event(at(OCT, 3), "beta")])
    oct_ = export(engine, OCT, tmp_path / "oct.csv")  # September is still open: its usage waits for it
    assert {r["SubAccountId"] for r in oct_.rows} == {"beta"} and oct_.corrections == 0
    write(engine, [event(at(OCT, 30), "late-oct")])  # October is closed; a later month must bill this
    sep = export(engine, SEP, tmp_path / "sep.csv")
    assert {r["SubAccountId"] for r in sep.rows} == {
        "alpha"
    } and sep.corrections == 0  # never billed backwards
    with engine.connect() as conn:
        pairs = conn.execute(sa.text("SELECT month, billed_in FROM billed_batches ORDER BY 1")).all()
    assert [tuple(p) for p in pairs] == [(SEP, SEP), (OCT, OCT)]  # the late October batch is still unbilled
