"""The public API's types, as a user's type checker sees them (mypy strict on a small script).

``create()`` is overloaded on ``stream``: a literal ``stream=True`` gives a :class:`ledger.Stream`
(``AsyncStream`` for the async client), none or ``stream=False`` a ``dict``, a plain ``bool`` the
union. The client-transport channel is typed (:class:`ledger.call.transport.CallOptions`), and the
recording transports take any request that quacks like httpx's or httpx2's.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.helpers import ROOT

SCRIPT = textwrap.dedent("""
    from typing import Any, assert_type

    import httpx
    import httpx2

    import ledger
    from ledger.call.transport import CALL_OPTIONS, CallOptions, HTTPRequest, RecordingTransport


    def sync(client: ledger.CerebrasClient, flag: bool) -> None:
        msgs = [{"role": "user", "content": "hi"}]
        assert_type(client.chat.completions.create(model="m", messages=msgs), dict[str, Any])
        assert_type(client.chat.completions.create(model="m", messages=msgs, stream=False), dict[str, Any])
        assert_type(client.chat.completions.create(model="m", messages=msgs, stream=True), ledger.Stream)
        assert_type(client.chat.completions.create(model="m", messages=msgs, stream=flag),
                    dict[str, Any] | ledger.Stream)
        assert_type(client.completions.create(model="m", prompt="x", stream=True), ledger.Stream)
        assert_type(client.completions.create(model="m", prompt="x"), dict[str, Any])


    async def asynchronous(client: ledger.AsyncCerebrasClient) -> None:
        msgs = [{"role": "user", "content": "hi"}]
        assert_type(await client.chat.completions.create(model="m", messages=msgs, stream=True), ledger.AsyncStream)
        assert_type(await client.completions.create(model="m", prompt="x"), dict[str, Any])


    def channel(transport: RecordingTransport) -> None:
        options: CallOptions = {"project": "p", "tags": {"user": "ana"}, "model": "m"}
        for request in (httpx.Request("POST", "http://x/v1/chat/completions", extensions={CALL_OPTIONS: options}),
                        httpx2.Request("POST", "http://x/v1/chat/completions")):
            transport.handle_request(request)
        needs: HTTPRequest = httpx2.Request("GET", "http://x/")


    reveal_type(ledger.CerebrasClient)  # the ledger itself was found, not taken as Any
""")


def _mypy(script: Path) -> subprocess.CompletedProcess[str]:
    # MYPYPATH: mypy does not follow an editable install's import hook; it reads the package here
    env = {**os.environ, "MYPYPATH": str(ROOT)}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-incremental",
            "--ignore-missing-imports",
            str(script),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=script.parent,
        env=env,
    )


def test_the_public_api_types_as_a_user_sees_them(tmp_path: Path) -> None:
    script = tmp_path / "user_code.py"
    script.write_text(SCRIPT)
    proc = _mypy(script)
    assert 'Revealed type is "def (project' in proc.stdout, proc.stdout
    errors = [line for line in proc.stdout.splitlines() if ": error:" in line]
    assert errors == [], proc.stdout + proc.stderr


def test_a_wrong_stream_type_is_caught(tmp_path: Path) -> None:
    """The overloads are not a blanket Any: using a stream as a dict is a type error."""
    script = tmp_path / "wrong.py"
    script.write_text(
        textwrap.dedent("""
        import ledger

        def f(client: ledger.CerebrasClient) -> None:
            client.chat.completions.create(model="m", messages=[], stream=True).get("choices")
    """)
    )
    proc = _mypy(script)
    assert proc.returncode == 1 and '"Stream" has no attribute "get"' in proc.stdout, proc.stdout
