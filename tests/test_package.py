"""The package as a whole: its public names, what the call path imports, typing, and the CI command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import ledger
from ledger import store
from tests.helpers import ROOT


def test_all_is_sorted_and_every_name_resolves() -> None:
    names = ledger.__all__
    assert names == sorted(names)
    assert len(names) == len(set(names))
    missing = [n for n in names if not hasattr(ledger, n)]
    assert missing == []
    assert isinstance(ledger.__version__, str) and ledger.__version__


def test_every_public_error_is_exported() -> None:
    from ledger.call import errors

    exported = {n for n in errors.__all__ if isinstance(getattr(errors, n), type)}
    assert exported <= set(ledger.__all__)


def _run(code: str, env: dict[str, str], timeout: float = 120) -> Any:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _clean_env(tmp_path: Path, url: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in (
            "LEDGER_PROJECT",
            "CEREBRAS_API_KEY",
            "LAVA_FORWARD_TOKEN",
            "CEREBRAS_BASE_URL",
            "LAVA_BASE_URL",
            "PYTHONWARNINGS",
        )
    }
    env.update(
        {
            "LEDGER_HOME": str(tmp_path / "home"),
            "LEDGER_DATABASE_URL": url,
            "LEDGER_SPOOL_DIR": str(tmp_path / "spool"),
        }
    )
    return env


def test_import_alone_loads_no_database_or_analytics_code(tmp_path: Path) -> None:
    """(click and pygments may appear: httpx's own CLI imports them when installed.) Nor
    asyncio: 60 ms of import that sync callers never need (the async client imports it itself)."""
    out = _run(
        """
        import json, sys
        import ledger
        print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in
                                ("pandas", "alembic", "sqlalchemy", "apscheduler", "asyncio"))))
    """,
        _clean_env(tmp_path, f"sqlite:///{tmp_path / 'unused.db'}"),
    )
    assert out == []


def test_a_call_on_a_migrated_ledger_imports_neither_pandas_nor_alembic(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    engine = store.make_engine(url)
    try:
        store.ensure_schema(engine)  # already migrated (and seeded) before the process starts
    finally:
        engine.dispose()
    out = _run(
        """
        import json, sys
        import ledger
        from ledger.testing import StandIn

        with StandIn() as upstream:
            with ledger.CerebrasClient("pkg", api_key="k", base_url=upstream.base_url, max_retries=0) as client:
                reply = client.chat.completions.create(
                    model="gpt-oss-120b", messages=[{"role": "user", "content": "hi"}])
                flushed = client.flush(30)
        print(json.dumps({
            "flushed": flushed,
            "usage": reply["usage"]["total_tokens"],
            "heavy": sorted(m for m in sys.modules if m.split(".")[0] in ("pandas", "alembic")),
            "sqlalchemy": "sqlalchemy" in sys.modules,
        }))
    """,
        _clean_env(tmp_path, url),
    )
    assert out["flushed"] is True and isinstance(out["usage"], int) and out["usage"] > 0
    assert out["sqlalchemy"] is True  # the writer really reached the database in that process
    assert out["heavy"] == []
    engine = store.make_engine(url)
    try:
        with engine.connect() as conn:
            import sqlalchemy as sa

            rows = conn.execute(sa.text("SELECT project, priced, cost_nanos FROM events")).all()
    finally:
        engine.dispose()
    assert len(rows) == 1 and rows[0].project == "pkg" and rows[0].priced and rows[0].cost_nanos > 0


def test_mypy_strict_passes_on_the_package() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-2000:]
    assert "Success" in proc.stdout


def test_ruff_check_passes() -> None:
    """The rule set in pyproject.toml ([tool.ruff.lint]) over the package, tests and benchmarks."""
    proc = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "ledger", "tests", "benchmarks"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-2000:]


def test_the_code_is_ruff_formatted() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--check", "ledger", "tests", "benchmarks"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-2000:]


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    readme = (ROOT / "README.md").read_text()
    ci_lines = [
        ln.strip()
        for ln in (ROOT / ".ci" / "run").read_text().splitlines()
        if ln.strip() and not ln.lstrip().startswith("#")
    ]
    command = ci_lines[-1]
    assert "pytest" in command
    assert command in [ln.strip() for ln in readme.splitlines()]
