"""The ``cerebras-ledger`` command line, in-process (``ledger.cli.main``) and as a real process.

Events come from real calls through :class:`ledger.CerebrasClient` to the loopback stand-in;
every database test runs on a SQLite file and on a PostgreSQL schema (the ``db_url`` fixture).
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import click
import pytest
import sqlalchemy as sa

import ledger
from ledger import journal, store
from ledger.cli.demo import PROJECTS as DEMO_PROJECTS
from ledger.cli.main import cli as cli_group
from ledger.cli.main import main
from ledger.store.schema import SCHEMA_REVISION
from ledger.testing import StandIn
from tests.helpers import fetch_events

VENV_BIN = Path(sys.executable).parent
CONSOLE_SCRIPT = VENV_BIN / "cerebras-ledger"
PYTHON = VENV_BIN / "python"

COLUMNS = [
    "event_id",
    "occurred_at",
    "project",
    "route",
    "model",
    "status",
    "http_status",
    "stream",
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "reasoning_tokens",
    "total_tokens",
    "cost_usd",
    "free",
    "priced",
    "upstream_id",
    "tags",
]

LAVA_SEED = {  # model -> (input per 1M, output per 1M, free)
    "qwen-3-235b-instruct": (Decimal("0.60"), Decimal("1.20"), False),
    "gpt-oss-120b": (Decimal("0.35"), Decimal("0.75"), False),
    "llama3.1-8b": (Decimal(0), Decimal(0), True),
    "llama-3.3-70b": (Decimal(0), Decimal(0), True),
    "deepseek-r1-distill-llama-70b": (Decimal(0), Decimal(0), True),
    "llama-4-scout-17b-16e-instruct": (Decimal(0), Decimal(0), True),
    "qwen-3-32b": (Decimal(0), Decimal(0), True),
}
BUILTIN_GPT = "cerebras/gpt-oss-120b@2024-01-01T00:00:00Z"
MSG = [{"role": "user", "content": "count to three please"}]


# -- helpers -----------------------------------------------------------------------------------


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``main(args)`` in-process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def run_db(capsys: pytest.CaptureFixture[str], url: str, *args: str) -> tuple[int, str, str]:
    return run(capsys, "--database-url", url, *args)


def ok(capsys: pytest.CaptureFixture[str], url: str, *args: str) -> str:
    code, out, err = run_db(capsys, url, *args)
    assert code == 0, f"{args}: exit {code}, stderr {err!r}"
    return out


def subprocess_env(home: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("LEDGER_") and k not in ("CEREBRAS_API_KEY", "LAVA_FORWARD_TOKEN")
    }
    env["LEDGER_HOME"] = str(home)
    env.update(extra)
    return env


def run_process(
    argv: list[str], env: dict[str, str], cwd: Path, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )


def assert_one_error(code: int, err: str, expected_code: int) -> str:
    """Exactly one ``error: ...`` line on stderr, the expected exit code, no traceback."""
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one stderr line, got {lines!r}"
    assert lines[0].startswith("error: "), lines[0]
    assert code == expected_code, f"exit {code} (want {expected_code}): {err!r}"
    return lines[0]


def as_utc(value: Any) -> datetime:
    """A timestamp as read by raw SQL (a naive ISO string on SQLite), as aware UTC."""
    when = datetime.fromisoformat(value) if isinstance(value, str) else value
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def nanos_str(nanos: int) -> str:
    return f"{Decimal(nanos).scaleb(-9):.9f}"


def window() -> tuple[str, str]:
    today = datetime.now(UTC).date()
    return (today - timedelta(days=2)).isoformat(), (today + timedelta(days=2)).isoformat()


def count_rows(url: str, table: str = "events", where: str = "1=1") -> int:
    engine = store.make_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text(f"SELECT COUNT(*) FROM {table} WHERE {where}")).scalar_one())
    finally:
        engine.dispose()


def sql_rows(url: str, query: str) -> list[Any]:
    engine = store.make_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text(query)).all())
    finally:
        engine.dispose()


def price_rows(url: str) -> list[dict[str, Any]]:
    return [
        dict(r._mapping) for r in sql_rows(url, "SELECT * FROM prices ORDER BY book, model, effective_from")
    ]


# (project, route, model, stream, scenario, tags) in call order
Call = tuple[str, str, str, bool, str | None, dict[str, str] | None]
STANDARD_MIX: list[Call] = [
    ("alpha", "cerebras", "gpt-oss-120b", False, None, {"env": "prod", "user": "ana"}),
    ("alpha", "cerebras", "gpt-oss-120b", True, None, None),
    ("beta", "lava", "llama3.1-8b", False, None, {"feature": "chat"}),
    ("beta", "cerebras", "mystery-model-9000", False, None, None),
    ("beta", "cerebras", "gpt-oss-120b", False, "rate_limit", None),
    ("alpha", "lava", "qwen-3-235b-instruct", True, None, None),
]


def make_calls(
    upstream: StandIn,
    url: str,
    mix: Sequence[Call] = STANDARD_MIX,
) -> None:
    """Real calls through the wrapper client into the ledger at ``url``; returns when all are written."""
    clients = {
        "cerebras": ledger.CerebrasClient(
            "alpha", api_key="sk-test", base_url=upstream.base_url, database_url=url, max_retries=0
        ),
        "lava": ledger.CerebrasClient(
            "alpha",
            lava_forward_token="aks_live_test",
            lava_base_url=upstream.base_url,
            base_url="https://api.cerebras.ai",
            database_url=url,
            max_retries=0,
        ),
    }
    try:
        for project, route, model, stream, scenario, tags in mix:
            headers = {"x-standin-scenario": scenario} if scenario else None
            try:
                reply = clients[route].chat.completions.create(
                    model=model,
                    messages=MSG,
                    stream=stream,
                    max_tokens=40,
                    project=project,
                    tags=tags,
                    extra_headers=headers,
                )
                if stream:
                    for _ in reply:
                        pass
            except ledger.APIError:
                assert scenario is not None
        for c in clients.values():
            assert c.flush(10)
    finally:
        for c in clients.values():
            c.close()
    journal.close_all(5.0)  # the next writer loads a fresh price book


def export(capsys: pytest.CaptureFixture[str], url: str, fmt: str = "csv", *extra: str) -> str:
    since, until = window()
    return ok(capsys, url, "events", "export", "--since", since, "--until", until, "--format", fmt, *extra)


def parse_csv(text: str) -> tuple[list[str], list[dict[str, str]]]:
    reader = csv.DictReader(io.StringIO(text))
    rows = list(reader)
    return list(reader.fieldnames or []), rows


def walk(group: click.Command, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield path
    if isinstance(group, click.Group):
        for name, sub in group.commands.items():
            yield from walk(sub, (*path, name))


@pytest.fixture
def env_per_url(ledger_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Like ``ledger_env``, but each ledger URL gets its own spool (tests that use two ledgers)."""
    monkeypatch.delenv("LEDGER_SPOOL_DIR", raising=False)
    return ledger_env


# -- help --------------------------------------------------------------------------------------


COMMAND_PATHS = sorted(walk(cli_group))


def test_walk_finds_every_command() -> None:
    expected = {
        (),
        ("demo",),
        ("chat",),
        ("summary",),
        ("db",),
        ("db", "upgrade"),
        ("db", "downgrade"),
        ("db", "current"),
        ("prices",),
        ("prices", "list"),
        ("prices", "add"),
        ("prices", "sync"),
        ("prices", "check"),
        ("prices", "reprice"),
        ("events",),
        ("events", "export"),
        ("events", "import"),
    }
    assert expected <= set(COMMAND_PATHS)


@pytest.mark.parametrize("path", COMMAND_PATHS, ids=lambda p: " ".join(p) or "cerebras-ledger")
def test_every_command_has_help_with_an_example(
    capsys: pytest.CaptureFixture[str], path: tuple[str, ...]
) -> None:
    code, out, err = run(capsys, *path, "--help")
    assert code == 0, err
    assert "Example" in out
    assert "Usage: cerebras-ledger" in out and err == ""


def test_python_dash_m_help(tmp_path: Path) -> None:
    proc = run_process([str(PYTHON), "-m", "ledger", "--help"], subprocess_env(tmp_path / "home"), tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Example" in proc.stdout and "events" in proc.stdout and "prices" in proc.stdout


def test_console_script_help(tmp_path: Path) -> None:
    proc = run_process([str(CONSOLE_SCRIPT), "--help"], subprocess_env(tmp_path / "home"), tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Example" in proc.stdout and "Usage: cerebras-ledger" in proc.stdout
    assert not (tmp_path / "home").exists()  # --help touches no ledger


# -- bad input: one line, right exit code, no traceback ----------------------------------------


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["events", "export", "--since", "2026-13-01", "--until", "2026-12-01"], 1, "--since"),
        (["--database-url", "mysql://x", "summary"], 1, "mysql"),
        (["--database-url", "postgresql://postgres@127.0.0.1:1/test", "summary"], 1, "127.0.0.1"),
        (
            ["prices", "add", "--book", "lava", "--model", "m", "--input", "1.2.3", "--output", "1"],
            1,
            "input rate",
        ),
        (["events", "export", "--since", "2026-01-01"], 2, "--until"),
    ],
    ids=["bad-date", "mysql-url", "unreachable-postgres", "garbage-rate", "missing-option"],
)
def test_console_script_bad_input(tmp_path: Path, args: list[str], code: int, needle: str) -> None:
    proc = run_process([str(CONSOLE_SCRIPT), *args], subprocess_env(tmp_path / "home"), tmp_path)
    line = assert_one_error(proc.returncode, proc.stderr, code)
    assert needle in line
    assert proc.stdout == ""


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["events", "export", "--since", "2026-11-31", "--until", "2026-12-01"], 1, "not a date"),
        (["events", "export", "--since", "yesterday", "--until", "2026-12-01"], 1, "not a date"),
        (["summary", "--since", "2026-11-01T00:00:00"], 1, "time zone"),
        (
            ["events", "export", "--since", "2026-12-01", "--until", "2026-11-01"],
            1,
            "--until must be after --since",
        ),
        (
            ["events", "export", "--since", "2026-12-01", "--until", "2026-12-01"],
            1,
            "--until must be after --since",
        ),
        (
            ["prices", "reprice", "--since", "2026-12-01", "--until", "2026-11-01"],
            1,
            "--until must be after --since",
        ),
        (
            ["prices", "add", "--book", "lava", "--model", "m", "--input", "0.35.1", "--output", "1"],
            1,
            "input rate",
        ),
        (
            ["prices", "add", "--book", "lava", "--model", "m", "--input", "1", "--output", "abc"],
            1,
            "output rate",
        ),
        (
            ["prices", "add", "--book", "lava", "--model", "m", "--input", "nan", "--output", "1"],
            1,
            "input rate",
        ),
        (
            ["prices", "add", "--book", "lava", "--model", "m", "--input", "0.0001", "--output", "1"],
            1,
            "finer than $0.001",
        ),
        (
            ["prices", "add", "--book", "lava", "--model", "m", "--input", "1", "--output", "0.0005"],
            1,
            "finer than $0.001",
        ),
        (["prices", "add", "--book", "lava", "--model", "m", "--input=-1", "--output", "1"], 1, "negative"),
        (
            [
                "prices",
                "add",
                "--book",
                "lava",
                "--model",
                "m",
                "--input",
                "1",
                "--output",
                "1",
                "--from",
                "soon",
            ],
            1,
            "--from",
        ),
        (["prices", "add", "--book", "nope", "--model", "m", "--input", "1", "--output", "1"], 2, "--book"),
        (["prices", "add", "--book", "lava", "--input", "1", "--output", "1"], 2, "--model"),
        (["prices", "list", "--format", "xml"], 2, "--format"),
        (
            ["events", "export", "--since", "2026-01-01", "--until", "2026-02-01", "--format", "xlsx"],
            2,
            "--format",
        ),
        (["chat", "-m", "gpt-oss-120b", "-p", "hi", "--project", "p", "--tag", "novalue"], 1, "KEY=VALUE"),
        (["chat", "-m", "gpt-oss-120b", "-p", "hi", "--project", "p", "--tag", "=v"], 1, "KEY=VALUE"),
        (["events", "import", "/nonexistent/file.csv"], 2, "does not exist"),
        (["no-such-command"], 2, "no-such-command"),
    ],
)
def test_bad_input_in_process(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, args: list[str], code: int, needle: str
) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    got, out, err = run_db(capsys, url, *args)
    line = assert_one_error(got, err, code)
    assert needle in line
    assert out == ""


@pytest.mark.parametrize(
    "args",
    [
        ["summary"],
        ["prices", "list"],
        ["db", "upgrade"],
        ["db", "current"],
        ["events", "export", "--since", "2026-01-01", "--until", "2026-02-01"],
    ],
)
def test_unreachable_postgres_is_one_line(capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    code, out, err = run(capsys, "--database-url", "postgresql://postgres@127.0.0.1:1/test", *args)
    line = assert_one_error(code, err, 1)
    assert "127.0.0.1" in line or "refused" in line
    assert out == ""


@pytest.mark.parametrize("url", ["mysql://x", "oracle://u@h/db", "not a url"])
def test_unknown_database_url_is_one_line(capsys: pytest.CaptureFixture[str], url: str) -> None:
    code, out, err = run(capsys, "--database-url", url, "prices", "list")
    assert_one_error(code, err, 1)
    assert out == ""


def test_bad_url_from_environment(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LEDGER_DATABASE_URL", "mysql://x")
    code, _, err = run(capsys, "summary")
    assert "mysql" in assert_one_error(code, err, 1)


# -- events export -----------------------------------------------------------------------------


def test_export_csv_columns_and_values(
    capsys: pytest.CaptureFixture[str], ledger_env: dict[str, str], upstream: StandIn, db_url: str
) -> None:
    make_calls(upstream, db_url)
    header, rows = parse_csv(export(capsys, db_url, "csv"))
    assert header == COLUMNS
    db = {r["event_id"]: r for r in fetch_events(db_url, "kind = 'usage'")}
    assert len(db) == len(STANDARD_MIX) == len(rows)
    assert [r["event_id"] for r in rows] == [r["event_id"] for r in fetch_events(db_url, "kind = 'usage'")]
    for r in rows:
        d = db[r["event_id"]]
        assert r["occurred_at"].endswith("Z")
        assert datetime.fromisoformat(r["occurred_at"]) == as_utc(d["occurred_at"])
        assert r["project"] == d["project"] and r["route"] == d["route"] and r["status"] == d["status"]
        assert r["model"] == (d["served_model"] or d["requested_model"])
        for b in ("stream", "free", "priced"):
            assert r[b] in ("true", "false")
            assert (r[b] == "true") is bool(d[b])
        if d["cost_nanos"] is None:
            assert r["cost_usd"] == ""
        else:
            assert r["cost_usd"] == nanos_str(d["cost_nanos"])
            assert Decimal(r["cost_usd"]) * 10**9 == d["cost_nanos"]
        for t in ("prompt_tokens", "cached_tokens", "completion_tokens", "reasoning_tokens", "total_tokens"):
            assert r[t] == ("" if d[t] is None else str(d[t]))
        assert r["http_status"] == ("" if d["http_status"] is None else str(d["http_status"]))
        tags = json.loads(r["tags"])
        assert isinstance(tags, dict) and tags == json.loads(d["tags"])
    by_model = {(r["project"], r["model"], r["status"], r["stream"]): r for r in rows}
    paid = by_model[("alpha", "gpt-oss-120b", "ok", "false")]
    assert json.loads(paid["tags"]) == {"env": "prod", "user": "ana"}
    assert Decimal(paid["cost_usd"]) > 0 and paid["priced"] == "true" and paid["free"] == "false"
    unpriced = by_model[("beta", "mystery-model-9000", "ok", "false")]
    assert unpriced["cost_usd"] == "" and unpriced["priced"] == "false"
    free = by_model[("beta", "llama3.1-8b", "ok", "false")]
    assert free["cost_usd"] == "0.000000000" and free["free"] == "true"
    err = by_model[("beta", "gpt-oss-120b", "error", "false")]
    assert json.loads(by_model[("alpha", "gpt-oss-120b", "ok", "true")]["tags"]) == {}
    assert err["http_status"] == "429" and err["prompt_tokens"] == "" and err["cost_usd"] == "0.000000000"


def test_export_jsonl_and_project_filter(
    capsys: pytest.CaptureFixture[str], ledger_env: dict[str, str], upstream: StandIn, db_url: str
) -> None:
    make_calls(upstream, db_url)
    lines = export(capsys, db_url, "jsonl").splitlines()
    rows = [json.loads(line) for line in lines]
    assert len(rows) == len(STANDARD_MIX)
    db = {r["event_id"]: r for r in fetch_events(db_url, "kind = 'usage'")}
    for r in rows:
        assert list(r) == COLUMNS
        assert r["occurred_at"].endswith("Z")
        assert isinstance(r["stream"], bool) and isinstance(r["free"], bool) and isinstance(r["priced"], bool)
        assert isinstance(r["tags"], dict)
        d = db[r["event_id"]]
        assert r["cost_usd"] == (None if d["cost_nanos"] is None else nanos_str(d["cost_nanos"]))
        assert r["total_tokens"] == d["total_tokens"]
    alpha = [json.loads(x) for x in export(capsys, db_url, "jsonl", "--project", "alpha").splitlines()]
    assert {r["project"] for r in alpha} == {"alpha"}
    assert len(alpha) == sum(1 for m in STANDARD_MIX if m[0] == "alpha")
    _, beta = parse_csv(export(capsys, db_url, "csv", "--project", "beta"))
    assert {r["project"] for r in beta} == {"beta"} and len(beta) == sum(
        1 for m in STANDARD_MIX if m[0] == "beta"
    )
    _, none = parse_csv(export(capsys, db_url, "csv", "--project", "nobody"))
    assert none == []


def test_export_window_excludes_other_periods(
    capsys: pytest.CaptureFixture[str], ledger_env: dict[str, str], upstream: StandIn, db_url: str
) -> None:
    make_calls(upstream, db_url, STANDARD_MIX[:2])
    out = ok(capsys, db_url, "events", "export", "--since", "2020-01-01", "--until", "2020-02-01")
    assert out.splitlines() == [",".join(COLUMNS)]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_export_out_writes_the_file(
    capsys: pytest.CaptureFixture[str],
    ledger_env: dict[str, str],
    upstream: StandIn,
    db_url: str,
    tmp_path: Path,
    fmt: str,
) -> None:
    make_calls(upstream, db_url)
    target = tmp_path / f"out.{fmt}"
    since, until = window()
    code, out, err = run_db(
        capsys,
        db_url,
        "events",
        "export",
        "--since",
        since,
        "--until",
        until,
        "--format",
        fmt,
        "--out",
        str(target),
    )
    assert code == 0, err
    assert out == ""
    assert f"wrote {len(STANDARD_MIX)} event(s)" in err
    assert target.read_text(encoding="utf-8") == export(capsys, db_url, fmt)
    assert not (tmp_path / f"out.{fmt}.part").exists()


# -- events import -----------------------------------------------------------------------------


def test_import_round_trip(
    capsys: pytest.CaptureFixture[str],
    env_per_url: dict[str, str],
    upstream: StandIn,
    db_url: str,
    tmp_path: Path,
) -> None:
    source = f"sqlite:///{tmp_path / 'source.db'}"
    make_calls(upstream, source)
    since, until = window()
    for fmt in ("csv", "jsonl"):
        target = tmp_path / f"events.{fmt}"
        ok(
            capsys,
            source,
            "events",
            "export",
            "--since",
            since,
            "--until",
            until,
            "--format",
            fmt,
            "--out",
            str(target),
        )
    fresh = db_url  # empty: SQLite->SQLite, or SQLite->PostgreSQL
    out = ok(capsys, fresh, "events", "import", str(tmp_path / "events.csv"))
    assert f"{len(STANDARD_MIX)} row(s) read; {len(STANDARD_MIX)} new, 0 already present" in out
    assert export(capsys, fresh, "csv") == export(capsys, source, "csv")
    assert export(capsys, fresh, "jsonl") == export(capsys, source, "jsonl")
    src_sum = sql_rows(source, "SELECT SUM(cost_nanos), COUNT(*) FROM events")[0]
    dst_sum = sql_rows(fresh, "SELECT SUM(cost_nanos), COUNT(*) FROM events")[0]
    assert int(src_sum[0]) == int(dst_sum[0]) and src_sum[1] == dst_sum[1]
    _, rows = parse_csv(export(capsys, fresh, "csv"))
    assert sum(Decimal(r["cost_usd"] or 0) for r in rows) == Decimal(int(src_sum[0])).scaleb(-9)
    assert {r["source"] for r in fetch_events(fresh)} == {"import"}

    # a second import (either format) changes nothing and says so
    before = count_rows(fresh)
    for name in ("events.csv", "events.jsonl"):
        out = ok(capsys, fresh, "events", "import", str(tmp_path / name))
        assert f"{len(STANDARD_MIX)} row(s) read; 0 new, {len(STANDARD_MIX)} already present" in out
    assert count_rows(fresh) == before
    assert int(sql_rows(fresh, "SELECT SUM(cost_nanos) FROM events")[0][0]) == int(src_sum[0])


def test_import_format_detected_from_content(
    capsys: pytest.CaptureFixture[str],
    env_per_url: dict[str, str],
    upstream: StandIn,
    db_url: str,
    tmp_path: Path,
) -> None:
    source = f"sqlite:///{tmp_path / 'source.db'}"
    make_calls(upstream, source, STANDARD_MIX[:3])
    (tmp_path / "noext").write_text(export(capsys, source, "jsonl"), encoding="utf-8")
    out = ok(capsys, db_url, "events", "import", str(tmp_path / "noext"))
    assert "3 row(s) read; 3 new" in out
    assert count_rows(db_url) == 3


def _rows_for(capsys: pytest.CaptureFixture[str], url: str, fmt: str) -> list[dict[str, Any]]:
    text = export(capsys, url, fmt)
    if fmt == "csv":
        return parse_csv(text)[1]
    return [json.loads(x) for x in text.splitlines()]


def _write_rows(
    path: Path, rows: list[dict[str, Any]], fmt: str, raw_line: Callable[[int, str], bytes] | None = None
) -> None:
    """Write rows as an import file; ``raw_line(index, text)`` may replace a line's bytes."""
    lines: list[str] = []
    if fmt == "csv":
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(COLUMNS)
        lines.append(buf.getvalue())
        for r in rows:
            buf = io.StringIO()
            csv.writer(buf, lineterminator="\n").writerow([r[c] for c in COLUMNS if c in r])
            lines.append(buf.getvalue())
    else:
        lines = [json.dumps(r) + "\n" for r in rows]
    data = b""
    offset = 1 if fmt == "csv" else 0
    for i, text in enumerate(lines):
        idx = i - offset
        data += raw_line(idx, text) if raw_line and idx >= 0 else text.encode("utf-8")
    path.write_bytes(data)


BAD_ROWS: dict[str, Callable[[dict[str, Any]], None]] = {
    "bad-date": lambda r: r.update(occurred_at="2026-02-30T10:00:00Z"),
    "negative-tokens": lambda r: r.update(prompt_tokens=-5 if isinstance(r["prompt_tokens"], int) else "-5"),
    "bad-cost": lambda r: r.update(cost_usd="1.2.3"),
    "bad-uuid": lambda r: r.update(event_id="not-a-uuid"),
    "missing-column": lambda r: r.pop("tags"),
    "non-utf8": lambda r: r.update(project="PROJ-PLACEHOLDER"),
}


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
@pytest.mark.parametrize("kind", list(BAD_ROWS))
def test_import_bad_row_imports_nothing(
    capsys: pytest.CaptureFixture[str],
    ledger_env: dict[str, str],
    upstream: StandIn,
    db_url: str,
    tmp_path: Path,
    fmt: str,
    kind: str,
) -> None:
    make_calls(upstream, db_url)
    rows = _rows_for(capsys, db_url, fmt)
    for r in rows:
        r["event_id"] = str(uuid.uuid4())  # all new to this ledger: a half import would show
    bad = 2  # the third row, in the middle of six
    assert rows[bad]["prompt_tokens"] not in ("", None)
    BAD_ROWS[kind](rows[bad])

    def raw(idx: int, text: str) -> bytes:
        data = text.encode("utf-8")
        return data.replace(b"PROJ-PLACEHOLDER", b"caf\xe9") if idx == bad else data

    path = tmp_path / f"bad.{fmt}"
    _write_rows(path, rows, fmt, raw)
    line_no = bad + (2 if fmt == "csv" else 1)
    before = count_rows(db_url)
    code, out, err = run_db(capsys, db_url, "events", "import", str(path))
    assert code == 1 and "Traceback" not in err
    last = err.splitlines()[-1]
    assert last.startswith("error: ")
    assert f"line {line_no}" in last, last
    assert count_rows(db_url) == before
    assert "new" not in out


def test_import_error_is_the_only_stderr_line(
    capsys: pytest.CaptureFixture[str],
    ledger_env: dict[str, str],
    upstream: StandIn,
    db_url: str,
    tmp_path: Path,
) -> None:
    make_calls(upstream, db_url, STANDARD_MIX[:3])
    rows = _rows_for(capsys, db_url, "csv")
    rows[1]["event_id"] = "not-a-uuid"
    path = tmp_path / "bad.csv"
    _write_rows(path, rows, "csv")
    code, _, err = run_db(capsys, db_url, "events", "import", str(path))
    assert "line 3" in assert_one_error(code, err, 1)


def test_import_bad_header_and_duplicates(
    capsys: pytest.CaptureFixture[str],
    ledger_env: dict[str, str],
    upstream: StandIn,
    db_url: str,
    tmp_path: Path,
) -> None:
    make_calls(upstream, db_url, STANDARD_MIX[:3])
    text = export(capsys, db_url, "csv")
    before = count_rows(db_url)
    (tmp_path / "hdr.csv").write_text(text.replace("upstream_id,", ""), encoding="utf-8")
    code, _, err = run_db(capsys, db_url, "events", "import", str(tmp_path / "hdr.csv"))
    assert code == 1 and "line 1" in err.splitlines()[-1]
    rows = _rows_for(capsys, db_url, "jsonl")
    for r in rows:
        r["event_id"] = str(uuid.uuid4())
    rows.append(dict(rows[0]))
    _write_rows(tmp_path / "dup.jsonl", rows, "jsonl")
    code, _, err = run_db(capsys, db_url, "events", "import", str(tmp_path / "dup.jsonl"))
    assert code == 1 and "line 4" in err.splitlines()[-1] and "twice" in err
    assert count_rows(db_url) == before


def test_import_rows_without_cost_are_priced_from_the_book(
    capsys: pytest.CaptureFixture[str],
    env_per_url: dict[str, str],
    upstream: StandIn,
    db_url: str,
    tmp_path: Path,
) -> None:
    source = f"sqlite:///{tmp_path / 'source.db'}"
    make_calls(upstream, source)
    rows = _rows_for(capsys, source, "csv")
    for r in rows:
        r["cost_usd"] = ""
        r["free"] = "false"
    _write_rows(tmp_path / "nocost.csv", rows, "csv")
    out = ok(capsys, db_url, "events", "import", str(tmp_path / "nocost.csv"))
    assert f"{len(rows)} new" in out
    got = {r["event_id"]: r for r in fetch_events(db_url)}
    for r in rows:
        g = got[r["event_id"]]
        if r["status"] == "error":
            assert g["cost_nanos"] == 0 and bool(g["priced"])
        elif r["model"] == "gpt-oss-120b":
            assert g["price_id"] == BUILTIN_GPT and bool(g["priced"]) and not bool(g["free"])
            assert g["cost_nanos"] == int(r["prompt_tokens"]) * 350 + int(r["completion_tokens"]) * 750
        elif r["model"] == "llama3.1-8b":  # lava route: the lava book, where it is free
            assert g["price_id"] == "lava/llama3.1-8b@2024-01-01T00:00:00Z"
            assert g["cost_nanos"] == 0 and bool(g["free"]) and bool(g["priced"])
        elif r["model"] == "qwen-3-235b-instruct":
            assert g["cost_nanos"] == int(r["prompt_tokens"]) * 600 + int(r["completion_tokens"]) * 1200
        elif r["model"] == "mystery-model-9000":
            assert g["cost_nanos"] is None and not bool(g["priced"]) and g["price_id"] is None
    assert export(capsys, db_url, "csv") == export(capsys, source, "csv")  # same book, same costs


# -- prices ------------------------------------------------------------------------------------


def test_prices_list_lava_book_is_the_seed_table(
    capsys: pytest.CaptureFixture[str], ledger_env: dict[str, str], db_url: str
) -> None:
    rows = json.loads(ok(capsys, db_url, "prices", "list", "--book", "lava", "--format", "json"))
    assert {
        r["model"]: (Decimal(r["input_per_m"]), Decimal(r["output_per_m"]), r["free"]) for r in rows
    } == LAVA_SEED
    assert len(rows) == len(LAVA_SEED) and {r["book"] for r in rows} == {"lava"}
    _, csv_rows = parse_csv(ok(capsys, db_url, "prices", "list", "--book", "lava", "--format", "csv"))
    assert {r["model"]: (Decimal(r["input_per_m"]), Decimal(r["output_per_m"])) for r in csv_rows} == {
        m: v[:2] for m, v in LAVA_SEED.items()
    }
    table = ok(capsys, db_url, "prices", "list", "--book", "lava").splitlines()
    assert table[0].split()[:3] == ["book", "model", "effective_from"] and set(table[1]) <= {"-", " "}
    assert len(table) == 2 + len(LAVA_SEED)
    assert {line.split()[1] for line in table[2:]} == set(LAVA_SEED)
    everything = json.loads(ok(capsys, db_url, "prices", "list", "--format", "json"))
    assert {r["book"] for r in everything} == {"lava", "cerebras"}
    assert any(r["model"] == "gpt-oss-120b" and r["book"] == "cerebras" for r in everything)


def test_prices_add_applies_to_later_calls_only(
    capsys: pytest.CaptureFixture[str], ledger_env: dict[str, str], upstream: StandIn, db_url: str
) -> None:
    one = [("alpha", "cerebras", "gpt-oss-120b", False, None, None)]
    make_calls(upstream, db_url, one)
    out = ok(
        capsys,
        db_url,
        "prices",
        "add",
        "--book",
        "cerebras",
        "--model",
        "gpt-oss-120b",
        "--input",
        "1.00",
        "--output",
        "2.00",
    )
    assert out.startswith("added cerebras/gpt-oss-120b@")
    new_id = out.split()[1]
    make_calls(upstream, db_url, one)
    first, second = fetch_events(db_url)
    assert first["price_id"] == BUILTIN_GPT
    assert first["cost_nanos"] == first["prompt_tokens"] * 350 + first["completion_tokens"] * 750
    assert second["price_id"] == new_id
    assert second["cost_nanos"] == second["prompt_tokens"] * 1000 + second["completion_tokens"] * 2000
    listed = json.loads(ok(capsys, db_url, "prices", "list", "--book", "cerebras", "--format", "json"))
    point = next(p for p in listed if p["price_id"] == new_id)
    assert (point["input_per_m"], point["output_per_m"], point["source"]) == ("1", "2", "manual")
    # the same point again is refused, in one line
    code, _, err = run_db(
        capsys,
        db_url,
        "prices",
        "add",
        "--book",
        "cerebras",
        "--model",
        "gpt-oss-120b",
        "--input",
        "1.00",
        "--output",
        "2.00",
        "--from",
        point["effective_from"],
    )
    assert "already exists" in assert_one_error(code, err, 1)


def test_prices_check_lists_unpriced_models(
    capsys: pytest.CaptureFixture[str], ledger_env: dict[str, str], upstream: StandIn, db_url: str
) -> None:
    make_calls(upstream, db_url, [STANDARD_MIX[0]])
    code, out, err = run_db(capsys, db_url, "prices", "check")
    assert code == 0, err
    assert "every event with known usage is priced" in out
    make_calls(upstream, db_url, [STANDARD_MIX[3], STANDARD_MIX[3]])  # mystery-model-9000, twice
    code, out, _ = run_db(capsys, db_url, "prices", "check")
    assert "mystery-model-9000" in out and "cerebras" in out
    assert code == 1
    code, out, _ = run_db(capsys, db_url, "prices", "check", "--format", "json")
    assert json.loads(out) == [
        {
            "book": "cerebras",
            "model": "mystery-model-9000",
            "events": 2,
            "tokens": 2 * fetch_events(db_url, "served_model = 'mystery-model-9000'")[0]["total_tokens"],
        }
    ]
    assert code == 1


def test_prices_check_exit_code_via_console_script(
    tmp_path: Path, ledger_env: dict[str, str], upstream: StandIn, db_url: str
) -> None:
    make_calls(upstream, db_url, [STANDARD_MIX[3]])
    proc = run_process(
        [str(CONSOLE_SCRIPT), "--database-url", db_url, "prices", "check"],
        subprocess_env(tmp_path / "home"),
        tmp_path,
    )
    assert "mystery-model-9000" in proc.stdout
    assert proc.returncode == 1


def test_pricing_an_unpriced_model_then_reprice(
    capsys: pytest.CaptureFixture[str], ledger_env: dict[str, str], upstream: StandIn, db_url: str
) -> None:
    make_calls(upstream, db_url, [STANDARD_MIX[3]])
    ok(
        capsys,
        db_url,
        "prices",
        "add",
        "--book",
        "cerebras",
        "--model",
        "mystery-model-9000",
        "--input",
        "2",
        "--output",
        "4",
        "--from",
        "2024-01-01",
    )
    since, until = window()
    out = ok(capsys, db_url, "prices", "reprice", "--since", since, "--until", until)
    assert "wrote 1 correction(s)" in out
    (event,) = fetch_events(db_url, "kind = 'usage'")
    expected = event["prompt_tokens"] * 2000 + event["completion_tokens"] * 4000
    # a correction is a reversal (the unpriced charge, negated) plus a restatement at the new price
    reversal, restatement = sorted(
        fetch_events(db_url, "kind = 'correction'"), key=lambda r: r["note"] != "reversal"
    )
    assert reversal["note"] == "reversal" and restatement["note"] == "restatement"
    assert reversal["corrects_event_id"] == restatement["corrects_event_id"] == event["event_id"]
    assert reversal["cost_nanos"] is None and not reversal["priced"]
    assert reversal["total_tokens"] == -event["total_tokens"]
    assert restatement["cost_nanos"] == expected and restatement["priced"]
    assert restatement["total_tokens"] == event["total_tokens"]
    code, out, _ = run_db(capsys, db_url, "prices", "check")
    assert code == 0 and "every event with known usage is priced" in out
    (row,) = parse_csv(export(capsys, db_url, "csv"))[1]
    assert row["cost_usd"] == nanos_str(expected)  # the export shows the current cost
    summary = json.loads(ok(capsys, db_url, "summary", "--format", "json"))
    assert summary[0]["paid_usd"] == nanos_str(expected)


def test_prices_sync_adds_only_changed_prices(
    capsys: pytest.CaptureFixture[str], ledger_env: dict[str, str], upstream: StandIn, db_url: str
) -> None:
    upstream.models_feed["data"].append(
        {
            "id": "llama3.1-8b",
            "object": "model",
            "pricing": {"prompt": "0.0000001", "completion": "0.0000001"},
        }
    )
    feed = ("--feed-url", upstream.base_url)
    out = ok(capsys, db_url, "prices", "sync", *feed)  # the feed matches the built-in book
    assert "added 0 price point(s)" in out
    before = price_rows(db_url)
    upstream.models_feed["data"][0]["pricing"] = {"prompt": "0.0000004", "completion": "0.0000008"}
    out = ok(capsys, db_url, "prices", "sync", "--dry-run", *feed)
    assert "would add 1 price point(s)" in out and "gpt-oss-120b" in out
    assert price_rows(db_url) == before
    out = ok(capsys, db_url, "prices", "sync", *feed)
    assert "added 1 price point(s)" in out
    after = price_rows(db_url)
    (new,) = [p for p in after if p["price_id"] not in {b["price_id"] for b in before}]
    assert (new["book"], new["model"], new["input_nanos"], new["output_nanos"], new["source"]) == (
        "cerebras",
        "gpt-oss-120b",
        400,
        800,
        "sync",
    )
    assert len(after) == len(before) + 1
    out = ok(capsys, db_url, "prices", "sync", "--format", "json", *feed)  # nothing changed since
    assert json.loads(out) == [] and len(price_rows(db_url)) == len(after)


@pytest.mark.parametrize("feed", [{"object": "list"}, {"data": "nope"}, ["not", "a", "mapping"]])
def test_prices_sync_malformed_feed(
    capsys: pytest.CaptureFixture[str], ledger_env: dict[str, str], upstream: StandIn, db_url: str, feed: Any
) -> None:
    upstream.models_feed = feed
    code, out, err = run_db(capsys, db_url, "prices", "sync", "--feed-url", upstream.base_url)
    assert "feed" in assert_one_error(code, err, 1)
    assert out == ""


def test_prices_sync_unreachable_feed(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run_db(
        capsys, f"sqlite:///{tmp_path / 'l.db'}", "prices", "sync", "--feed-url", "http://127.0.0.1:1"
    )
    assert "unreachable" in assert_one_error(code, err, 1)


def test_reprice_writes_corrections_once(
    capsys: pytest.CaptureFixture[str], ledger_env: dict[str, str], upstream: StandIn, db_url: str
) -> None:
    make_calls(upstream, db_url)
    original = {r["event_id"]: r for r in fetch_events(db_url)}
    yesterday = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    added = ok(
        capsys,
        db_url,
        "prices",
        "add",
        "--book",
        "cerebras",
        "--model",
        "gpt-oss-120b",
        "--input",
        "0.50",
        "--output",
        "1.00",
        "--from",
        yesterday,
    ).split()[1]
    since, until = window()
    dry = ok(capsys, db_url, "prices", "reprice", "--since", since, "--until", until, "--dry-run")
    assert "would write 2 correction(s)" in dry
    assert count_rows(db_url) == len(original)
    out = ok(capsys, db_url, "prices", "reprice", "--since", since, "--until", until)
    assert f"examined {len(STANDARD_MIX) - 1} event(s); wrote 2 correction(s)" in out  # the 429 has no usage
    fixes = fetch_events(db_url, "kind = 'correction'")
    targets = {
        eid
        for eid, r in original.items()
        if r["route"] == "cerebras" and r["served_model"] == "gpt-oss-120b" and r["usage_known"]
    }
    assert {f["corrects_event_id"] for f in fixes} == targets and len(
        fixes
    ) == 4  # reversal + restatement each
    total = 0
    for f in fixes:
        o = original[f["corrects_event_id"]]
        assert f["project"] == o["project"] and f["occurred_at"] == o["occurred_at"]
        if f["note"] == "reversal":
            assert f["cost_nanos"] == -o["cost_nanos"] and f["price_id"] == o["price_id"]
            assert f["total_tokens"] == -o["total_tokens"]
        else:
            assert f["note"] == "restatement" and f["price_id"] == added
            assert f["cost_nanos"] == o["prompt_tokens"] * 500 + o["completion_tokens"] * 1000
        total += f["cost_nanos"]
    assert f"totalling {nanos_str(total)} USD" in out
    # the originals are untouched
    for eid, r in original.items():
        assert fetch_events(db_url, f"event_id = '{eid}'")[0] == r
    # a second run writes nothing
    again = ok(capsys, db_url, "prices", "reprice", "--since", since, "--until", until)
    assert "wrote 0 correction(s)" in again
    assert len(fetch_events(db_url, "kind = 'correction'")) == 4
    # the export shows the corrected cost, and still one row per call
    _, rows = parse_csv(export(capsys, db_url, "csv"))
    assert len(rows) == len(STANDARD_MIX)
    for r in rows:
        o = original[r["event_id"]]
        if r["event_id"] in targets:
            assert r["cost_usd"] == nanos_str(o["prompt_tokens"] * 500 + o["completion_tokens"] * 1000)
        else:
            assert r["cost_usd"] == ("" if o["cost_nanos"] is None else nanos_str(o["cost_nanos"]))
    # --project limits the re-pricing
    ok(
        capsys,
        db_url,
        "prices",
        "add",
        "--book",
        "lava",
        "--model",
        "qwen-3-235b-instruct",
        "--input",
        "1",
        "--output",
        "2",
        "--from",
        yesterday,
    )
    out = ok(capsys, db_url, "prices", "reprice", "--since", since, "--until", until, "--project", "beta")
    assert "wrote 0 correction(s)" in out
    out = ok(capsys, db_url, "prices", "reprice", "--since", since, "--until", until, "--project", "alpha")
    assert "wrote 1 correction(s)" in out


# -- summary -----------------------------------------------------------------------------------


SQL_TOTALS = """
SELECT project,
       SUM(CASE WHEN kind = 'usage' THEN 1 ELSE 0 END),
       SUM(CASE WHEN kind = 'usage' AND status = 'error' THEN 1 ELSE 0 END),
       SUM(CASE WHEN kind = 'usage' AND status = 'incomplete' THEN 1 ELSE 0 END),
       COALESCE(SUM(total_tokens), 0),
       COALESCE(SUM(CASE WHEN free THEN 0 ELSE cost_nanos END), 0),
       SUM(CASE WHEN kind = 'usage' AND free THEN 1 ELSE 0 END),
       COALESCE(SUM(CASE WHEN free THEN total_tokens ELSE 0 END), 0),
       SUM(CASE WHEN kind = 'usage' AND NOT priced AND status = 'ok' THEN 1 ELSE 0 END)
FROM events WHERE {where} GROUP BY project ORDER BY project
"""
SUMMARY_KEYS = (
    "calls",
    "errors",
    "incomplete",
    "tokens",
    "paid_usd",
    "free_calls",
    "free_tokens",
    "unpriced",
)


def sql_totals(url: str, where: str = "1=1") -> dict[str, dict[str, Any]]:
    return {
        r[0]: dict(
            zip(
                SUMMARY_KEYS,
                [
                    int(r[1]),
                    int(r[2]),
                    int(r[3]),
                    int(r[4]),
                    nanos_str(int(r[5])),
                    int(r[6]),
                    int(r[7]),
                    int(r[8]),
                ],
                strict=True,
            )
        )
        for r in sql_rows(url, SQL_TOTALS.format(where=where))
    }


def test_summary_json_equals_sql_sums(
    capsys: pytest.CaptureFixture[str], ledger_env: dict[str, str], upstream: StandIn, db_url: str
) -> None:
    make_calls(upstream, db_url)
    ok(
        capsys,
        db_url,
        "prices",
        "add",
        "--book",
        "cerebras",
        "--model",
        "gpt-oss-120b",
        "--input",
        "0.50",
        "--output",
        "1.00",
        "--from",
        "2024-06-01",
    )
    since, until = window()
    ok(capsys, db_url, "prices", "reprice", "--since", since, "--until", until)  # corrections count too
    got = {r.pop("project"): r for r in json.loads(ok(capsys, db_url, "summary", "--format", "json"))}
    want = sql_totals(db_url)
    assert got == want and set(got) == {"alpha", "beta"}
    assert want["alpha"]["calls"] == 3 and want["beta"]["unpriced"] == 1 and want["beta"]["errors"] == 1
    # paid cost, rebuilt from the individual rows
    paid = sum(r["cost_nanos"] or 0 for r in fetch_events(db_url) if not r["free"])
    assert sum(Decimal(r["paid_usd"]) for r in got.values()) == Decimal(paid).scaleb(-9)
    # outside the period: nothing
    assert (
        json.loads(
            ok(
                capsys,
                db_url,
                "summary",
                "--since",
                "2020-01-01",
                "--until",
                "2020-02-01",
                "--format",
                "json",
            )
        )
        == []
    )
    _, csv_rows = parse_csv(ok(capsys, db_url, "summary", "--format", "csv"))
    assert {r["project"]: r["paid_usd"] for r in csv_rows} == {p: v["paid_usd"] for p, v in want.items()}


# -- db ----------------------------------------------------------------------------------------


def _tables(url: str) -> set[str]:
    engine = store.make_engine(url)
    try:
        with engine.connect() as conn:
            return set(sa.inspect(conn).get_table_names())
    finally:
        engine.dispose()


def test_db_upgrade_current_downgrade(
    capsys: pytest.CaptureFixture[str], ledger_env: dict[str, str], db_url: str
) -> None:
    assert ok(capsys, db_url, "db", "current").strip() == "base (empty)"
    assert ok(capsys, db_url, "db", "upgrade").strip().endswith(f"is at revision {SCHEMA_REVISION}")
    assert ok(capsys, db_url, "db", "current").strip() == SCHEMA_REVISION
    assert {"events", "prices"} <= _tables(db_url)
    assert (
        ok(capsys, db_url, "db", "upgrade").strip().endswith(f"is at revision {SCHEMA_REVISION}")
    )  # idempotent
    assert ok(capsys, db_url, "db", "downgrade", "base").strip().endswith("is at revision base")
    assert not {"events", "prices"} & _tables(db_url)
    assert ok(capsys, db_url, "db", "current").strip() == "base (empty)"
    assert ok(capsys, db_url, "db", "upgrade").strip().endswith(f"is at revision {SCHEMA_REVISION}")
    assert ok(capsys, db_url, "db", "current").strip() == SCHEMA_REVISION
    assert {"events", "prices"} <= _tables(db_url)
    code, _, err = run_db(capsys, db_url, "db", "downgrade", "no-such-revision")
    assert_one_error(code, err, 1)


def test_db_upgrade_then_calls_are_priced(
    capsys: pytest.CaptureFixture[str], ledger_env: dict[str, str], upstream: StandIn, db_url: str
) -> None:
    """``db upgrade`` is the documented way to create a ledger; the result must hold the built-in book."""
    ok(capsys, db_url, "db", "upgrade")
    rows = json.loads(ok(capsys, db_url, "prices", "list", "--book", "lava", "--format", "json"))
    assert {r["model"] for r in rows} == set(LAVA_SEED)
    make_calls(upstream, db_url, [STANDARD_MIX[0]])
    (row,) = fetch_events(db_url)
    assert bool(row["priced"]) and row["price_id"] == BUILTIN_GPT


def test_db_downgrade_then_first_use_recreates_the_ledger(
    capsys: pytest.CaptureFixture[str], ledger_env: dict[str, str], db_url: str
) -> None:
    ok(capsys, db_url, "prices", "list")  # first use creates and seeds
    ok(capsys, db_url, "db", "downgrade", "base")
    rows = json.loads(ok(capsys, db_url, "prices", "list", "--book", "lava", "--format", "json"))
    assert {r["model"] for r in rows} == set(LAVA_SEED)
    assert ok(capsys, db_url, "db", "current").strip() == SCHEMA_REVISION


# -- demo --------------------------------------------------------------------------------------


def test_demo_creates_the_default_ledger_and_prints_a_table(tmp_path: Path) -> None:
    home = tmp_path / "fresh-home"
    proc = run_process([str(CONSOLE_SCRIPT), "demo", "--calls", "30"], subprocess_env(home), tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    db_file = home / "ledger.db"
    assert db_file.is_file() and db_file.stat().st_size > 0
    lines = proc.stdout.splitlines()
    assert lines[0] == f"ledger: sqlite:///{db_file}"
    assert lines[1].split() == [
        "project",
        "calls",
        "errors",
        "incomplete",
        "tokens",
        "paid_usd",
        "free_calls",
        "free_tokens",
        "unpriced",
    ]
    body = {line.split()[0]: line.split() for line in lines[3:]}
    assert set(body) == set(DEMO_PROJECTS)
    assert sum(int(v[1]) for v in body.values()) == 30
    # the run's own calls (the first demo also writes weeks of history, as imported events)
    assert count_rows(f"sqlite:///{db_file}", where="source = 'wrapper'") == 30


def test_demo_json_totals_equal_sql(tmp_path: Path) -> None:
    home = tmp_path / "home"
    proc = run_process(
        [str(CONSOLE_SCRIPT), "demo", "--calls", "40", "--format", "json"], subprocess_env(home), tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    got = {r.pop("project"): r for r in json.loads(proc.stdout)}
    assert set(got) == set(DEMO_PROJECTS)
    url = f"sqlite:///{home / 'ledger.db'}"
    assert got == sql_totals(url, where="source = 'wrapper'")  # this run's calls, not the history
    assert sum(r["calls"] for r in got.values()) == 40
    assert any(Decimal(r["paid_usd"]) > 0 for r in got.values())


def test_demo_on_an_unusable_database_is_one_line(tmp_path: Path) -> None:
    proc = run_process(
        [
            str(CONSOLE_SCRIPT),
            "--database-url",
            "postgresql://postgres@127.0.0.1:1/test",
            "demo",
            "--calls",
            "3",
        ],
        subprocess_env(tmp_path / "home"),
        tmp_path,
    )
    assert_one_error(proc.returncode, proc.stderr, 1)
    assert proc.stdout == ""
