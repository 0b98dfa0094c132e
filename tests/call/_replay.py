"""A loopback upstream that replays given exchanges byte for byte, at chosen chunk boundaries.

Where :class:`ledger.testing.StandIn` *makes* answers, this one *replays* them: the status,
headers and body of a real recorded exchange (``shared/wire/recorded/``) or of a stream built
from real captures, content-encoded as the client asked (``zstd``, ``br``, ``gzip``, ``deflate``,
by the client's ``accept-encoding``) or as the test forces, and sent with chunked transfer
encoding in pieces of the sizes given, each flushed on its own, so the client reads them at
those boundaries. Answers are taken in order from a queue; anything asked with the queue empty
gets a 500. ``requests`` keeps each request's method, path and body (for the test to check
what the SDK sent; the server never logs).
"""

from __future__ import annotations

import gzip
import json
import threading
import zlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import brotli
import zstandard

from tests.helpers import WIRE

RECORDED = WIRE / "recorded"
PREFERENCE = ("zstd", "br", "gzip", "deflate")  # what a server picks first from accept-encoding


def encode(body: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return gzip.compress(body)
    if encoding == "deflate":
        return zlib.compress(body)
    if encoding == "br":
        return bytes(brotli.compress(body))
    if encoding == "zstd":
        return bytes(zstandard.ZstdCompressor().compress(body))
    return body  # identity, or a value no decoder knows (sent as is, as such a server would)


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    chunks: list[int] = field(default_factory=lambda: [7, 13, 1, 64])  # piece sizes, cycled
    encoding: str | None = None  # None: the best the client accepts; "identity": none
    stall_after: int | None = None  # send this many pieces, then nothing until the client hangs up

    @classmethod
    def recorded(cls, rid: str, **kw: Any) -> Answer:
        meta = json.loads((RECORDED / rid / "meta.json").read_text())
        headers = [
            (k, v)
            for k, v in meta["response"]["headers"]
            if k.lower() not in ("content-length", "transfer-encoding", "content-encoding", "connection")
        ]
        return cls(meta["response"]["status"], headers, (RECORDED / rid / "body.bin").read_bytes(), **kw)


def recorded_ids() -> list[str]:
    return sorted(p.name for p in RECORDED.iterdir() if (p / "meta.json").is_file())


def pieces(data: bytes, sizes: list[int]) -> Iterator[bytes]:
    at, i = 0, 0
    while at < len(data):
        n = sizes[i % len(sizes)]
        yield data[at : at + n]
        at, i = at + n, i + 1


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature  # never log requests (they hold keys)
        pass

    def do_GET(self) -> None:
        self._answer(b"")

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        self._answer(self.rfile.read(length))

    def _answer(self, body: bytes) -> None:
        owner = self.server.owner
        with owner.lock:
            owner.requests.append((self.command, self.path, body))
            answer = owner.answers.popleft() if owner.answers else Answer(500, [], b'{"message":"no answer"}')
        encoding = answer.encoding
        if encoding is None:
            asked = [v.strip().lower() for v in (self.headers.get("accept-encoding") or "").split(",")]
            encoding = next((e for e in PREFERENCE if e in asked), "identity")
        data = encode(answer.body, encoding)
        self.send_response(answer.status)
        for k, v in answer.headers:
            self.send_header(k, v)
        if encoding != "identity" and not any(k.lower() == "content-encoding" for k, _ in answer.headers):
            self.send_header("content-encoding", encoding)  # (unless the answer names its own)
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        for i, piece in enumerate(pieces(data, answer.chunks)):
            if answer.stall_after is not None and i == answer.stall_after:
                self.connection.settimeout(30)
                try:
                    self.rfile.read(1)  # returns once the client closes the connection
                except OSError:
                    pass
                self.close_connection = True
                return
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
        owner.sent.append(encoding)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: Replay

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hangs up early (a test of exactly that) is not news


class Replay:
    """The replaying upstream; use as a context manager."""

    def __init__(self) -> None:
        self.answers: deque[Answer] = deque()
        self.requests: list[tuple[str, str, bytes]] = []
        self.sent: list[str] = []  # the content-encoding of each answer sent
        self.lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self._thread = threading.Thread(target=self._server.serve_forever, name="replay", daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def queue(self, *answers: Answer) -> None:
        with self.lock:
            self.answers.extend(answers)

    def __enter__(self) -> Replay:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
