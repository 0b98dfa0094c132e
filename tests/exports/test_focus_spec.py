"""The FOCUS export against the FinOps Foundation's ``focus-validator`` (installed from PyPI into a
venv of its own, once per test session) and against the FOCUS 1.2 column requirements that the
validator's newest release (1.0 rules) does not check, on SQLite and PostgreSQL.

The 1.2 requirements, from the specification's column pages: SkuId, SkuMeter, SkuPriceId and
SkuPriceDetails present; SkuPriceId stays the same over time (no effective date, no unit price in
it) with one parent SkuId; SkuPriceDetails is Key-Value Format and the same for every row of its
SkuPriceId; SkuMeter is set with SkuId and the same for each SkuId; a Usage row that is not a
correction has SkuPriceId, ListUnitPrice and ContractedUnitPrice (non-negative), and unit price x
PricingQuantity = cost; Tags hold the user's tags unaltered and the provider's keys under a prefix;
custom columns start with ``x_``."""

from __future__ import annotations

import csv
import fcntl
import json
import os
import random
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from ledger import store
from ledger.exports import billing, focus, focuscolumns
from ledger.money import usd
from ledger.pricing import Charge
from tests.exports.test_focus import AUG, OCT, SEP, add_point, at, event, mixed_month, read_csv, write
from tests.helpers import TESTS

VALIDATOR = "focus-validator==1.0.0"
# pandera 0.17 (what focus-validator 1.0.0 pulls in) imports multimethod.overload, gone in multimethod 2
VALIDATOR_PINS = ("multimethod<2",)
OVERRIDES = TESTS / "focus_validator_overrides.yaml"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cerebras-ledger-tests"
DATED = re.compile(r"\d{4}-\d{2}-\d{2}|@")
PASCAL = re.compile(r"[A-Z][A-Za-z0-9]*")


# -- the validator, in its own venv ---------------------------------------------------------------


def _pypi_problem() -> str | None:
    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
    try:
        httpx.get(f"{index}/focus-validator/", timeout=10, follow_redirects=True).raise_for_status()
        return None
    except httpx.HTTPError as exc:
        return f"PyPI not reachable at {index}, so focus-validator cannot be installed: {type(exc).__name__}"


@pytest.fixture(scope="session")
def validator() -> Iterator[Path]:
    """``focus-validator`` in a venv under ~/.cache/cerebras-ledger-tests, made once (and kept)."""
    venv = CACHE / "focus-validator-1.0.0"
    exe = venv / "bin" / "focus-validator"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "focus-validator.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another session making the same venv waits for it
        if not (venv / "ready").exists():
            problem = _pypi_problem()
            if problem:
                pytest.skip(problem)
            shutil.rmtree(venv, ignore_errors=True)
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
            pip = subprocess.run(
                [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", VALIDATOR, *VALIDATOR_PINS],
                capture_output=True,
                text=True,
                timeout=900,
            )
            assert pip.returncode == 0, pip.stderr[-3000:]
            (venv / "ready").write_text(VALIDATOR + "\n")
    yield exe


def validate(exe: Path, data: Path, out: Path, overrides: Path | None) -> dict[str, str]:
    """Run the validator on a CSV; each rule's outcome: ``passed``, ``failed`` or ``skipped``."""
    package = next((exe.parent.parent / "lib").glob("python3*/site-packages"))
    args = [
        str(exe),
        "--data-file",
        str(data),
        "--validate-version",
        "1.0",
        "--output-type",
        "unittest",
        "--output-destination",
        str(out),
    ]
    if overrides is not None:
        args += ["--override-file", str(overrides)]
    # it reads its currency-code list by a path relative to its own package folder
    run = subprocess.run(args, cwd=package, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and out.exists(), run.stderr[-3000:]
    outcome: dict[str, str] = {}
    for case in ET.parse(out).getroot().iter("testcase"):
        rule = case.get("name", "").split(" :: ")[0]
        outcome[rule] = (
            "failed"
            if case.find("failure") is not None or case.find("error") is not None
            else "skipped"
            if case.find("skipped") is not None
            else "passed"
        )
    return outcome


def overridden() -> set[str]:
    return {
        line.strip()[2:]
        for line in OVERRIDES.read_text(encoding="utf-8").splitlines()
        if line.startswith("  - ")
    }


def rich_export(engine: sa.Engine, tmp_path: Path) -> Path:
    """September with every kind of row: paid and free, both routes, a mid-month price change,
    imported costs (one negative), late August usage as corrections, several tag sets."""
    add_point(engine, "lava", "gpt-oss-120b", "0.50", "1.00", at(SEP, 15, 0))
    write(engine, mixed_month(SEP, random.Random(11), 200))
    write(engine, [event(at(AUG, 20))])
    billing.export_billing(engine, AUG, tmp_path / "aug.csv")
    write(engine, [event(at(AUG, 30), prompt=5000, cached=1000)])  # late: Correction rows in September
    imported = [
        event(at(SEP, 3), "beta", "lava", "some-import", 10, 0, 5),
        event(at(SEP, 4), "beta", "cerebras", "other-import", 7, 0, 0),
    ]
    write(
        engine,
        imported,
        [Charge(None, usd("0.000123456"), False, True), Charge(None, usd("-0.25"), False, True)],
    )
    out = tmp_path / "sep.csv"
    billing.export_billing(engine, SEP, out)
    return out


def test_the_export_passes_focus_validator(engine: sa.Engine, tmp_path: Path, validator: Path) -> None:
    data = rich_export(engine, tmp_path)
    _, rows = read_csv(data)
    assert {r["ChargeClass"] for r in rows} == {"", "Correction"} and {r["x_TokenType"] for r in rows} >= {
        "total"
    }
    with_overrides = validate(validator, data, tmp_path / "with.xml", OVERRIDES)
    assert len(with_overrides) > 100
    assert {r for r, o in with_overrides.items() if o == "failed"} == set()
    assert {r for r, o in with_overrides.items() if o == "skipped"} == overridden()
    # the overrides are exactly the rules that fail without them: none hides a real failure
    bare = validate(validator, data, tmp_path / "bare.xml", None)
    assert {r for r, o in bare.items() if o == "failed"} == overridden()


def test_the_validator_catches_a_broken_file(engine: sa.Engine, tmp_path: Path, validator: Path) -> None:
    data = rich_export(engine, tmp_path)
    header, rows = read_csv(data)
    rows[0]["BillingCurrency"], rows[1]["ChargeFrequency"], rows[2]["BilledCost"] = "DOLLARS", "Sometimes", ""
    broken = tmp_path / "broken.csv"
    with broken.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, header, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    failed = {
        r for r, o in validate(validator, broken, tmp_path / "b.xml", OVERRIDES).items() if o == "failed"
    }
    assert {"BillingCurrency_IsCurrencyCode", "ChargeFrequency_Enum", "BilledCost_NotNull"} <= failed


# -- FOCUS 1.2 requirements the validator does not check ------------------------------------------


def test_sku_columns(engine: sa.Engine, tmp_path: Path) -> None:
    data = rich_export(engine, tmp_path)
    header, rows = read_csv(data)
    assert {"SkuId", "SkuMeter", "SkuPriceId", "SkuPriceDetails"} <= set(header)
    parents: dict[str, set[str]] = defaultdict(set)
    details: dict[str, set[str]] = defaultdict(set)
    meters: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        assert r["SkuId"] and r["SkuMeter"] and r["SkuPriceId"] and r["SkuPriceDetails"], r
        assert not DATED.search(r["SkuPriceId"]), r["SkuPriceId"]  # no effective date in it
        parents[r["SkuPriceId"]].add(r["SkuId"])
        details[r["SkuPriceId"]].add(r["SkuPriceDetails"])
        meters[r["SkuId"]].add(r["SkuMeter"])
        kv = json.loads(r["SkuPriceDetails"])
        assert isinstance(kv, dict) and kv and all(PASCAL.fullmatch(k) for k in kv)
        assert not any(isinstance(v, (int, float)) for v in kv.values())
    assert all(len(p) == 1 for p in parents.values())  # one parent SkuId
    assert all(len(d) == 1 for d in details.values())  # the same details for every row of a SkuPriceId
    assert all(len(m) == 1 for m in meters.values())
    assert {r["SkuMeter"] for r in rows} == {"Input Tokens", "Cached Input Tokens", "Output Tokens", "Tokens"}


def test_sku_price_id_stays_the_same_over_time(engine: sa.Engine, tmp_path: Path) -> None:
    # three prices of one model over three months: one SkuPriceId, three unit prices
    write(engine, [event(at(AUG, 5), prompt=1_000_000)])
    add_point(engine, "lava", "gpt-oss-120b", "0.50", "1.00", at(SEP, 1, 0))
    write(engine, [event(at(SEP, 5), prompt=1_000_000)])
    add_point(engine, "lava", "gpt-oss-120b", "0.70", "1.20", at(OCT, 1, 0))
    write(engine, [event(at(OCT, 5), prompt=1_000_000)])
    seen: dict[str, set[str]] = defaultdict(set)
    prices: set[str] = set()
    for month in (AUG, SEP, OCT):
        for r in billing.export_billing(engine, month, None).rows:
            if r["x_TokenType"] == "input":
                seen[r["SkuPriceId"]].add(r["SkuPriceDetails"])
                prices.add(str(r["ContractedUnitPrice"]))
    assert list(seen) == ["lava/gpt-oss-120b/input"] and len(seen["lava/gpt-oss-120b/input"]) == 1
    assert prices == {"0.350", "0.500", "0.700"}


def test_every_usage_row_is_priced_and_its_arithmetic_is_exact(engine: sa.Engine, tmp_path: Path) -> None:
    data = rich_export(engine, tmp_path)
    _, rows = read_csv(data)
    imported = [r for r in rows if r["x_TokenType"] == "total"]
    assert len(imported) == 2
    for r in rows:
        assert r["ChargeCategory"] == "Usage"
        for c in (
            "SkuPriceId",
            "ListUnitPrice",
            "ContractedUnitPrice",
            "PricingQuantity",
            "ConsumedQuantity",
        ):
            assert r[c] != "", (c, r)
        for c in ("ListUnitPrice", "ContractedUnitPrice"):
            assert Decimal(r[c]) >= 0 and "E" not in r[c].upper()
        qty = Decimal(r["PricingQuantity"])
        assert Decimal(r["ListUnitPrice"]) * qty == Decimal(r["ListCost"])
        assert (
            Decimal(r["ContractedUnitPrice"]) * qty
            == Decimal(r["ContractedCost"])
            == Decimal(r["BilledCost"])
        )
    negative = next(r for r in imported if r["x_Model"] == "other-import")
    assert (negative["BilledCost"], negative["PricingQuantity"], negative["ContractedUnitPrice"]) == (
        "-0.250000000",
        "-1.000000",
        "0.250000000",
    )
    assert negative["ConsumedQuantity"] == "7.000000" and negative["ConsumedUnit"] == "Tokens"


def test_tags_hold_the_users_tags_and_the_ledgers_under_its_prefix(engine: sa.Engine, tmp_path: Path) -> None:
    base = event(at(SEP, 3))
    calls = [
        base.__class__(**{**_fields(base), "event_id": _id(), "tags": (("feature", "chat"), ("team", "ml"))}),
        base.__class__(**{**_fields(base), "event_id": _id(), "tags": (("feature", "search"),)}),
        base.__class__(**{**_fields(base), "event_id": _id(), "tags": ()}),
        base.__class__(
            **{
                **_fields(base),
                "event_id": _id(),
                "tags": (("ledger/route", "spoofed"), ("Ünï code", "=1+1")),
            }
        ),
    ]
    write(engine, calls)
    result = billing.export_billing(engine, SEP, tmp_path / "sep.csv")
    _, rows = read_csv(tmp_path / "sep.csv")
    outputs = [json.loads(r["Tags"]) for r in rows if r["x_TokenType"] == "output"]
    assert len(outputs) == 4  # one row per tag set
    ledger = {
        "ledger/book": "lava",
        "ledger/free": "false",
        "ledger/route": "lava",
        "ledger/price_id": "lava/gpt-oss-120b@2024-01-01T00:00:00Z",
    }
    assert sorted(outputs, key=lambda t: json.dumps(t, sort_keys=True)) == sorted(
        [
            {"feature": "chat", "team": "ml", **ledger},
            {"feature": "search", **ledger},
            ledger,
            {"Ünï code": "=1+1", **ledger},  # a user key under the ledger's prefix is reserved: left out
        ],
        key=lambda t: json.dumps(t, sort_keys=True),
    )
    assert all(isinstance(v, str) for t in outputs for v in t.values())
    assert len(result.rows) == 8 and all(r["Tags"] for r in result.rows)


def test_version_and_custom_columns(engine: sa.Engine, tmp_path: Path) -> None:
    write(engine, [event(at(SEP, 3))])
    header, rows = read_csv(_export(engine, tmp_path))
    custom = [c for c in header if c not in focuscolumns.FOCUS_COLUMNS]
    assert custom and all(c.startswith("x_") for c in custom)
    assert {r["x_FocusVersion"] for r in rows} == {"1.2"}
    pq = pytest.importorskip("pyarrow.parquet")
    billing.export_billing(engine, SEP, tmp_path / "sep.parquet", "parquet")
    table = pq.read_table(tmp_path / "sep.parquet")
    assert set(table.column("x_FocusVersion").to_pylist()) == {"1.2"}
    assert table.schema.metadata[b"FocusVersion"] == b"1.2"


def test_free_models_all_follow_one_list_cost_rule(engine: sa.Engine, tmp_path: Path) -> None:
    # llama3.1-8b is free through Lava and has a Cerebras list price; deepseek is free and has none
    add_point(engine, "cerebras", "llama3.1-8b", "0.20", "0.20", at(SEP, 10, 0))  # its list price moves
    write(
        engine,
        [
            event(at(SEP, 3), model="llama3.1-8b", prompt=2_000_000, completion=1_000_000),
            event(at(SEP, 20), model="llama3.1-8b", prompt=1_000_000, completion=1_000_000),
            event(at(SEP, 3), model="deepseek-r1-distill-llama-70b", prompt=2_000_000, completion=1),
            event(at(SEP, 4), route="cerebras", model="llama3.1-8b"),
        ],
    )
    _, rows = read_csv(_export(engine, tmp_path))
    free = [r for r in rows if r["x_Free"] == "true"]
    assert {r["x_Model"] for r in free} == {"llama3.1-8b", "deepseek-r1-distill-llama-70b"}
    for r in free:
        assert Decimal(r["ListUnitPrice"]) == Decimal(r["ContractedUnitPrice"]) == 0
        assert Decimal(r["ListCost"]) == Decimal(r["BilledCost"]) == 0
    lava_llama = [r["x_TokenType"] for r in free if r["x_Model"] == "llama3.1-8b"]
    assert sorted(lava_llama) == ["input", "output"]  # one row each: a list price change splits nothing
    paid = [r for r in rows if r["x_Free"] == "false"]
    assert paid and all(Decimal(r["ListCost"]) > 0 for r in paid)


def test_unpriced_usage_is_not_billed_and_is_counted(engine: sa.Engine, tmp_path: Path) -> None:
    write(
        engine,
        [
            event(at(SEP, 3)),
            event(at(SEP, 4), model="mystery-model"),
            event(at(SEP, 5), model="mystery-model"),
            event(at(SEP, 6), model="mystery-model", status="error"),
        ],
    )
    result = billing.export_billing(engine, SEP, tmp_path / "sep.csv")
    assert result.unpriced == 2  # usage events with no price; the failed call had no usage
    assert not any(r["x_Model"] == "mystery-model" for r in result.rows)
    # once priced and re-priced, it is billed by the next export as corrections (the README's rule)
    add_point(engine, "lava", "mystery-model", "1.00", "1.00", at(SEP, 1, 0))
    from ledger.store import reprice as repricing

    with store.write_transaction(engine) as conn:
        repricing.reprice(conn, *focus.month_bounds(SEP))
    oct_ = billing.export_billing(engine, OCT, None)
    assert {r["x_Model"] for r in oct_.rows} == {"mystery-model"} and oct_.corrections == len(oct_.rows)


# -- helpers --------------------------------------------------------------------------------------


def _export(engine: sa.Engine, tmp_path: Path) -> Path:
    out = tmp_path / "sep.csv"
    billing.export_billing(engine, SEP, out)
    return out


def _fields(e: Any) -> dict[str, Any]:
    import dataclasses

    return {f.name: getattr(e, f.name) for f in dataclasses.fields(e)}


def _id() -> str:
    from ledger.events import new_event_id

    return new_event_id()
