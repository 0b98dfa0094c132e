"""The import parser meets arbitrary input with a one-line ImportError_ naming a line, never a crash."""

from __future__ import annotations

import json
import tempfile
import uuid
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.exports.eventfiles import COLUMNS
from ledger.exports.eventimport import ImportError_, parse_file

GOOD = {
    "event_id": str(uuid.UUID(int=1)),
    "occurred_at": "2026-11-01T00:00:00Z",
    "project": "p",
    "route": "cerebras",
    "model": "gpt-oss-120b",
    "status": "ok",
    "http_status": "200",
    "stream": "false",
    "prompt_tokens": "10",
    "cached_tokens": "0",
    "completion_tokens": "5",
    "reasoning_tokens": "0",
    "total_tokens": "15",
    "cost_usd": "",
    "free": "false",
    "priced": "false",
    "upstream_id": "",
    "tags": "{}",
}

cells = st.one_of(
    st.text(max_size=30),
    st.integers().map(str),
    st.sampled_from(["", "true", "1e999", "NaN", "-1", "{}", "[]", "\x00", "Z"]),
)


def _parse(data: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"in{suffix}"
        path.write_bytes(data)
        try:
            rows = list(parse_file(path))
        except ImportError_ as exc:
            message = str(exc)
            assert "\n" not in message and message
            return
    for row in rows:  # whatever was accepted is a well-formed event
        assert row.event.occurred_at.tzinfo is not None and row.event.project
        assert row.event.usage is None or row.event.usage.total_tokens >= 0


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(COLUMNS), cells))
def test_jsonl_rows_with_arbitrary_cells(changes: dict[str, str]) -> None:
    _parse((json.dumps({**GOOD, **changes}) + "\n").encode(), ".jsonl")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(COLUMNS), cells))
def test_csv_rows_with_arbitrary_cells(changes: dict[str, str]) -> None:
    import csv
    import io

    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(COLUMNS)
    row = {**GOOD, **changes}
    writer.writerow([row[c] for c in COLUMNS])
    _parse(buf.getvalue().encode("utf-8", "surrogatepass"), ".csv")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.sampled_from([".csv", ".jsonl", ".txt"]))
def test_arbitrary_bytes(data: bytes, suffix: str) -> None:
    _parse(data, suffix)
