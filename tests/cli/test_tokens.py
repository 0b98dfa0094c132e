"""``tokens create|list|revoke`` and ``serve`` from the command line: the token is printed once and
stored as a hash, every format works, bad input is one ``error:`` line, and ``serve`` on a port
that is taken says so in one line. Real subprocesses, real SQLite files and PostgreSQL."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import sqlalchemy as sa

from ledger import store
from ledger.service.auth import authenticate
from tests.cli.test_cli import CONSOLE_SCRIPT, assert_one_error, run_process, subprocess_env


def _cli(db_url: str, tmp_path: Path, *args: str) -> tuple[int, str, str]:
    env = subprocess_env(tmp_path / "home", LEDGER_DATABASE_URL=db_url)
    proc = run_process([str(CONSOLE_SCRIPT), *args], env, tmp_path)
    return proc.returncode, proc.stdout, proc.stderr


def test_tokens_create_list_revoke(db_url: str, tmp_path: Path) -> None:
    code, out, err = _cli(
        db_url, tmp_path, "tokens", "create", "--role", "viewer", "--project", "alpha", "--expires", "90d"
    )
    assert code == 0, err
    token = out.strip()
    assert token.startswith("clg_") and len(out.splitlines()) == 1 and "shown once" in err
    code, out, _ = _cli(
        db_url, tmp_path, "tokens", "create", "--role", "admin", "--format", "json", "--label", "ops"
    )
    admin = json.loads(out)[0]
    assert code == 0 and admin["role"] == "admin" and admin["projects"] == "*"
    engine = store.make_engine(db_url)
    try:
        principal = authenticate(engine, token)
        assert principal is not None and principal.projects == frozenset({"alpha"}) and not principal.is_admin
        with engine.connect() as conn:
            stored = json.dumps(
                [list(map(str, r)) for r in conn.execute(sa.text("SELECT * FROM api_tokens"))]
            )
        assert token.rsplit("_", 1)[1] not in stored and admin["token"].rsplit("_", 1)[1] not in stored
        code, out, _ = _cli(db_url, tmp_path, "tokens", "list", "--format", "csv")
        assert code == 0 and out.splitlines()[0].startswith("token_id,role,projects")
        assert token not in out and admin["token"] not in out and len(out.splitlines()) == 3
        token_id = token.split("_")[1]
        code, out, _ = _cli(db_url, tmp_path, "tokens", "revoke", token_id)
        assert code == 0 and authenticate(engine, token) is None
        code, _, err = _cli(db_url, tmp_path, "tokens", "revoke", token_id)
        assert_one_error(code, err, 1)
    finally:
        engine.dispose()


def test_bad_token_requests_are_one_line(db_url: str, tmp_path: Path) -> None:
    for args, code_wanted in (
        (("tokens", "create", "--role", "admin", "--project", "x"), 1),
        (("tokens", "create", "--role", "viewer", "--expires", "forever"), 1),
        (("tokens", "create", "--role", "viewer", "--project", "=evil"), 1),
        (("tokens", "create", "--role", "root"), 2),
    ):
        code, _, err = _cli(db_url, tmp_path, *args)
        if code_wanted == 2:
            assert code == 2 and "Traceback" not in err
        else:
            assert_one_error(code, err, 1)


def test_serve_on_a_taken_port_is_one_line(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        code, _, err = _cli(f"sqlite:///{tmp_path / 'l.db'}", tmp_path, "serve", "--port", str(port))
    line = assert_one_error(code, err, 1)  # bound before anything starts: no "listening" line
    assert "cannot listen" in line and str(port) in line


def test_every_service_command_has_help_with_an_example(tmp_path: Path) -> None:
    for args in (("serve",), ("tokens",), ("tokens", "create"), ("tokens", "list"), ("tokens", "revoke")):
        code, out, _ = _cli(f"sqlite:///{tmp_path / 'l.db'}", tmp_path, *args, "--help")
        assert code == 0 and "Example:" in out and "cerebras-ledger" in out, args


def test_serve_with_a_bad_setting_is_one_line(tmp_path: Path) -> None:
    env = subprocess_env(tmp_path / "home", LEDGER_SERVICE_METRICS_MAX_PROJECTS="lots")
    proc = run_process([str(CONSOLE_SCRIPT), "serve", "--port", "0"], env, tmp_path)
    line = assert_one_error(proc.returncode, proc.stderr, 1)
    assert "LEDGER_SERVICE_METRICS_MAX_PROJECTS must be a whole number" in line
