"""One SSE event of 100 MB: the CPU an instrumented httpx call spends reading it, against bare httpx.

    .venv/bin/python benchmarks/bench_big_event.py [--mb 100] [--rounds 5]

Issue 11's target: at most 1.5x bare httpx. A loopback server sends a stream whose first event
carries 100 MB of content (then the usage chunk and ``[DONE]``); a bare ``httpx.Client`` and one
``ledger.instrument()``-ed read it whole with ``iter_bytes`` in alternation, and the thread CPU
time of each read is taken (``RUSAGE_THREAD``: the server thread's work is not counted). Prints
the medians and their ratio. Before the Skeleton reader this took 107 s against 0.08 s.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import tempfile
import threading

import httpx


def _body(mb: int) -> bytes:
    content = "word " * (mb * 200_000)
    first = {
        "id": "chatcmpl-1",
        "model": "gpt-oss-120b",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}],
    }
    final = {
        "id": "chatcmpl-1",
        "model": "gpt-oss-120b",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
    }
    return (
        b"data: "
        + json.dumps(first).encode()
        + b"\n\ndata: "
        + json.dumps(final).encode()
        + b"\n\ndata: [DONE]\n\n"
    )


def _serve(sock: socket.socket, body: bytes) -> None:
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: %d\r\n"
        b"connection: close\r\n\r\n" % len(body)
    )
    while True:
        conn, _ = sock.accept()
        req = b""
        while b"\r\n\r\n" not in req:
            req += conn.recv(65536)
        top, _, rest = req.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in top.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        )
        while len(rest) < length:
            rest += conn.recv(65536)
        conn.sendall(head)
        view = memoryview(body)
        for at in range(0, len(body), 1 << 20):
            conn.sendall(view[at : at + (1 << 20)])
        conn.shutdown(socket.SHUT_WR)
        conn.recv(10)
        conn.close()


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_THREAD)
    return r.ru_utime + r.ru_stime


def _read(client: httpx.Client, url: str) -> float:
    start = _cpu()
    with client.stream("POST", url, json={"model": "gpt-oss-120b", "stream": True}) as response:
        for _ in response.iter_bytes():
            pass
    return _cpu() - start


def main() -> None:
    args = argparse.ArgumentParser()
    args.add_argument("--mb", type=int, default=100)
    args.add_argument("--rounds", type=int, default=5)
    opts = args.parse_args()
    home = tempfile.mkdtemp(prefix="bench-big-")
    os.environ.update(
        LEDGER_HOME=home, LEDGER_DATABASE_URL=f"sqlite:///{home}/ledger.db", LEDGER_SPOOL_DIR=f"{home}/spool"
    )
    import ledger

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    threading.Thread(target=_serve, args=(sock, _body(opts.mb)), daemon=True).start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1/chat/completions"
    bare, instrumented = httpx.Client(), ledger.instrument(httpx.Client(), project="bench")
    times: dict[str, list[float]] = {"bare": [], "instrumented": []}
    for _ in range(opts.rounds):
        times["bare"].append(_read(bare, url))
        times["instrumented"].append(_read(instrumented, url))
    instrumented.close()
    b, i = statistics.median(times["bare"]), statistics.median(times["instrumented"])
    print(
        f"{opts.mb} MB event: bare httpx {b:.3f} s CPU, instrumented {i:.3f} s CPU, ratio {i / b:.2f}x "
        f"(target <= 1.5x)"
    )


if __name__ == "__main__":
    main()
