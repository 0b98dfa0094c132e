"""Child process for tests/system/test_durability.py: make calls in a loop, print each returned id.

Usage: python tests/system/_caller.py BASE_URL (threads|async) WORKERS MAX_SECONDS

The ledger comes from the environment (LEDGER_DATABASE_URL, LEDGER_SPOOL_DIR, LEDGER_HOME).
After each call returns, its ``id`` (the chatcmpl id) is written to stdout as one line and
flushed, so the parent knows the call returned. The loop stops by itself after MAX_SECONDS
(a safety net: the parent normally kills this process with SIGKILL long before).
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time

import ledger

MSG = [{"role": "user", "content": "count to three please"}]
_out = threading.Lock()


def _say(cid: str) -> None:
    with _out:  # one write(2) per id: a pipe write of < PIPE_BUF bytes is atomic
        os.write(1, (cid + "\n").encode())


def run_threads(base_url: str, workers: int, deadline: float) -> None:
    client = ledger.CerebrasClient("kill9", api_key="sk-test", base_url=base_url, max_retries=0)

    def loop() -> None:
        while time.monotonic() < deadline:
            reply = client.chat.completions.create(model="gpt-oss-120b", messages=MSG, max_tokens=8)
            _say(reply["id"])

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


async def run_tasks(base_url: str, workers: int, deadline: float) -> None:
    async with ledger.AsyncCerebrasClient(
        "kill9", api_key="sk-test", base_url=base_url, max_retries=0
    ) as client:

        async def loop() -> None:
            while time.monotonic() < deadline:
                reply = await client.chat.completions.create(model="gpt-oss-120b", messages=MSG, max_tokens=8)
                _say(reply["id"])

        await asyncio.gather(*(loop() for _ in range(workers)))


def main() -> None:
    base_url, mode, workers, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    deadline = time.monotonic() + seconds
    if mode == "threads":
        run_threads(base_url, workers, deadline)
    else:
        asyncio.run(run_tasks(base_url, workers, deadline))


if __name__ == "__main__":
    main()
