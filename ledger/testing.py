"""Testing: a stand-in for Cerebras (and Lava's forward proxy) on loopback, for your own tests.

:class:`StandIn` is a real HTTP/1.1 server on ``127.0.0.1`` that speaks the wire format of
``shared/wire``: chat completions with ``usage`` and ``time_info``, streams whose final chunk
carries usage (with or without ``data: [DONE]``), flat error bodies, a 403 ``{"detail": ...}``
when there is no ``Authorization``, Lava's ``/v1/forward?u=…`` with ``x-lava-request-id``, the
SDK's ``/v1/tcp_warming`` and the public price feed ``/public/v1/models``.

Scenarios pick misbehaviour per request: send header ``x-standin-scenario: NAME`` or queue them
with :meth:`StandIn.queue`. ``served`` lists every completion the server actually delivered
whole, so tests can compare ledger totals with what the upstream really served.

What each misbehaving scenario does, without / with ``"stream": true`` in the request:

* ``slow``: waits :attr:`StandIn.slow_seconds` (0.3 s) before answering, then answers as ``ok``.
* ``hang``: never answers (no status line) / streams content chunks every 50 ms forever.
* ``stall``: sends the headers and half the body, then nothing more / sends half the chunks,
  then nothing more. Either way the connection stays open until the client hangs up.
* ``reset``: closes the connection before any response, in both modes.
* ``cut``: closes the connection after half the body / after half the chunks.
* ``malformed`` / ``non_utf8``: a 200 whose body is not JSON (truncated JSON / bytes that are
  not UTF-8) / a stream whose middle event is such a body, after which the stream ends.
* ``no_usage``: no ``usage`` in the body / on the final chunk (``[DONE]`` still follows).
* ``negative_usage`` / ``absurd_usage``: ``prompt_tokens`` of -5 / 10**15 prompt and completion
  tokens (and nonsense ``time_info``), in the body or on the final chunk.
* ``truncated``: half the body, framed as if whole (its ``content-length``) / half the chunks,
  then a clean end of the body: no final chunk, no usage, no ``[DONE]`` (a proxy that lost
  its upstream and closed the stream politely).
* ``stream_error``: an in-stream error event after half the chunks (streams only).
* ``stream_error_text`` / ``absurd_status``: the same, but the event is ``{"error": "<text>"}``
  (no object, no status) / its ``status_code`` is :data:`ABSURD_STATUS`.

A hanging or stalled handler gives up when the client hangs up, the stand-in stops, or after
:data:`STALL_LIMIT` seconds. :class:`StandInHandler` may be subclassed to watch requests. The
canned parts of the answers (error bodies, usage, ``time_info``, the price feed) are
:mod:`ledger.testing_wire`; here, the server and how each scenario serves them.

>>> with StandIn() as upstream:                                         # doctest: +SKIP
...     client = CerebrasClient(project="p", api_key="k", base_url=upstream.base_url)
"""

from __future__ import annotations

import gzip
import json
import select
import socket
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qs, unquote, urlsplit

from ledger.testing_wire import (
    ABSURD_STATUS,
    DEFAULT_FEED,
    ERRORS,
    SCENARIOS,
    SPOILED_USAGE,
    scenario_usage,
    time_info,
    usage_for,
)

__all__ = ["SCENARIOS", "Served", "StandIn", "StandInHandler", "usage_for"]

STALL_LIMIT = 30.0  # seconds a "hang" or "stall" handler waits for the client to hang up


@dataclass(frozen=True)
class Served:
    """A completion the stand-in delivered whole (its usage reached the client)."""

    upstream_id: str
    model: str
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    reasoning_tokens: int
    stream: bool
    via_lava: bool


class StandInHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature  # never log requests (they hold keys)
        pass

    def _send_json(
        self, status: int, body: Any, headers: dict[str, str] | None = None, raw: bytes | None = None
    ) -> None:
        data = raw if raw is not None else json.dumps(body).encode()
        gz = headers and headers.pop("x-gzip", None)
        if gz:
            data = gzip.compress(data)
        self.send_response(status)
        self.send_header("content-type", "application/json")
        if gz:
            self.send_header("content-encoding", "gzip")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/public/v1/models":
            self._send_json(200, self.server.owner.models_feed)
        elif path == "/v1/tcp_warming":
            self._send_json(200, {})
        else:
            self._send_json(404, {"detail": "Not Found"})

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        headers: dict[str, str] = {}
        via_lava = False
        if parts.path == "/v1/forward":
            target = unquote((parse_qs(parts.query).get("u") or [""])[0])
            if not target.endswith("/v1/chat/completions"):
                return self._send_json(
                    400, {"message": "unsupported forward target", "type": "invalid_request_error"}
                )
            headers["x-lava-request-id"] = f"req_{uuid.uuid4().hex[:24]}"
            via_lava = True
        elif parts.path != "/v1/chat/completions":
            return self._send_json(404, {"detail": "Not Found"})
        if not self.headers.get("authorization"):
            return self._send_json(403, {"detail": "Not authenticated"}, headers)
        try:
            body = json.loads(raw)
            assert isinstance(body, dict)
        except Exception:  # noqa: BLE001 - any bad body is a 400, as upstream
            return self._send_json(
                400,
                {
                    "message": "invalid JSON body",
                    "type": "invalid_request_error",
                    "param": "",
                    "code": "bad_request",
                },
                headers,
            )
        scenario = self.headers.get("x-standin-scenario") or self.server.owner.next_scenario()
        self.server.owner.requests += 1
        if scenario in ERRORS:
            status, err = ERRORS[scenario]
            return self._send_json(status, err, headers)
        if scenario == "slow":
            self.server.owner.stopping.wait(self.server.owner.slow_seconds)
        if scenario == "reset":  # before any response, streamed or not
            return self._reset()
        if scenario == "hang" and not body.get("stream"):  # no response at all
            return self._wait_for_hangup()
        if body.get("stream"):
            return self._stream(body, scenario, headers, via_lava)
        self._complete(body, scenario, headers, via_lava)

    def _complete(self, body: dict[str, Any], scenario: str, headers: dict[str, str], via_lava: bool) -> None:
        if scenario == "malformed":
            return self._send_json(200, None, headers, raw=b'{"id": "chatcmpl-broken", "choices": [')
        if scenario == "non_utf8":
            return self._send_json(200, None, headers, raw=b'\xff\xfe{"id": \x80\x81}')
        model = str(body.get("model"))
        words = usage_for(body, scenario)["completion_tokens"]  # what is really sent
        usage = scenario_usage(body, scenario)
        cid = f"chatcmpl-{uuid.uuid4()}"
        payload: dict[str, Any] = {
            "id": cid,
            "choices": [
                {
                    "finish_reason": "stop",
                    "index": 0,
                    "message": {"role": "assistant", "content": "word " * words},
                }
            ],
            "created": int(time.time()),
            "model": model,
            "object": "chat.completion",
            "system_fingerprint": "fp_standin",
            "time_info": time_info(scenario),
        }
        if scenario != "no_usage":
            payload["usage"] = usage
        if scenario == "gzip":
            headers["x-gzip"] = "1"
        if scenario == "truncated":  # half the body, framed as a whole one
            whole = json.dumps(payload).encode()
            return self._send_json(200, None, headers, raw=whole[: len(whole) // 2])
        if scenario in ("cut", "stall"):  # the headers and half the body, then a hang-up or silence
            data = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            return self._reset() if scenario == "cut" else self._wait_for_hangup()
        self._send_json(200, payload, headers)
        if scenario not in SPOILED_USAGE:
            self.server.owner.record(cid, model, usage, stream=False, via_lava=via_lava)

    def _reset(self) -> None:
        """Hang up on the client now."""
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)

    def _wait_for_hangup(self) -> None:
        """Send nothing more until the client hangs up (or the stand-in stops, or STALL_LIMIT)."""
        self.close_connection = True
        owner = self.server.owner
        deadline = time.monotonic() + STALL_LIMIT
        while not owner.stopping.is_set() and time.monotonic() < deadline:
            readable, _, _ = select.select([self.connection], [], [], 0.05)
            if readable:  # end of file (the client closed), or bytes we will never answer
                return

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _stream(self, body: dict[str, Any], scenario: str, headers: dict[str, str], via_lava: bool) -> None:
        model = str(body.get("model"))
        usage = scenario_usage(body, scenario)
        cid = f"chatcmpl-{uuid.uuid4()}"
        base = {
            "id": cid,
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "fp_standin",
            "object": "chat.completion.chunk",
        }
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()

        def event(obj: dict[str, Any]) -> None:
            self._chunk(b"data: " + json.dumps(obj).encode() + b"\n\n")

        deadline = time.monotonic() + STALL_LIMIT
        try:
            event({**base, "choices": [{"delta": {"role": "assistant"}, "index": 0}]})
            n = usage_for(body, scenario)["completion_tokens"]  # content chunks really sent
            for i in range(n if scenario != "hang" else 10**9):
                event({**base, "choices": [{"delta": {"content": "word "}, "index": 0}]})
                if scenario == "hang":
                    if self.server.owner.stopping.is_set() or time.monotonic() > deadline:
                        self.close_connection = True
                        return
                    time.sleep(0.05)
                if scenario == "stall" and i >= n // 2:
                    return self._wait_for_hangup()
                if scenario == "truncated" and i >= n // 2:
                    self._chunk(b"")  # a clean end of the body, before the final chunk
                    return
                if scenario in ("malformed", "non_utf8") and i >= n // 2:
                    bad = (
                        b'{"id": "chatcmpl-broken", "choices": ['
                        if scenario == "malformed"
                        else b'{"id": \x80\x81}'
                    )
                    self._chunk(b"data: " + bad + b"\n\n")
                    self._chunk(b"")
                    return
                if scenario == "cut" and i >= n // 2:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)  # cut mid-stream, no final chunk
                    return
                if scenario == "stream_error_text" and i >= n // 2:
                    event({"error": "upstream connection lost"})
                    self._chunk(b"")
                    return
                if scenario in ("stream_error", "absurd_status") and i >= n // 2:
                    event(
                        {
                            "error": {
                                "id": cid,
                                "code": "internal_error",
                                "message": "stream failed",
                                "param": "",
                                "type": "server_error",
                            },
                            "status_code": 500 if scenario == "stream_error" else ABSURD_STATUS,
                        }
                    )
                    self._chunk(b"")
                    return
            final: dict[str, Any] = {
                **base,
                "choices": [{"delta": {}, "finish_reason": "stop", "index": 0}],
                "usage": usage,
                "time_info": time_info(scenario),
            }
            if scenario == "no_usage":
                del final["usage"]
            event(final)
            if scenario != "no_done":
                self._chunk(b"data: [DONE]\n\n")
            self._chunk(b"")
            if scenario not in SPOILED_USAGE:
                self.server.owner.record(cid, model, usage, stream=True, via_lava=via_lava)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: StandIn

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up (a cut or abandoned stream) is part of the game, not an error.
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class StandIn:
    """The loopback stand-in upstream. Use as a context manager, or call start()/stop()."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = _Server((host, port), StandInHandler)
        self._server.owner = self
        self._thread = threading.Thread(target=self._server.serve_forever, name="standin", daemon=True)
        self._scenarios: deque[str] = deque()
        self._lock = threading.Lock()
        self.served: list[Served] = []
        self.requests = 0
        self.stopping = threading.Event()  # set by stop(): hanging handlers give up
        self.slow_seconds = 0.3  # how late the "slow" scenario answers
        self.models_feed: dict[str, Any] = json.loads(json.dumps(DEFAULT_FEED))

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        name = host.decode() if isinstance(host, bytes) else str(host)
        return f"http://{name}:{port}"

    def queue(self, *scenarios: str) -> None:
        """Force the scenario of the next requests, in order."""
        for s in scenarios:
            if s not in SCENARIOS:
                raise ValueError(f"unknown scenario {s!r}")
        with self._lock:
            self._scenarios.extend(scenarios)

    def next_scenario(self) -> str:
        with self._lock:
            return self._scenarios.popleft() if self._scenarios else "ok"

    def record(self, cid: str, model: str, usage: dict[str, Any], *, stream: bool, via_lava: bool) -> None:
        with self._lock:
            self.served.append(
                Served(
                    cid,
                    model,
                    usage["prompt_tokens"],
                    usage["prompt_tokens_details"]["cached_tokens"],
                    usage["completion_tokens"],
                    usage["completion_tokens_details"]["reasoning_tokens"],
                    stream,
                    via_lava,
                )
            )

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
