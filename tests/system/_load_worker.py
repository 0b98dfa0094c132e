"""Child process for tests/system/test_load.py and test_soak.py: make calls, report what came back.

Usage:
    python tests/system/_load_worker.py BASE_URL MODE WORKERS [--calls N | --seconds S] [--projects P]
                                        [--prefix NAME] [--seed N] [--report ids|totals] [--status-every S]

MODE is ``threads`` (a pool of threads sharing one ``CerebrasClient`` per route), ``async``
(tasks sharing one ``AsyncCerebrasClient`` per route) or ``firehose``. The ledger comes from the
environment (``LEDGER_DATABASE_URL``, ``LEDGER_SPOOL_DIR``, ``LEDGER_HOME``).

``firehose`` makes no HTTP call: it builds the ``CallEvent`` a completed call produces and hands
it to ``Journal.append`` -- everything the call path does after the HTTP exchange -- at a paced
``--rate`` (events a second, in 20 ms steps; it runs behind rather than faster when the machine
is busy). It lets a soak reach the writer's benchmark ingest rate, which a loopback HTTP
stand-in on two shared cores cannot. Its events carry the same fields as real ones (both
routes, paid, free, alias and unknown models, cached and reasoning tokens, tags, an upstream id).

Every call picks, from a seeded generator, a project (``PREFIX-000`` … ``PREFIX-{P-1}``), a
route (direct to Cerebras, or through Lava's forward proxy: price books ``cerebras`` and
``lava``), a model (paid, free on Lava, an alias), streaming or not, and sometimes the stand-in's
``cached`` scenario (so cached prompt tokens appear). Nothing here computes a price: the parent
does that from the usage reported below and the price book.

Output on stdout, one JSON object a line, each line one ``write(2)``:

``--rate`` paces the calls of the whole process (threads and tasks share one schedule); without
it they go as fast as the stand-in answers.

* ``--report ids``: per returned call ``{"id", "project", "book", "model", "usage": [prompt,
  cached, completion, reasoning, total]}``.
* ``--report totals``: nothing per call; every ``--status-every`` seconds ``{"status": {...}}``
  (calls so far, this process's spool backlog ``pending`` in bytes, its RSS), and at the end
  ``{"totals": [[project, book, model, calls, prompt, cached, completion, reasoning, total], ...],
  "digest": D}`` where ``D`` is the sum, mod 2**128, of a hash of every returned upstream id.

SIGTERM makes it start no new call, finish those in flight and end as usual.

Always last: ``{"done": calls, "flushed": bool, "pending": bytes, "errors": n}`` after waiting for
the writer thread to put every event in the database.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import ledger
from ledger import journal
from ledger.config import database_url

MODELS = ("gpt-oss-120b", "llama3.1-8b", "qwen-3-235b-instruct", "gpt-oss-120b")
WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog", "again", "and", "again"]
_out = threading.Lock()


def say(obj: dict[str, Any]) -> None:
    data = (json.dumps(obj, separators=(",", ":")) + "\n").encode()
    with _out:
        view = memoryview(data)
        while view:
            view = view[os.write(1, view) :]


def digest_of(upstream_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(upstream_id.encode(), digest_size=16).digest())


def rss_kib(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Plan:
    """What the next call is: drawn from a seeded generator, under a lock (threads share it)."""

    def __init__(self, seed: int, projects: int, prefix: str) -> None:
        self.rng = random.Random(seed)
        self.projects = [f"{prefix}-{i:03d}" for i in range(projects)]
        self.lock = threading.Lock()

    def next(self) -> dict[str, Any]:
        with self.lock:
            r = self.rng
            words = r.randint(1, 12)
            return {
                "project": r.choice(self.projects),
                "lava": r.random() < 0.4,
                "model": r.choice(MODELS),
                "stream": r.random() < 0.3,
                "cached": r.random() < 0.15,
                "max_tokens": r.randint(1, 24),
                "messages": [{"role": "user", "content": " ".join(r.choice(WORDS) for _ in range(words))}],
                "tag": r.choice(("chat", "search", "batch")),
            }


class Pacer:
    """Spread calls at ``rate`` a second over the run (0: as fast as they come back)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.start = time.monotonic()
        self.n = 0
        self.lock = threading.Lock()

    def delay(self) -> float:
        """Seconds to wait before the next call; behind schedule, none."""
        if self.rate <= 0:
            return 0.0
        with self.lock:
            due = self.start + self.n / self.rate
            self.n += 1
        return max(0.0, due - time.monotonic())


class Tally:
    """What came back, per (project, book, model); plus the id digest."""

    def __init__(self, report: str) -> None:
        self.report = report
        self.lock = threading.Lock()
        self.calls = 0
        self.errors = 0
        self.sums: dict[tuple[str, str, str], list[int]] = {}
        self.digest = 0

    def add(self, upstream_id: str, project: str, book: str, model: str, usage: list[int]) -> None:
        if self.report == "ids":
            say({"id": upstream_id, "project": project, "book": book, "model": model, "usage": usage})
        with self.lock:
            self.calls += 1
            self.digest = (self.digest + digest_of(upstream_id)) % (1 << 128)
            row = self.sums.setdefault((project, book, model), [0] * 6)
            row[0] += 1
            for i, v in enumerate(usage):
                row[i + 1] += v


def usage_list(u: dict[str, Any]) -> list[int]:
    return [
        int(u["prompt_tokens"]),
        int((u.get("prompt_tokens_details") or {}).get("cached_tokens") or 0),
        int(u["completion_tokens"]),
        int((u.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0),
        int(u["total_tokens"]),
    ]


def request_args(p: dict[str, Any]) -> dict[str, Any]:
    args: dict[str, Any] = {
        "model": p["model"],
        "messages": p["messages"],
        "max_tokens": p["max_tokens"],
        "project": p["project"],
        "tags": {"feature": p["tag"]},
        "stream": p["stream"],
    }
    if p["cached"]:
        args["extra_headers"] = {"x-standin-scenario": "cached"}
    return args


def client_kwargs(base_url: str, lava: bool) -> dict[str, Any]:
    kw: dict[str, Any] = {"api_key": "sk-load", "base_url": base_url, "max_retries": 0, "timeout": 60.0}
    if lava:
        kw.update(lava_forward_token="lava-load-token", lava_base_url=base_url)
    return kw


def run_threads(args: argparse.Namespace, plan: Plan, tally: Tally, more: Callable[[], bool]) -> None:
    pacer = Pacer(args.rate)
    clients = {
        lava: ledger.CerebrasClient("load-default", **client_kwargs(args.base_url, lava))
        for lava in (False, True)
    }

    def one() -> None:
        p = plan.next()
        client = clients[p["lava"]]
        reply = client.chat.completions.create(**request_args(p))
        if p["stream"]:
            usage = cid = None
            with reply as stream:
                for chunk in stream:
                    cid = chunk.get("id", cid)
                    usage = chunk.get("usage") or usage
            assert usage is not None and cid is not None
        else:
            usage, cid = reply["usage"], reply["id"]
        tally.add(cid, p["project"], "lava" if p["lava"] else "cerebras", p["model"], usage_list(usage))

    def loop() -> None:
        while more():
            time.sleep(pacer.delay())
            try:
                one()
            except Exception as exc:  # noqa: BLE001 - counted and reported; the parent fails on it
                with tally.lock:
                    tally.errors += 1
                say({"error": f"{type(exc).__name__}: {exc}"})

    threads = [threading.Thread(target=loop, name=f"caller-{i}") for i in range(args.workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for c in clients.values():
        c.close()


async def run_tasks(args: argparse.Namespace, plan: Plan, tally: Tally, more: Callable[[], bool]) -> None:
    pacer = Pacer(args.rate)
    clients = {
        lava: ledger.AsyncCerebrasClient("load-default", **client_kwargs(args.base_url, lava))
        for lava in (False, True)
    }

    async def one() -> None:
        p = plan.next()
        client = clients[p["lava"]]
        reply = await client.chat.completions.create(**request_args(p))
        if p["stream"]:
            usage = cid = None
            async with reply as stream:
                async for chunk in stream:
                    cid = chunk.get("id", cid)
                    usage = chunk.get("usage") or usage
            assert usage is not None and cid is not None
        else:
            usage, cid = reply["usage"], reply["id"]
        tally.add(cid, p["project"], "lava" if p["lava"] else "cerebras", p["model"], usage_list(usage))

    async def loop() -> None:
        while more():
            await asyncio.sleep(pacer.delay())
            try:
                await one()
            except Exception as exc:  # noqa: BLE001
                tally.errors += 1
                say({"error": f"{type(exc).__name__}: {exc}"})

    await asyncio.gather(*(loop() for _ in range(args.workers)))
    for c in clients.values():
        await c.close()


FIREHOSE_MODELS = ("gpt-oss-120b", "llama3.1-8b", "qwen-3-235b-instruct", "llama-3.3-70b", "mystery-model")


def run_firehose(
    args: argparse.Namespace, jr: journal.Journal, tally: Tally, more: Callable[[], bool]
) -> None:
    """Append synthetic call events at ``args.rate`` a second until ``more()`` says stop."""
    import uuid
    from datetime import UTC, datetime

    from ledger.events import CallEvent, TimeInfo, Usage, new_event_id

    rng = random.Random(args.seed)
    projects = [f"{args.prefix}-{i:03d}" for i in range(args.projects)]
    start = time.monotonic()
    made = 0
    step = 0.02
    while more():  # --seconds mode only (checked in main): more() just reads the clock
        due = int((time.monotonic() - start) * args.rate) - made
        for _ in range(max(0, min(due, int(args.rate)))):
            project = rng.choice(projects)
            route = "lava" if rng.random() < 0.4 else "cerebras"
            model = rng.choice(FIREHOSE_MODELS)
            prompt = rng.randint(1, 5000)
            cached = rng.randint(0, prompt // 2) if rng.random() < 0.2 else 0
            completion = rng.randint(1, 3000)
            reasoning = completion // 3 if model.startswith("gpt-oss") else 0
            upstream_id = f"chatcmpl-{uuid.uuid4()}"
            event = CallEvent(
                event_id=new_event_id(),
                occurred_at=datetime.now(UTC),
                project=project,
                route=route,  # type: ignore[arg-type]
                book=route,
                requested_model=model,
                served_model=model,
                status="ok",
                http_status=200,
                error_type=None,
                error_code=None,
                stream=rng.random() < 0.3,
                usage=Usage(prompt, cached, completion, reasoning, prompt + completion),
                latency_us=rng.randint(500, 5000),
                ttft_us=None,
                time_info=TimeInfo(533, 1280, 3694, 7519),
                upstream_id=upstream_id,
                lava_request_id=None,
                tags=(("feature", rng.choice(("chat", "search", "batch"))),),
                source="wrapper",
            )
            jr.append(event)
            made += 1
            tally.add(
                upstream_id,
                project,
                route,
                model,
                [prompt, cached, completion, reasoning, prompt + completion],
            )
            if not more():
                break
        time.sleep(step)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("base_url")
    ap.add_argument("mode", choices=("threads", "async", "firehose"))
    ap.add_argument("workers", type=int)
    ap.add_argument("--calls", type=int, default=0)
    ap.add_argument("--seconds", type=float, default=0.0)
    ap.add_argument("--projects", type=int, default=5)
    ap.add_argument("--prefix", default="proj")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--report", choices=("ids", "totals"), default="ids")
    ap.add_argument("--status-every", type=float, default=2.0)
    ap.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="calls (firehose: events) a second for the whole process; 0: unpaced (firehose: 1000)",
    )
    args = ap.parse_args()
    if args.mode == "firehose" and not args.seconds:
        ap.error("firehose needs --seconds")

    plan = Plan(args.seed, args.projects, args.prefix)
    tally = Tally(args.report)
    budget: dict[str, int] = {"left": args.calls}
    budget_lock = threading.Lock()
    deadline: float | None = time.monotonic() + args.seconds if args.seconds else None
    stopping = threading.Event()

    def more() -> bool:
        if stopping.is_set():
            return False
        if deadline is not None:
            return time.monotonic() < deadline
        with budget_lock:
            if budget["left"] <= 0:
                return False
            budget["left"] -= 1
            return True

    # SIGTERM: start no new call, finish the ones in flight, flush, report, exit 0.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: stopping.set())

    url = database_url()
    jr = journal.journal_for(url)  # the journal every client of this process shares
    stop = threading.Event()

    def status() -> None:
        while not stop.wait(args.status_every):
            say(
                {
                    "status": {
                        "t": time.time(),
                        "calls": tally.calls,
                        "pending": jr.pending(),
                        "rss_kib": rss_kib(),
                    }
                }
            )

    if args.report == "totals":
        threading.Thread(target=status, name="status", daemon=True).start()
    if args.mode == "threads":
        run_threads(args, plan, tally, more)
    elif args.mode == "firehose":
        args.rate = args.rate or 1000.0
        run_firehose(args, jr, tally, more)
    else:
        asyncio.run(run_tasks(args, plan, tally, more))
    stop.set()
    if args.report == "totals":
        say({"totals": [[*k, *v] for k, v in sorted(tally.sums.items())], "digest": tally.digest})
    flushed = jr.flush(300)
    say(
        {
            "done": tally.calls,
            "flushed": flushed,
            "pending": jr.pending(),
            "errors": tally.errors,
            "rss_kib": rss_kib(),
        }
    )


if __name__ == "__main__":
    main()
