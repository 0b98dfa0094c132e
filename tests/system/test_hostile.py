"""Hostile project names and tags, from the call to every file the ledger writes.

Project names and tags are untrusted: path separators, ``..``, NUL, SQL metacharacters, 10,000
characters, RTL overrides, zero-width and combining characters, emoji, lone surrogates, CSV
formula injection, newlines, quotes. The promises tested here:

* :func:`ledger.config.check_project` refuses what it must with one line, at the call site (a
  ``ConfigError`` before anything is sent) or on the command line (one ``error:`` line, exit 1
  or 2), and accepts the rest unchanged.
* Through the SDK headers (``x-ledger-project`` / ``x-ledger-tags``) a refused name never breaks
  the call and never leaves the process; the call is still recorded, under the client's own
  project (or ``(unattributed)``), with a note saying the header was refused.
  HTTP header values are ASCII, so a non-ASCII project is given to ``instrument(project=...)``.
* An accepted name travels byte-exact through real calls (wrapper and SDK) → spool → database →
  ``rollup`` → ``report`` (CSV, JSON, HTML) → ``export billing`` (FOCUS) → ``events export`` /
  ``events import`` (byte-identical files after the round trip) → ``summary`` → budgets and
  signed webhook alerts (the HMAC checked independently; the signing secret in no log record,
  DEBUG included); it is never run as SQL and never leads a file outside its folder.
* CSV files meant for spreadsheets (reports, billing) never start a cell with a formula
  character; the machine format (``events export``) keeps every value exact.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import html
import io
import json
import logging
import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import openai
import pandas as pd
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.types.chat import ChatCompletionMessageParam

import ledger
from ledger import calendar, config, journal, store
from ledger.budgets import budgets
from ledger.call import attempt
from ledger.cli.main import main
from ledger.config import ConfigError, check_project, spreadsheet_cell
from ledger.events import Usage
from ledger.exports import eventfiles as eventio
from ledger.exports import focuscolumns, focusfiles
from ledger.money import Money
from ledger.pricing import Charge
from ledger.reports import build as reports
from ledger.reports import files as report_files
from ledger.reports import formats as report_formats
from ledger.reports import html as report_html
from ledger.testing import StandIn, StandInHandler
from tests.budgets.test_alerts import Receiver
from tests.helpers import fetch_events, make_event

MSG: list[ChatCompletionMessageParam] = [{"role": "user", "content": "count to three please"}]
API_KEY = "csk-hostile-test-key"
WEBHOOK_SECRET = "whsec-hostile-HMAC-7c1d"
SDK_DEFAULT = "sdk-default"

# Accepted: check_project lets them through, and they must come out byte-exact everywhere.
ACCEPTED: list[str] = [
    "../../escape",
    "..",
    ".",
    "/etc/passwd",
    "a/b\\c",
    "C:\\Windows\\System32\\cmd.exe",
    "~root",
    "'; DROP TABLE events; --",
    "Robert'); DROP TABLE budgets;--",
    "%_% ' OR '1'='1",
    "quote \"double\" 'single' `back`",
    "comma, semicolon; pipe|",
    "cmd|' /C calc'!A0",  # the classic payload without its leading '=': inert text
    "'=cmd|' /C calc'!A0",  # starts with an apostrophe: a spreadsheet shows it as text
    "e\u0301\u0301\u0301 Z\u0334\u0321a\u0338l\u0337g\u0336o\u0335",  # combining marks
    "emoji \U0001f680\U0001f525 \U0001f44d\U0001f3fd \U0001f1fa\U0001f1e6",  # incl. skin tone, flag
    "проект-ü 中文 עברית العربية",  # right-to-left scripts (no override characters)
    "<script>alert(1)</script>&amp;",
    "{{7*7}} ${jndi:ldap://x/a}",
    "NaN",
    "null",
    " padded ",
    "CON",
    "x" * 200,
]
# Refused, with the word the one-line message must contain.
REFUSED: dict[str, str] = {
    "": "required",
    "   ": "required",
    "nul\x00inside": "non-printable",
    "x" * 201: "longer than 200",
    "y" * 10_000: "longer than 200",
    "line\nbreak": "non-printable",
    "cr\rreturn": "non-printable",
    "tab\there": "non-printable",
    "\u202eevil-RTL-override": "non-printable",
    "zero\u200bwidth": "non-printable",
    "bom\ufeff": "non-printable",
    "coder \U0001f469\u200d\U0001f4bb": "non-printable",  # emoji joined by a zero-width joiner
    "lone \ud800 surrogate": "non-printable",
    "\x1b[31mred": "non-printable",
    "no\u00a0break": "non-printable",
    "line\u2028separator": "non-printable",
    "=cmd|' /C calc'!A0": "may not begin",
    "+1": "may not begin",
    "-rf": "may not begin",
    "@SUM(A1:A9)": "may not begin",
}
# Tags: free-form; stored as documented (NUL -> U+FFFD, lone surrogate -> '?', key cut at 200,
# value cut at 1000 in the event; key cut at 100, value at 200 in the tag rollups and reports).
TAGS: dict[str, str] = {
    "path": "../../x",
    "sql": "'); DROP TABLE event_tags;--",
    "formula": '=HYPERLINK("http://evil.example","x")',
    "newline": 'a\nb\r\nc, "quoted"',
    "nul": "a\x00b",
    "rtl": "\u202eabc",
    "long": "v" * 10_000,
    "k" * 300: "long key",
    "surrogate": "x\ud800y",
    "emoji": "\U0001f680",
}
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
NUMBER = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
REFUSED_HEADER_NAMES = [n for n in REFUSED if n.isascii() and n.strip() and "\n" not in n and "\r" not in n]


def _stored(text: str) -> str:
    """What the database keeps of a text: NUL as U+FFFD, a lone surrogate as '?'."""
    text = text.replace("\x00", "\ufffd")
    return "".join("?" if 0xD800 <= ord(c) <= 0xDFFF else c for c in text)


def _stored_tags(limit_key: int, limit_value: int) -> dict[str, str]:
    return {_stored(k)[:limit_key]: _stored(v)[:limit_value] for k, v in TAGS.items()}


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert text and "\n" not in text and "\r" not in text and len(text) < 200, text
    return text


# -- check_project, on its own --------------------------------------------------------------------


def test_check_project_accepts_and_refuses_in_one_line() -> None:
    for name in ACCEPTED:
        assert check_project(name) is name
    for name, word in REFUSED.items():
        with pytest.raises(ConfigError) as info:
            check_project(name)
        message = _one_line(info.value)
        assert word in message, (name[:30], message)
        # the message never echoes the name (it may hold control characters or a secret)
        assert name.strip() == "" or name[:20] not in message
    for bad in (None, 42, b"bytes", ["list"]):
        with pytest.raises(ConfigError):
            check_project(bad)


# -- hypothesis: any text through check_project, report paths and every CSV writer -------------------

_FRAGMENTS = st.sampled_from(
    [
        "..",
        "/",
        "\\",
        "\x00",
        "\n",
        "\r\n",
        "'",
        '"',
        ",",
        ";",
        "--",
        "=",
        "+",
        "-",
        "@",
        "\t",
        "\u202e",
        "\u200b",
        "\u0301",
        "\U0001f680",
        "\ud800",
        "CON",
        "NaN",
        " ",
        "%",
        "\ufeff",
        "\u05d0",
        "x" * 150,
    ]
)
_NAMES = st.one_of(
    st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=60),  # surrogates too
    st.text(alphabet=st.characters(categories=("L", "M", "N", "P", "S", "Zs")), min_size=1, max_size=210),
    st.lists(st.one_of(_FRAGMENTS, st.text(max_size=5)), max_size=12).map("".join),
    st.text(max_size=260),
)


@pytest.fixture(scope="module")
def empty_ledger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sa.Engine]:
    engine = store.make_engine(f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'ledger.db'}")
    store.ensure_schema(engine)
    yield engine
    engine.dispose()


def _csv_cells(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text, newline="")))


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(name=_NAMES)
def test_fuzzed_names_are_refused_or_survive_paths_and_csv(
    empty_ledger: sa.Engine, tmp_path: Path, name: str
) -> None:
    base = tmp_path / "reports"
    period = calendar.parse_period("2026-10-15")
    # Whatever the name, a report path stays inside the reports folder with a safe folder name.
    path = report_files.default_path(base, name, period, "UTC", "csv")
    assert path.resolve().parent.parent == base.resolve()
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,51}", path.parent.name), path.parent.name
    try:
        accepted = check_project(name)
    except ConfigError as exc:
        _one_line(exc)
        assert (
            not name.strip() or len(name) > 200 or not name.isprintable() or name[0] in config.FORMULA_START
        )
        return
    assert accepted is name and 1 <= len(name) <= 200 and name.isprintable() and name[0] not in "=+-@"
    assert "\x00" not in name and not any(0xD800 <= ord(c) <= 0xDFFF for c in name)
    assert spreadsheet_cell(name) == name  # never altered in a spreadsheet CSV
    # the report itself (CSV, JSON, HTML) of an accepted name
    report = reports.build_report(empty_ledger, period, calendar.parse_zone("UTC"), name, refresh=False)
    rows = _csv_cells(report_formats.to_csv(report))
    assert ["report", "", "", "project", name] in rows
    assert json.loads(report_formats.to_json(report))["project"] == name
    page = report_html.to_html(report)
    assert html.escape(name, quote=True) in page and "<script" not in page
    written = report_files.write_report(report, "csv", base=base)
    assert written == path and _csv_cells(written.read_text(encoding="utf-8"))[1][4] == name
    # the FOCUS CSV and the event files carry it byte-exact too
    buf = io.StringIO(newline="")
    row = {c: None for c in focuscolumns.COLUMNS} | {
        "SubAccountId": name,
        "SubAccountName": name,
        "x_Model": name,
    }
    focusfiles.write_csv([row], buf)
    (head, cells) = _csv_cells(buf.getvalue())
    assert [cells[head.index(c)] for c in ("SubAccountId", "SubAccountName", "x_Model")] == [name] * 3
    for fmt in ("csv", "jsonl"):
        buf = io.StringIO(newline="")
        event = {c: None for c in eventio.COLUMNS} | {"project": name, "tags": {name: name}}
        eventio.write_rows([event], buf, fmt)
        if fmt == "csv":
            (head, cells) = _csv_cells(buf.getvalue())
            assert cells[head.index("project")] == name
            assert json.loads(cells[head.index("tags")]) == {name: name}
            frame = pd.read_csv(io.StringIO(buf.getvalue()), dtype=str, keep_default_na=False)
            assert frame["project"].tolist() == [name]
        else:
            assert json.loads(buf.getvalue())["project"] == name


# -- a loopback upstream that also notes the headers each request arrived with ----------------------


class _NotingHandler(StandInHandler):
    def do_POST(self) -> None:
        owner: Any = self.server.owner
        owner.seen.append({k.lower(): v for k, v in self.headers.items()})
        super().do_POST()


class NotingStandIn(StandIn):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[dict[str, str]] = []
        self._server.RequestHandlerClass = _NotingHandler

    def leaked(self) -> list[str]:
        return [k for headers in self.seen for k in headers if k.startswith("x-ledger")]


@pytest.fixture
def noting_upstream() -> Iterator[NotingStandIn]:
    with NotingStandIn() as server:
        yield server


# -- the whole path ------------------------------------------------------------------------------


def _month_before(now: datetime) -> datetime:
    """Noon on the 15th of the month before ``now``'s."""
    first = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return (first - timedelta(days=1)).replace(day=15, hour=12)


def _next_month(day: datetime) -> str:
    """The first day of the month after ``day``'s, as YYYY-MM-DD."""
    return (day.replace(day=28) + timedelta(days=4)).replace(day=1).strftime("%Y-%m-%d")


class _Clock:
    """Moves the transport's clock back so every call occurs on the 15th of last month (a month
    that has ended, so `export billing` may issue it)."""

    def __init__(self, target: datetime) -> None:
        self.shift = datetime.now(UTC) - target
        real = datetime
        shift = self.shift

        class Past(datetime):
            @classmethod
            def now(cls, tz: Any = None) -> Any:
                return real.now(tz) - shift

        self.cls = Past


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def _one_error(code: int, err: str, expected: int) -> str:
    lines = err.splitlines()
    assert code == expected and len(lines) == 1 and lines[0].startswith("error: "), (code, err)
    return lines[0]


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def _pandas(path: Path) -> Any:
    # dtype=str and keep_default_na=False: otherwise pandas turns "NaN" and "null" into floats
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _assert_spreadsheet_safe(cells: list[str], where: str) -> None:
    for cell in cells:
        if cell[:1] in FORMULA_START:
            assert NUMBER.fullmatch(cell), f"{where}: formula cell {cell[:40]!r}"


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def _make_calls(upstream: NotingStandIn) -> int:
    """Every accepted name, three calls each: the wrapper (constructor, then per call, streamed) and an
    SDK through instrument() (the x-ledger-* headers for ASCII names, instrument(project=) otherwise,
    since HTTP header values are ASCII). Returns the number of calls made."""
    calls = 0
    shared = ledger.CerebrasClient("shared", api_key=API_KEY, base_url=upstream.base_url, max_retries=0)
    with shared:
        for name in ACCEPTED:
            with ledger.CerebrasClient(
                name, api_key=API_KEY, base_url=upstream.base_url, tags=TAGS, max_retries=0, flush_timeout=0
            ) as client:  # one flush, below
                assert client.project == name
                reply = client.chat.completions.create(model="gpt-oss-120b", messages=MSG, max_tokens=9)
                assert reply["id"].startswith("chatcmpl-")
            chunks = list(
                shared.chat.completions.create(
                    model="gpt-oss-120b", messages=MSG, stream=True, project=name, tags=TAGS
                )
            )
            assert chunks[-1]["usage"]["total_tokens"] > 0
            calls += 2
        assert shared.flush(15)
    tags_header = json.dumps(TAGS)  # ASCII (\u escapes), so any tag travels in a header
    http = ledger.instrument(httpx.Client(), project=SDK_DEFAULT)
    sdk = openai.OpenAI(
        api_key=API_KEY,
        base_url=f"{upstream.base_url}/v1",
        http_client=http,  # type: ignore[arg-type]  # openai types it as httpx2.Client; an httpx.Client works (duck-typed)
        max_retries=0,
    )
    try:
        for name in ACCEPTED:
            if name.isascii():
                completion = sdk.chat.completions.create(
                    model="gpt-oss-120b",
                    messages=MSG,
                    max_tokens=7,
                    extra_headers={"x-ledger-project": name, "x-ledger-tags": tags_header},
                )
            else:
                own = ledger.instrument(httpx.Client(), project=name, tags=TAGS)
                own._transport.flush_timeout = 0  # type: ignore[attr-defined]  # one flush, below
                with openai.OpenAI(
                    api_key=API_KEY,
                    base_url=f"{upstream.base_url}/v1",
                    http_client=own,  # type: ignore[arg-type]  # openai types it as httpx2.Client; an httpx.Client works (duck-typed)
                    max_retries=0,
                ) as other:
                    completion = other.chat.completions.create(
                        model="gpt-oss-120b", messages=MSG, max_tokens=7
                    )
            assert completion.id.startswith("chatcmpl-")
            calls += 1
        assert http._transport.journal.flush(15)  # type: ignore[attr-defined]
    finally:
        sdk.close()
    return calls


def _refusals(
    upstream: NotingStandIn,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> Counter[str]:
    """Refused names: one line at the call site or on the command line, nothing sent for the wrapper,
    and never a broken call through the SDK headers. Returns how many refusals were checked, by where."""
    checked: Counter[str] = Counter()
    sent = upstream.requests
    with ledger.CerebrasClient("ok", api_key=API_KEY, base_url=upstream.base_url, max_retries=0) as client:
        for name, word in REFUSED.items():
            with pytest.raises(ConfigError) as info:
                ledger.CerebrasClient(name, api_key=API_KEY, base_url=upstream.base_url)
            assert word in _one_line(info.value)
            checked["CerebrasClient(project=)"] += 1
            if name:  # an empty per-call project means "the client's own"
                with pytest.raises(ConfigError) as info:
                    client.chat.completions.create(model="gpt-oss-120b", messages=MSG, project=name)
                assert word in _one_line(info.value)
                checked["create(project=)"] += 1
    assert upstream.requests == sent  # the wrapper refused before sending anything

    # Through the SDK, a refused x-ledger-project never breaks the call, never leaves the process,
    # and is said in the log.
    http = ledger.instrument(httpx.Client(), project=SDK_DEFAULT)
    with openai.OpenAI(
        api_key=API_KEY,
        base_url=f"{upstream.base_url}/v1",
        http_client=http,  # type: ignore[arg-type]  # openai types it as httpx2.Client; an httpx.Client works (duck-typed)
        max_retries=0,
    ) as sdk:
        for name in REFUSED_HEADER_NAMES:
            caplog.clear()
            reply = sdk.chat.completions.create(
                model="gpt-oss-120b", messages=MSG, extra_headers={"x-ledger-project": name}
            )
            assert reply.choices[0].message.content
            assert "x-ledger-project" not in upstream.seen[-1]
            said = " ".join(r.getMessage() + (r.exc_text or "") for r in caplog.records if r.name == "ledger")
            assert "project name" in said, said  # the log says why
            checked["x-ledger-project header (call not broken)"] += 1
        assert http._transport.journal.flush(10)  # type: ignore[attr-defined]
    assert upstream.requests == sent + len(REFUSED_HEADER_NAMES)

    # The command line: one error line each, nothing sent, nothing stored.
    bad_file = tmp_path / "exports" / "bad-import.jsonl"
    for name, word in REFUSED.items():
        if "\x00" not in name:  # argv cannot hold NUL (a lone surrogate it can: undecodable bytes)
            code, out, err = _cli(capsys, "report", "--period", "2026-10", "--project", name)
            assert word in _one_error(code, err, 1) and out == ""
            code, out, err = _cli(capsys, "budget", "set", "--monthly", "1", "--", name)
            assert word in _one_error(code, err, 2) and out == ""
            code, out, err = _cli(capsys, "chat", "-m", "gpt-oss-120b", "-p", "hi", "--project", name)
            assert word in _one_error(code, err, 1) and out == ""
            checked["CLI report/budget set/chat"] += 1
        row = {c: "" for c in eventio.COLUMNS} | {
            "event_id": "01890000-0000-7000-8000-000000000001",
            "occurred_at": "2026-10-15T12:00:00Z",
            "project": name,
            "route": "cerebras",
            "model": "gpt-oss-120b",
            "status": "ok",
            "stream": False,
            "free": False,
            "priced": False,
            "tags": {},
        }
        bad_file.write_text(json.dumps(row) + "\n", encoding="utf-8")
        code, out, err = _cli(capsys, "events", "import", str(bad_file))
        assert word in _one_error(code, err, 1) and "line 1" in err
        checked["events import"] += 1
    bad_file.unlink()
    assert upstream.requests == sent + len(REFUSED_HEADER_NAMES)
    return checked


def test_hostile_names_through_every_stage(
    ledger_env: dict[str, str],
    noting_upstream: NotingStandIn,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    reliability: Any,
) -> None:
    caplog.set_level(logging.INFO)
    url = ledger_env["LEDGER_DATABASE_URL"]
    reports_dir, exports = tmp_path / "reports", tmp_path / "exports"
    exports.mkdir()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # anything written "here" by mistake would show up in cwd
    monkeypatch.setenv("LEDGER_REPORTS_DIR", str(reports_dir))
    monkeypatch.setenv("CEREBRAS_API_KEY", API_KEY)
    monkeypatch.setenv("CEREBRAS_BASE_URL", noting_upstream.base_url)
    day = _month_before(datetime.now(UTC))
    month = day.strftime("%Y-%m")
    monkeypatch.setattr(attempt, "datetime", _Clock(day).cls)

    calls = _make_calls(noting_upstream)
    refusals = _refusals(noting_upstream, capsys, caplog, tmp_path)
    assert noting_upstream.leaked() == []  # no x-ledger-* header ever left the process

    # -- the database: every event, its project byte-exact, tags as documented -------------------
    everything = fetch_events(url)
    by_project = Counter(r["project"] for r in everything)
    # The refused header calls are recorded under the SDK client's own project; nothing else lands
    # there or anywhere else.
    fallback = by_project.pop(SDK_DEFAULT, 0)
    assert fallback == len(REFUSED_HEADER_NAMES)
    assert by_project == Counter(dict.fromkeys(ACCEPTED, 3)), by_project
    extra = {SDK_DEFAULT} if fallback else set()
    rows = [r for r in everything if r["project"] != SDK_DEFAULT]
    assert all(r["status"] == "ok" and str(r["occurred_at"])[:7] == month for r in everything)
    want_tags = _stored_tags(200, 1000)
    assert all(json.loads(r["tags"]) == want_tags for r in rows)
    recorded, recorded_all = len(rows), len(everything)

    # -- rollup ---------------------------------------------------------------------------------------
    code, out, err = _cli(capsys, "rollup")
    assert code == 0 and f"rolled up {recorded_all} event(s)" in out, err

    # -- reports: one per name (formats in turn), and the all-projects report in every format ---------
    report_tags = _stored_tags(100, 200)
    folders = set()
    for i, name in enumerate(ACCEPTED):
        fmt = report_files.FORMATS[i % len(report_files.FORMATS)]
        code, out, err = _cli(capsys, "report", "--project", name, "--period", month, "--format", fmt)
        assert code == 0, err
        path = Path(out.strip())
        assert path.resolve().parent.parent == reports_dir.resolve() and path.suffix == f".{fmt}"
        assert path.parent.name == report_files.project_folder(name)
        folders.add(path.parent.name)
        if fmt == "csv":
            table = _read_csv(path)
            assert {
                "section": "report",
                "item": "",
                "detail": "",
                "figure": "project",
                "value": name,
            } in table
            assert {r["item"] for r in table if r["section"] == "project"} == {name}
            assert {r["value"] for r in table if r["section"] == "totals" and r["figure"] == "calls"} == {"3"}
            assert _pandas(path).query("figure == 'project'")["value"].tolist() == [name]
            got_tags = {(r["item"], r["detail"]) for r in table if r["section"] == "tag"}
            assert got_tags == {(spreadsheet_cell(k), spreadsheet_cell(v)) for k, v in report_tags.items()}
            _assert_spreadsheet_safe([c for r in table for c in r.values()], f"report of {name[:20]!r}")
        elif fmt == "json":
            data = json.loads(path.read_text(encoding="utf-8"))
            assert data["project"] == name and data["totals"]["calls"] == 3
            assert [p["project"] for p in data["by_project"]] == [name]
            assert {(t["key"], t["value"]) for t in data["top_tags"]} == set(report_tags.items())
        else:
            page = path.read_text(encoding="utf-8")
            assert f"project {html.escape(name, quote=True)}" in page and "<script>" not in page
    assert len(folders) == len(ACCEPTED)
    whole = {}
    for fmt in report_files.FORMATS:
        code, out, err = _cli(capsys, "report", "--period", month, "--format", fmt, "--tz", "Asia/Kathmandu")
        assert code == 0, err
        whole[fmt] = Path(out.strip())
        assert whole[fmt].parent == reports_dir / "all-projects"
    everyone = _read_csv(whole["csv"])
    assert {r["item"] for r in everyone if r["section"] == "project"} == set(ACCEPTED) | extra
    assert set(_pandas(whole["csv"]).query("section == 'project'")["item"]) == set(ACCEPTED) | extra
    _assert_spreadsheet_safe([c for r in everyone for c in r.values()], "all-projects report")
    data = json.loads(whole["json"].read_text(encoding="utf-8"))
    want_calls = dict.fromkeys(ACCEPTED, 3) | dict.fromkeys(extra, fallback)
    assert {p["project"]: p["calls"] for p in data["by_project"]} == want_calls
    page = whole["html"].read_text(encoding="utf-8")
    assert "<script>" not in page and all(f"<td>{html.escape(n, quote=True)}</td>" in page for n in ACCEPTED)

    # -- summary --------------------------------------------------------------------------------------
    code, out, err = _cli(capsys, "summary", "--format", "json")
    assert code == 0, err
    summaries = {s["project"]: s["calls"] for s in json.loads(out) if s["project"] != SDK_DEFAULT}
    assert summaries == dict.fromkeys(ACCEPTED, 3)
    code, out, err = _cli(capsys, "summary", "--format", "csv")
    assert code == 0, err
    names = sorted(ACCEPTED + sorted(extra))
    assert sorted(r["project"] for r in csv.DictReader(io.StringIO(out, newline=""))) == names
    assert sorted(pd.read_csv(io.StringIO(out), dtype=str, keep_default_na=False)["project"]) == names
    code, out, err = _cli(capsys, "summary")
    assert code == 0 and all(name.strip() in out for name in ACCEPTED)

    # -- the FOCUS billing export ---------------------------------------------------------------------
    focus_csv = exports / f"focus-{month}.csv"
    code, out, err = _cli(capsys, "export", "billing", "--month", month, "--out", str(focus_csv))
    assert code == 0, err
    billed = _read_csv(focus_csv)
    assert {r["SubAccountId"] for r in billed} == set(ACCEPTED) | extra
    assert all(r["SubAccountId"] == r["SubAccountName"] for r in billed)
    assert set(_pandas(focus_csv)["SubAccountId"]) == set(ACCEPTED) | extra
    _assert_spreadsheet_safe([c for r in billed for c in r.values()], "FOCUS export")
    per_project: dict[str, Decimal] = {}
    for r in billed:
        account = r["SubAccountId"]
        per_project[account] = per_project.get(account, Decimal(0)) + Decimal(r["BilledCost"])
    costs: dict[str, int] = {}
    for r in everything:
        costs[r["project"]] = costs.get(r["project"], 0) + int(r["cost_nanos"])
    assert {p: int(v.scaleb(9)) for p, v in per_project.items()} == costs

    # -- events export / import: byte-identical after a round trip through a fresh ledger ------------
    since, until = f"{month}-01", _next_month(day)
    second = f"sqlite:///{tmp_path / 'second.db'}"
    stored = Counter(r["project"] for r in everything)
    for fmt in ("csv", "jsonl"):
        first_file, again_file = exports / f"events.{fmt}", exports / f"events-again.{fmt}"
        code, _, err = _cli(
            capsys,
            "events",
            "export",
            "--since",
            since,
            "--until",
            until,
            "--format",
            fmt,
            "--out",
            str(first_file),
        )
        assert code == 0 and f"wrote {recorded_all} event(s)" in err, err
        if fmt == "csv":
            exported = _read_csv(first_file)
            assert Counter(r["project"] for r in exported) == stored
            assert Counter(_pandas(first_file)["project"]) == stored
            assert all(json.loads(r["tags"]) == want_tags for r in exported if r["project"] != SDK_DEFAULT)
        else:
            lines = [json.loads(line) for line in first_file.read_text(encoding="utf-8").splitlines()]
            assert Counter(r["project"] for r in lines) == stored
        with monkeypatch.context() as m:  # the second ledger has a spool of its own
            m.setenv("LEDGER_SPOOL_DIR", str(tmp_path / "spool2"))
            code, out, err = _cli(capsys, "--database-url", second, "events", "import", str(first_file))
            assert code == 0 and f"{recorded_all} row(s) read" in out, err
            code, _, err = _cli(
                capsys,
                "--database-url",
                second,
                "events",
                "export",
                "--since",
                since,
                "--until",
                until,
                "--format",
                fmt,
                "--out",
                str(again_file),
            )
            assert code == 0, err
        assert again_file.read_bytes() == first_file.read_bytes()
    for name in ACCEPTED[:3]:  # --project filters by the exact name (a bound parameter, never SQL text)
        code, out, err = _cli(
            capsys,
            "events",
            "export",
            "--since",
            since,
            "--until",
            until,
            "--project",
            name,
            "--format",
            "jsonl",
        )
        assert code == 0 and [json.loads(x)["project"] for x in out.splitlines()] == [name] * 3

    # -- budgets and signed webhook alerts ------------------------------------------------------------
    with Receiver() as rx:
        monkeypatch.setenv("LEDGER_ALERT_WEBHOOK_URL", rx.url)
        monkeypatch.setenv("LEDGER_ALERT_WEBHOOK_SECRET", WEBHOOK_SECRET)
        for name in ACCEPTED:
            code, out, err = _cli(
                capsys, "budget", "set", "--monthly", "0.000000001", "--thresholds", "100", "--", name
            )
            assert code == 0, err
        code, out, err = _cli(capsys, "budget", "list", "--format", "json")
        assert sorted(b["project"] for b in json.loads(out)) == sorted(ACCEPTED)
        code, out, err = _cli(
            capsys, "alerts", "check", "--now", day.strftime("%Y-%m-%dT18:00:00Z"), "--spike-min", "1000000"
        )
        assert code == 0 and f"{len(ACCEPTED)} new alert(s)" in out, out + err
        assert f"{len(ACCEPTED)} delivered, 0 failed" in out
    assert len(rx.requests) == len(ACCEPTED)
    alerted = []
    for req in rx.requests:
        want = "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), req["body"], hashlib.sha256).hexdigest()
        assert hmac.compare_digest(req["headers"]["x-ledger-signature"], want)
        body = json.loads(req["body"].decode("utf-8"))
        assert body["rule"] == "month_actual" and repr(body["project"]) in body["text"]
        alerted.append(body["project"])
    assert sorted(alerted) == sorted(ACCEPTED)
    code, out, err = _cli(capsys, "alerts", "list", "--format", "json")
    assert sorted(a["project"] for a in json.loads(out)) == sorted(ACCEPTED)

    # -- SQL: the metacharacters ran as nothing; every table still there, every count right ----------
    engine = store.make_engine(url)
    try:
        with engine.connect() as conn:
            tables = set(sa.inspect(conn).get_table_names())
            assert {"events", "event_tags", "budgets", "alerts", "usage_rollup", "tag_rollup"} <= tables
            assert conn.execute(sa.text("SELECT count(*) FROM events")).scalar_one() == recorded_all
            assert conn.execute(sa.text("SELECT count(*) FROM budgets")).scalar_one() == len(ACCEPTED)
    finally:
        engine.dispose()

    # -- files: every one inside the folder it belongs in; none where it should not be -----------------
    journal.close_all(5.0)
    allowed = {"home", "spool", "spool2", "reports", "exports", "cwd"}
    created = _files(tmp_path)
    tops = {p.relative_to(tmp_path).parts[0] for p in created}
    databases = re.compile(r"(ledger|second)\.db(-wal|-shm|\.migrate-lock)?")
    assert {t for t in tops if not databases.fullmatch(t)} <= allowed
    assert _files(cwd) == set()
    for p in _files(reports_dir):
        assert p.resolve().parent.parent == reports_dir.resolve(), p
        assert p.parent.name in folders | {"all-projects"} and re.fullmatch(r"[A-Za-z0-9_-]+", p.parent.name)
        assert not p.name.startswith(".")  # no temporary file left behind
    assert {p.name for p in _files(exports)} == {
        f"focus-{month}.csv",
        "events.csv",
        "events-again.csv",
        "events.jsonl",
        "events-again.jsonl",
    }
    reliability(
        load=f"{calls} real calls (wrapper direct + streamed per call, openai SDK via headers/instrument)",
        fault="-",
        inputs=(
            f"{len(ACCEPTED)} accepted hostile project names (path separators, .., SQL, quotes, "
            f"combining marks, emoji, RTL scripts, 200 chars, apostrophe-formula) with {len(TAGS)} "
            f"hostile tags (NUL, lone surrogate, 10,000 chars, newline, RTL override, formula); "
            f"{len(REFUSED)} refused names (NUL, 10,000 chars, newline, RTL override, zero-width, "
            "lone surrogate, =cmd formula) refused in one line: "
            + ", ".join(f"{where} {n}" for where, n in refusals.items())
        ),
        expected=calls,
        recorded=recorded,
        lost=calls - recorded,
    )


def test_undecodable_argv_is_refused_in_one_line(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 reach Python's argv as lone surrogates: a real process, one line."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEDGER_", "CEREBRAS_", "LAVA_"))}
    env |= {"LEDGER_HOME": str(tmp_path / "home"), "LC_ALL": "C.UTF-8"}
    args = [b"report", b"--period", b"2026-10", b"--project", b"bad-\xff\xed\xa0\x80-name"]
    proc = subprocess.run(
        [sys.executable.encode(), b"-m", b"ledger", *args], env=env, capture_output=True, timeout=60
    )
    err = proc.stderr.decode("utf-8")
    assert proc.returncode == 1 and proc.stdout == b"", err
    assert err == "error: --project: project name has control or non-printable characters\n", err
    assert not (tmp_path / "home").exists()  # refused before any ledger was opened


# -- the SDK headers: a refused name must not lose the call's event, nor leak the other header ------


@pytest.fixture
def sqlite_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    monkeypatch.setenv("LEDGER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LEDGER_DATABASE_URL", url)
    monkeypatch.setenv("LEDGER_SPOOL_DIR", str(tmp_path / "spool"))
    monkeypatch.delenv("LEDGER_PROJECT", raising=False)
    engine = store.make_engine(url)
    store.ensure_schema(engine)  # so that "no event" reads as an empty table
    engine.dispose()
    yield url
    journal.close_all(5.0)


def _sdk_call(upstream: NotingStandIn, headers: dict[str, str]) -> Any:
    http = ledger.instrument(httpx.Client(), project=SDK_DEFAULT)
    with openai.OpenAI(
        api_key=API_KEY,
        base_url=f"{upstream.base_url}/v1",
        http_client=http,  # type: ignore[arg-type]  # openai types it as httpx2.Client; an httpx.Client works (duck-typed)
        max_retries=0,
    ) as sdk:
        reply = sdk.chat.completions.create(model="gpt-oss-120b", messages=MSG, extra_headers=headers)
        assert http._transport.journal.flush(10)  # type: ignore[attr-defined]
    return reply


def test_refused_project_header_never_breaks_the_call(
    sqlite_env: str,
    noting_upstream: NotingStandIn,
    caplog: pytest.LogCaptureFixture,
    reliability: Any,
) -> None:
    """The call goes through, the refused header is not sent upstream, and the call is recorded
    under the client's own project."""
    caplog.set_level(logging.WARNING)
    for name in REFUSED_HEADER_NAMES:
        reply = _sdk_call(noting_upstream, {"x-ledger-project": name})
        assert reply.id.startswith("chatcmpl-")
    assert noting_upstream.leaked() == []
    assert len(noting_upstream.served) == len(REFUSED_HEADER_NAMES)
    recorded = len(fetch_events(sqlite_env))
    assert recorded == len(REFUSED_HEADER_NAMES)
    reliability(
        load=f"{len(REFUSED_HEADER_NAMES)} openai SDK calls through instrument()",
        fault="-",
        inputs="x-ledger-project header refused by check_project (10,000 chars, tab, ESC, NUL, "
        "leading = + - @)",
        expected=len(REFUSED_HEADER_NAMES),
        recorded=recorded,
        lost=len(REFUSED_HEADER_NAMES) - recorded,
    )


def test_refused_project_header_still_records_the_call(
    sqlite_env: str, noting_upstream: NotingStandIn
) -> None:
    reply = _sdk_call(noting_upstream, {"x-ledger-project": "-rf", "x-ledger-tags": "team=search"})
    rows = fetch_events(sqlite_env)
    assert len(rows) == 1, "the call's event was lost"
    (row,) = rows
    assert row["upstream_id"] == reply.id and row["project"] == SDK_DEFAULT  # the client's own project
    assert json.loads(row["tags"]) == {"team": "search"}


def test_refused_project_header_never_sends_the_tags_header(
    sqlite_env: str, noting_upstream: NotingStandIn
) -> None:
    _sdk_call(noting_upstream, {"x-ledger-project": "tab\there", "x-ledger-tags": "team=search"})
    assert noting_upstream.leaked() == []


def test_refused_project_header_with_a_newline_tag_does_not_fail_the_call(
    sqlite_env: str, noting_upstream: NotingStandIn
) -> None:
    # today the tags header reaches h11, which refuses the newline: the SDK raises APIConnectionError
    reply = _sdk_call(noting_upstream, {"x-ledger-project": "tab\there", "x-ledger-tags": "a=1\nb=2"})
    assert reply.id.startswith("chatcmpl-")


def test_malformed_tags_header_still_records_the_call(
    sqlite_env: str, noting_upstream: NotingStandIn
) -> None:
    reply = _sdk_call(noting_upstream, {"x-ledger-project": "search", "x-ledger-tags": '{"unclosed": '})
    rows = fetch_events(sqlite_env)
    assert len(rows) == 1, "the call's event was lost"
    (row,) = rows
    assert row["upstream_id"] == reply.id and row["project"] == "search"


def test_requested_model_of_odd_request_bodies(sqlite_env: str, upstream: StandIn) -> None:
    """The requested model is read without parsing the body when ``"model"`` occurs once, or
    the body is over 64 KiB; a body naming ``"model"`` more than once is parsed, so a nested
    ``"model"`` key before the top-level one is not taken for it. Errors (no served model)
    show what was read."""
    nested_first = {
        "response_format": {
            "type": "json_schema",
            "json_schema": {
                "name": "x",
                "schema": {
                    "type": "object",
                    "properties": {"model": {"type": "string"}},
                    "default": {"model": "nested"},
                },
            },
        },
        "model": "gpt-oss-120b",
        "messages": MSG,
    }
    escaped = {"messages": [{"role": "user", "content": 'say "model": "fake" please'}], "model": "qwen-3-32b"}
    big = {"messages": [{"role": "user", "content": "x" * 70_000}], "model": "llama3.1-8b"}
    not_text = {"model": 7, "messages": MSG}
    # a value with escapes (read as JSON, not as its bytes), and one in raw UTF-8
    escaped_value = b'{"model": "gpt\\u002doss\\"q\\"", "messages": []}'
    utf8_value = '{"model": "modèle-ü", "messages": []}'.encode()
    cases = [
        (nested_first, "gpt-oss-120b"),
        (escaped, "qwen-3-32b"),
        (big, "llama3.1-8b"),
        (not_text, None),
        (escaped_value, 'gpt-oss"q"'),
        (utf8_value, "modèle-ü"),
    ]
    http = ledger.instrument(httpx.Client(), project="odd-bodies")
    with http:
        for body, _ in cases:
            upstream.queue("not_found")
            content = body if isinstance(body, bytes) else json.dumps(body).encode()
            r = http.post(
                f"{upstream.base_url}/v1/chat/completions",
                content=content,
                headers={"authorization": f"Bearer {API_KEY}", "content-type": "application/json"},
            )
            assert r.status_code == 404
        assert http._transport.journal.flush(10)  # type: ignore[attr-defined]
    rows = sorted(fetch_events(sqlite_env), key=lambda row: row["event_id"])
    assert [(row["status"], row["requested_model"]) for row in rows] == [("error", m) for _, m in cases]


# -- the webhook: signature verified independently; the secret never logged, even at DEBUG ---------


def test_webhook_signature_verifies_and_secret_is_never_logged(
    ledger_env: dict[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, httpx and httpcore included
    name = "проект «бюджет» \U0001f4b8 ../'; --"
    when = datetime(2026, 10, 15, 12, tzinfo=UTC)
    engine = store.make_engine(ledger_env["LEDGER_DATABASE_URL"])
    try:
        store.ensure_schema(engine)
        event = make_event(occurred_at=when, project=name, usage=Usage(10, 0, 10, 0, 20), latency_us=1)
        charge = Charge("p", Money(5 * 10**9), False, True, None)  # 5 USD
        with store.write_transaction(engine) as conn:
            store.insert_events(conn, [store.event_row(event, charge, when)])
        budgets.set_budget(engine, name, monthly="1", thresholds="50,100", now=when - timedelta(days=1))
    finally:
        engine.dispose()
    with Receiver([503]) as rx:  # the first POST fails, the retry is delivered
        secret_url = rx.url + f"?token={WEBHOOK_SECRET}-url"
        monkeypatch.setenv("LEDGER_ALERT_WEBHOOK_URL", secret_url)
        monkeypatch.setenv("LEDGER_ALERT_WEBHOOK_SECRET", WEBHOOK_SECRET)
        code, out, err = _cli(
            capsys, "-v", "alerts", "check", "--now", "2026-10-15T13:00:00Z", "--spike-min", "1000000"
        )
        assert code == 0 and "2 new alert(s)" in out and "1 delivered, 1 failed" in out, out + err
        # the failed one is due again 30 s later
        code, out2, err2 = _cli(
            capsys, "-v", "alerts", "check", "--now", "2026-10-15T13:01:00Z", "--spike-min", "1000000"
        )
        assert code == 0 and "0 new alert(s)" in out2 and "1 delivered, 0 failed" in out2, out2 + err2
    assert len(rx.requests) == 3
    delivered = [r for r in rx.requests if r["status"] == 200]
    assert len(delivered) == 2
    for req in rx.requests:
        raw = req["body"]
        assert int(req["headers"]["content-length"]) == len(raw)
        want = "sha256=" + hmac.new(WEBHOOK_SECRET.encode("utf-8"), raw, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(req["headers"]["x-ledger-signature"], want)
        forged = "sha256=" + hmac.new(b"not-the-secret", raw, hashlib.sha256).hexdigest()
        assert not hmac.compare_digest(req["headers"]["x-ledger-signature"], forged)
        body = json.loads(raw.decode("utf-8"))
        assert body["project"] == name and repr(name) in body["text"]
        assert WEBHOOK_SECRET not in raw.decode("utf-8")
    assert {json.loads(r["body"])["threshold"] for r in delivered} == {50, 100}
    # never the secret nor the URL's secret parts, in any record at any level, or on the terminal
    everything = [out, err, out2, err2]
    for record in caplog.records:
        everything += [record.getMessage(), repr(record.args), record.exc_text or "", record.stack_info or ""]
    text = "\n".join(everything)
    assert any(r.levelno == logging.DEBUG for r in caplog.records)  # DEBUG was really captured
    for needle in (WEBHOOK_SECRET, "T0SECRETPATH", urlsplit(secret_url).query):
        assert needle not in text, needle
