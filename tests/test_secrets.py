"""Keys, forward tokens, prompts and completions never reach the database, the spool or a log."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import sqlalchemy as sa

import ledger
from ledger import store
from ledger.testing import StandIn

API_KEY = "csk-SECRETKEY-7f3a9c1e"
FORWARD_TOKEN = "aks_live_FORWARDTOKEN-55d2b8"
PROMPT = "PROMPT-xyzzy-the-password-is-swordfish"
NEEDLES = (API_KEY, FORWARD_TOKEN, PROMPT, "swordfish", "word word")  # "word word": the stand-in's reply text


def _all_files(*roots: Path) -> list[Path]:
    return [p for root in roots if root.exists() for p in root.rglob("*") if p.is_file()]


def _database_text(url: str) -> str:
    """Every cell of every table, as text (for PostgreSQL, whose files we cannot grep)."""
    engine = store.make_engine(url)
    try:
        with engine.connect() as conn:
            out = []
            for table in sa.inspect(conn).get_table_names():
                for row in conn.execute(sa.text(f'SELECT * FROM "{table}"')):
                    out.append(" ".join(str(v) for v in row))
            return "\n".join(out)
    finally:
        engine.dispose()


def test_no_secret_or_content_is_stored(ledger_env: dict[str, str], upstream: StandIn, tmp_path: Path,
                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    messages = [{"role": "user", "content": PROMPT}]
    with ledger.CerebrasClient("p", api_key=API_KEY, base_url=upstream.base_url, max_retries=0) as direct, \
            ledger.CerebrasClient("p", lava_forward_token=FORWARD_TOKEN, lava_base_url=upstream.base_url,
                                  max_retries=0) as lava:
        for client in (direct, lava):
            client.chat.completions.create(model="gpt-oss-120b", messages=messages)
            list(client.chat.completions.create(model="gpt-oss-120b", messages=messages, stream=True))
            upstream.queue("wrong_key")
            with pytest.raises(ledger.AuthenticationError) as info:
                client.chat.completions.create(model="gpt-oss-120b", messages=messages)
            assert API_KEY not in str(info.value) and FORWARD_TOKEN not in str(info.value)
            upstream.queue("cut")
            with pytest.raises(ledger.APIConnectionError):
                list(client.chat.completions.create(model="gpt-oss-120b", messages=messages, stream=True))
        assert direct.flush(10) and lava.flush(10)
        spool_files = _all_files(Path(ledger_env["LEDGER_SPOOL_DIR"]))
        spool_bytes = b"".join(p.read_bytes() for p in spool_files)
    assert len(upstream.served) == 4

    url = ledger_env["LEDGER_DATABASE_URL"]
    db_text = _database_text(url)
    assert "chatcmpl-" in db_text and b"chatcmpl-" in spool_bytes  # both really hold the events
    db_bytes = b"".join(p.read_bytes() for p in _all_files(tmp_path) if ".db" in p.name)
    logs = caplog.text
    for needle in NEEDLES:
        assert needle not in db_text, needle
        assert needle.encode() not in db_bytes, needle
        assert needle.encode() not in spool_bytes, needle
        assert needle not in logs, needle
