"""Imports keep exactly what they are given (issue 11, section 3).

Through the real command line (``ledger.cli.main``) on SQLite files and PostgreSQL schemas:
JSON money is read as a decimal, never through float; a free row with a cost is refused;
integers are ASCII digits; deep nesting and out-of-range timestamps are line-numbered errors;
a UTF-8 BOM is accepted; whatever ``events export`` writes, ``events import`` takes back (a
Hypothesis property: export, import elsewhere, export again gives the same bytes); and every
timestamp import accepts, ``events export``, ``summary``, ``rollup``, ``report`` and ``export
billing`` handle.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger import store
from ledger.cli.main import main
from ledger.events import MAX_TOKENS, CallEvent, Usage
from tests.helpers import fetch_events, fresh_pg_schema, make_event, pg_problem, write_events

HEADER = (
    "event_id,occurred_at,project,route,model,status,http_status,stream,prompt_tokens,cached_tokens,"
    "completion_tokens,reasoning_tokens,total_tokens,cost_usd,free,priced,upstream_id,tags"
)
KEYS = HEADER.split(",")


def _row(**over: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "occurred_at": "2026-11-05T12:00:00Z",
        "project": "alpha",
        "route": "cerebras",
        "model": "gpt-oss-120b",
        "status": "ok",
        "http_status": 200,
        "stream": False,
        "prompt_tokens": 10,
        "cached_tokens": 0,
        "completion_tokens": 5,
        "reasoning_tokens": 0,
        "total_tokens": 15,
        "cost_usd": None,
        "free": False,
        "priced": True,
        "upstream_id": None,
        "tags": {},
    }
    row.update(over)
    return row


def _jsonl(path: Path, *lines: str) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _csv_cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict):
        return '"' + json.dumps(v).replace('"', '""') + '"'
    return str(v)


def _csv(path: Path, *rows: dict[str, Any], bom: bool = False) -> Path:
    text = HEADER + "\n" + "".join(",".join(_csv_cell(r[k]) for k in KEYS) + "\n" for r in rows)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


def run(capsys: pytest.CaptureFixture[str], url: str, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["--database-url", url, *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def refused(capsys: pytest.CaptureFixture[str], url: str, path: Path, line: int, *words: str) -> str:
    """Import ``path``: one ``error:`` line naming ``line``, exit 1, nothing written."""
    code, out, err = run(capsys, url, "events", "import", str(path))
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: "), (code, err)
    assert f"line {line}:" in lines[0], lines[0]
    assert "Traceback" not in err and "Error:" not in err.replace("error:", "")
    for w in words:
        assert w in lines[0], lines[0]
    assert count(url) == 0
    return lines[0]


def count(url: str) -> int:
    engine = store.make_engine(url)
    try:
        store.ensure_schema(engine)
        with engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT COUNT(*) FROM events")).scalar_one())
    finally:
        engine.dispose()


def imported(capsys: pytest.CaptureFixture[str], url: str, path: Path) -> list[dict[str, Any]]:
    code, out, err = run(capsys, url, "events", "import", str(path))
    assert code == 0, err
    return fetch_events(url)


# -- money ------------------------------------------------------------------------------------


def test_json_money_is_read_as_a_decimal(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    big = _row(cost_usd=None, tags={"ratio": None})
    line = (
        json.dumps(big)
        .replace('"cost_usd": null', '"cost_usd": 99999999.123456789')
        .replace('"ratio": null', '"ratio": 1.10')
    )
    rows = imported(capsys, db_url, _jsonl(tmp_path / "a.jsonl", line))
    assert rows[0]["cost_nanos"] == 99_999_999_123_456_789
    assert json.loads(rows[0]["tags"]) == {"ratio": "1.10"}  # the number as written, not a float's digits
    code, out, _ = run(
        capsys,
        db_url,
        "events",
        "export",
        "--since",
        "2026-11-01",
        "--until",
        "2026-12-01",
        "--format",
        "jsonl",
    )
    assert code == 0 and json.loads(out)["cost_usd"] == "99999999.123456789"


def test_json_money_too_fine_is_refused_not_rounded(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = json.dumps(_row()).replace('"cost_usd": null', '"cost_usd": 0.0000000001')
    refused(capsys, db_url, _jsonl(tmp_path / "a.jsonl", line), 1, "nano-dollar")


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_free_row_with_a_cost_is_refused(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    good, bad = _row(cost_usd="0", free=True), _row(cost_usd="0.25", free=True)
    path = (
        _csv(tmp_path / "a.csv", good, bad)
        if fmt == "csv"
        else _jsonl(tmp_path / "a.jsonl", json.dumps(good), json.dumps(bad))
    )
    refused(capsys, db_url, path, 3 if fmt == "csv" else 2, "free")
    path = _csv(tmp_path / "b.csv", good) if fmt == "csv" else _jsonl(tmp_path / "b.jsonl", json.dumps(good))
    assert imported(capsys, db_url, path)[0]["cost_nanos"] == 0  # free at zero is fine


# -- integers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "column,value",
    [
        ("prompt_tokens", "1_0"),
        ("prompt_tokens", "\u0661\u0660"),
        ("prompt_tokens", "\uff11\uff10"),
        ("http_status", "2_00"),
        ("http_status", "\u0662\u0660\u0660"),
        ("completion_tokens", "+5"),
        ("cost_usd", "1_0"),
        ("cost_usd", "\u0661.\u0665"),
    ],
)
def test_integers_and_amounts_are_ascii_digits(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], column: str, value: str
) -> None:
    row = _row(**{column: value})
    refused(capsys, db_url, _csv(tmp_path / "a.csv", _row(), row), 3, column)


@pytest.mark.parametrize(
    "value",
    [
        "{\u0660\u0661a23f1c-085b-7039-a499-c5fe8adce5a1}",
        "\u0660" * 8 + "-085b-7039-a499-c5fe8adce5a1",
        "01a23f1c085b7039a499c5fe8adce5a1",
        "urn:uuid:01a23f1c-085b-7039-a499-c5fe8adce5a1",
    ],
)
def test_event_ids_are_ascii_uuids(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    refused(capsys, db_url, _csv(tmp_path / "a.csv", _row(), _row(event_id=value)), 3, "event_id")


def test_json_tag_values_keep_their_json_spelling(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = json.dumps(_row(tags={"on": True, "n": 7, "s": "x"}))
    assert json.loads(imported(capsys, db_url, _jsonl(tmp_path / "a.jsonl", line))[0]["tags"]) == {
        "on": "true",
        "n": "7",
        "s": "x",
    }


@pytest.mark.parametrize("value", ["10.0", "1e1", "true"])
def test_json_token_counts_are_whole_json_integers(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    line = json.dumps(_row()).replace('"prompt_tokens": 10', f'"prompt_tokens": {value}')
    refused(capsys, db_url, _jsonl(tmp_path / "a.jsonl", line), 1, "prompt_tokens")


# -- structure --------------------------------------------------------------------------------


def test_deep_nesting_is_a_line_numbered_error(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    deep = "[" * 200_000 + "]" * 200_000
    line = json.dumps(_row()).replace('"tags": {}', f'"tags": {{"a": {deep}}}')
    refused(capsys, db_url, _jsonl(tmp_path / "a.jsonl", json.dumps(_row()), line), 2)
    deep = "[" * 60_000 + "]" * 60_000  # within the csv module's field limit
    refused(capsys, db_url, _csv(tmp_path / "a.csv", _row(), _row(tags=deep)), 3, "tags")
    huge = "[" * 70_000 + "]" * 70_000  # beyond it
    refused(capsys, db_url, _csv(tmp_path / "a.csv", _row(), _row(tags=huge)), 3, "field")


def test_duplicate_json_keys_are_refused(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = json.dumps(_row())[:-1] + ', "cost_usd": "5"}'
    refused(capsys, db_url, _jsonl(tmp_path / "a.jsonl", line), 1, "cost_usd")


@pytest.mark.parametrize(
    "stamp",
    [
        "0001-01-01T00:00:00+01:00",
        "9999-12-31T23:59:59-01:00",
        "0001-01-01T00:00:00Z",
        "9999-12-31T23:59:59.999999Z",
        "1999-12-31T23:59:59.999999Z",
        "9998-12-01T00:00:00Z",
        "9998-11-30T23:00:00-01:00",
        "2000-01-01T04:00:00+05:00",
        "NaN",
        "2026-11-05T12:00:00",
        "2026-13-01T00:00Z",
        "1970-01-01T00:00:00Z",
    ],
)
@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_out_of_range_timestamps_are_line_numbered_errors(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], stamp: str, fmt: str
) -> None:
    bad = _row(occurred_at=stamp)
    path = (
        _csv(tmp_path / "a.csv", _row(), bad)
        if fmt == "csv"
        else _jsonl(tmp_path / "a.jsonl", json.dumps(_row()), json.dumps(bad))
    )
    refused(capsys, db_url, path, 3 if fmt == "csv" else 2, "occurred_at")


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_utf8_bom_is_accepted(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    row = _row(project="caf\u00e9")
    if fmt == "csv":
        path = _csv(tmp_path / "a.csv", row, bom=True)
    else:
        path = tmp_path / "a.jsonl"
        path.write_bytes(b"\xef\xbb\xbf" + json.dumps(row).encode("utf-8") + b"\n")
    assert [r["project"] for r in imported(capsys, db_url, path)] == ["caf\u00e9"]


def test_detected_format_with_a_bom(db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "events.txt"  # no telling suffix: the first byte after the BOM decides
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(_row()).encode("utf-8") + b"\n")
    assert len(imported(capsys, db_url, path)) == 1


# -- round trip -------------------------------------------------------------------------------


def _record(url: str, events: list[CallEvent]) -> None:
    write_events(url, events, "test")


def _modelless(when: datetime) -> CallEvent:
    """What the wrapper records for a request that named no model: a 400, no usage."""
    return make_event(
        occurred_at=when,
        requested_model=None,
        status="error",
        http_status=400,
        error_type="invalid_request_error",
        error_code="wrong_api_format",
        usage=None,
        latency_us=900,
    )


@pytest.fixture
def second_url(db_url: str, tmp_path: Path) -> Iterator[str]:
    """Another fresh ledger on the same kind of database as ``db_url``."""
    if db_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'second.db'}"
        return
    assert pg_problem() is None
    with fresh_pg_schema() as url:
        yield url


WINDOW = ("--since", "1999-01-01", "--until", "9999-01-01")


def _export(capsys: pytest.CaptureFixture[str], url: str, fmt: str) -> str:
    code, out, err = run(capsys, url, "events", "export", *WINDOW, "--format", fmt)
    assert code == 0, err
    return out


def _round_trip(capsys: pytest.CaptureFixture[str], a: str, b: str, tmp_path: Path, fmt: str) -> None:
    first = _export(capsys, a, fmt)
    path = tmp_path / f"out.{fmt}"
    path.write_text(first, encoding="utf-8", newline="")
    code, _, err = run(capsys, b, "events", "import", str(path))
    assert code == 0, err
    assert _export(capsys, b, fmt) == first
    other = "csv" if fmt == "jsonl" else "jsonl"
    assert _export(capsys, b, other) == _export(capsys, a, other)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_an_event_without_a_model_round_trips(
    db_url: str, second_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    _record(db_url, [_modelless(datetime(2026, 11, 5, 12, tzinfo=UTC))])
    _round_trip(capsys, db_url, second_url, tmp_path, fmt)
    assert fetch_events(second_url)[0]["requested_model"] is None


def test_a_free_model_repriced_to_paid_round_trips(
    db_url: str, second_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Export gives the standing free flag (a restatement's), so its own file imports."""
    when = datetime(2026, 11, 5, 12, tzinfo=UTC)
    free = make_event(
        occurred_at=when,
        route="lava",
        requested_model="llama3.1-8b",
        served_model="llama3.1-8b",
        usage=Usage(100, 0, 50, 0, 150),
        latency_us=1,
    )
    _record(db_url, [free])
    code, _, err = run(
        capsys,
        db_url,
        "prices",
        "add",
        "--book",
        "lava",
        "--model",
        "llama3.1-8b",
        "--input",
        "0.05",
        "--output",
        "0.05",
        "--from",
        "2026-11-01T00:00:00Z",
    )
    assert code == 0, err
    assert run(capsys, db_url, "prices", "reprice", "--since", "2026-11-01", "--until", "2026-12-01")[0] == 0
    _round_trip(capsys, db_url, second_url, tmp_path, "csv")
    row = json.loads(_export(capsys, second_url, "jsonl"))
    assert (row["free"], row["cost_usd"]) == (False, "0.000007500")


PROJECTS = st.sampled_from(["alpha", "beta", "caf\u00e9", "\u30c6\u30b9\u30c8", "a b", "x" * 200])
SURROGATES: tuple[Literal["Cs"]] = ("Cs",)  # typed: mypy does not infer the literal through st.text
TEXT = st.text(st.characters(blacklist_categories=SURROGATES), max_size=40)
MODELS = st.one_of(
    st.none(),
    st.sampled_from(
        ["gpt-oss-120b", "llama3.1-8b", "qwen-3-235b-instruct", "mystery-model", "=cmd()", 'a,b"c\nd']
    ),
    TEXT,
)
WHEN = st.datetimes(
    min_value=datetime(2000, 1, 1),
    max_value=datetime(9998, 11, 30, 23, 59, 59, 999999),
    timezones=st.just(UTC),
)


@st.composite
def events(draw: st.DrawFn) -> CallEvent:
    status = draw(st.sampled_from(["ok", "error", "incomplete"]))
    usage = None
    if status == "ok" or draw(st.booleans()):
        p, c = (
            draw(st.integers(0, MAX_TOKENS // 2)),
            draw(st.integers(0, MAX_TOKENS // 2)),
        )  # as the wire takes
        usage = Usage(p, draw(st.integers(0, p)), c, draw(st.integers(0, c)), p + c)
    route = draw(st.sampled_from(["cerebras", "lava"]))
    model = draw(MODELS)
    return make_event(
        occurred_at=draw(WHEN),
        project=draw(PROJECTS),
        route=route,
        requested_model=model,
        served_model=model if draw(st.booleans()) else None,
        status=status,
        http_status=draw(st.one_of(st.none(), st.integers(0, 999))),
        stream=draw(st.booleans()),
        usage=usage,
        latency_us=None,
        upstream_id=draw(st.one_of(st.none(), TEXT)),
        tags=tuple(sorted(draw(st.dictionaries(TEXT, TEXT, max_size=3)).items())),
    )


def test_export_import_export_is_identity(
    db_url: str, second_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Events the ledger recorded (book = route: the one thing a file cannot say otherwise) come
    back byte-identical through either format. Both ledgers grow with every example; imports
    skip what is already there."""

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(st.lists(events(), min_size=1, max_size=4), st.sampled_from(["csv", "jsonl"]))
    def check(batch: list[CallEvent], fmt: str) -> None:
        _record(db_url, batch)
        _round_trip(capsys, db_url, second_url, tmp_path, fmt)

    check()


# -- every accepted timestamp can be reported -------------------------------------------------


EDGES = [
    "2000-01-01T00:00:00Z",
    "2000-01-01T05:30:00+05:30",
    "9998-11-30T23:59:59.999999Z",
    "9998-11-30T13:59:59+14:00",
    "9998-11-30T23:59:59.999999-00:00",
]


def test_edge_timestamps_import_accepts_are_reported(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [
        _row(occurred_at=s, model="gpt-oss-120b" if i % 2 else "llama3.1-8b", route="lava")
        for i, s in enumerate(EDGES)
    ]
    assert len(imported(capsys, db_url, _csv(tmp_path / "a.csv", *rows))) == len(EDGES)
    must = [
        ["events", "export", *WINDOW],
        ["events", "export", *WINDOW, "--format", "jsonl"],
        ["summary"],
        ["summary", "--format", "json"],
        ["rollup"],
        ["budget", "set", "alpha", "--monthly", "1", "--timezone", "Pacific/Apia"],
        *[
            ["report", "--period", p, "--tz", tz, "--format", f, "--out", str(tmp_path / "r")]
            for p in (
                "1999-12",
                "2000-01",
                "1999-W52",
                "2000-W01",
                "1999-12-31",
                "2000-01-01",
                "9998-11",
                "9998-12",
                "9998-W48",
                "9998-W49",
                "9998-11-30",
                "9998-12-01",
            )
            for tz in ("UTC", "Pacific/Apia", "Pacific/Pago_Pago", "Asia/Kathmandu")
            for f in ("json", "html")
        ],
        ["export", "billing", "--month", "2000-01", "--out", str(tmp_path / "b.csv")],
    ]
    may_refuse = [
        ["verify"],
        ["alerts", "check"],
        ["export", "billing", "--month", "9998-11", "--out", str(tmp_path / "c.csv")],
    ]
    for args in must + may_refuse:
        code, out, err = run(capsys, db_url, *args)
        assert "Traceback" not in err, (args, err)
        if args in must:
            assert code == 0, (args, err)
        elif code:
            assert code == 1 and (not err or (err.startswith("error: ") and len(err.splitlines()) == 1)), (
                args,
                err,
            )
    _, out, _ = run(capsys, db_url, "events", "export", *WINDOW)
    stamps = [line.split(",")[1] for line in out.splitlines()[1:]]
    assert (
        stamps
        == ["2000-01-01T00:00:00Z"] * 2 + ["9998-11-29T23:59:59Z"] + ["9998-11-30T23:59:59.999999Z"] * 2
    )
