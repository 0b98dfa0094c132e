"""Figure 1: call overhead of the wrapper and of instrument() under the Cerebras SDK.

The stand-in upstream runs in a separate process. Every variant makes the same chat completion
(``gpt-oss-120b``, 12 completion tokens: a ~700-byte JSON body, or 15 SSE events when streaming)
and decodes it. Variants run in blocks of calls, in a shuffled order each round, so drift on this
shared machine hits all of them alike. After a ledger block the journal is flushed (timed apart),
so the writer thread's work for one block never lands in another variant's block; its cost shows
in the "CPU/call incl. writer" rows (this process's CPU, all threads, per call, plus the
writer process's with ``LEDGER_WRITER=process``, read from /proc). Each ledger variant runs
twice: with the default writer thread, and with the writer process ("writer process" rows).

``CerebrasClient`` sends through its transport directly, without ``httpx.Client``'s per-request
layer, so it can be faster than the bare httpx call; the "recording cost" rows compare it with the
same client whose transport records nothing, which isolates what recording costs.

On loopback a call takes about a millisecond, so these ratios are a worst case: against the real
API (tens to hundreds of milliseconds a call) the same absolute overhead is a far smaller ratio.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from _common import median, pct, pg_reachable, pg_schema, pg_url, row, scratch, wait_for_pg

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = "gpt-oss-120b"
MESSAGES = [{"role": "user", "content": "hello there"}]


class Variant:
    def __init__(
        self,
        name: str,
        call: Callable[[], Any],
        flush: Callable[[], Any] | None = None,
        writer_cpu: Callable[[], float] | None = None,
        every: int = 1,
    ) -> None:
        self.name = name
        self.call = call
        self.flush = flush
        self.writer_cpu = writer_cpu or (lambda: 0.0)  # CPU seconds of a writer *process*, if any
        self.every = every  # take part in every n-th round only (the slow peer)
        self.times: list[float] = []
        self.cpu: list[float] = []  # per block: process CPU seconds per call, all threads, flush included
        self.drains: list[float] = []
        self.interrupted = 0  # blocks whose flush had to wait for PostgreSQL to come back


@contextlib.contextmanager
def _writer_mode(mode: str) -> Iterator[None]:
    """``LEDGER_WRITER`` while a client (and so its journal) is made."""
    old = os.environ.get("LEDGER_WRITER")
    os.environ["LEDGER_WRITER"] = mode
    try:
        yield
    finally:
        if old is None:
            del os.environ["LEDGER_WRITER"]
        else:
            os.environ["LEDGER_WRITER"] = old


def _bare(url: str, stream: bool) -> Callable[[], Any]:
    import httpx

    http = httpx.Client(timeout=30)
    target = f"{url}/v1/chat/completions"
    headers = {
        "authorization": "Bearer k",
        "content-type": "application/json",
        "accept": "text/event-stream" if stream else "application/json",
    }
    body: dict[str, Any] = {"model": MODEL, "messages": MESSAGES}
    if not stream:

        def call() -> Any:
            return http.post(target, content=json.dumps(body).encode(), headers=headers).json()

        return call
    sbody = {**body, "stream": True}

    def call_stream() -> Any:
        last = None
        with http.stream("POST", target, content=json.dumps(sbody).encode(), headers=headers) as r:
            for line in r.iter_lines():
                if line.startswith("data: ") and line[6:] != "[DONE]":
                    last = json.loads(line[6:])
        return last

    return call_stream


def _wrapper(
    url: str, db: str, spool: str, stream: bool, record: bool = True
) -> tuple[Callable[[], Any], Callable[[], Any], Any]:
    """``CerebrasClient`` calls; with ``record=False`` its recording transport is swapped for a
    plain ``httpx.HTTPTransport``: the baseline that isolates what recording costs in the client."""
    import httpx

    import ledger

    client = ledger.CerebrasClient("bench", api_key="k", base_url=url, database_url=db, spool_dir=spool)
    if not record:
        client.transport = httpx.HTTPTransport()  # type: ignore[assignment]
    create = client.chat.completions.create
    if not stream:

        def call() -> Any:
            return create(model=MODEL, messages=MESSAGES)
    else:

        def call() -> Any:
            last = None
            for chunk in create(model=MODEL, messages=MESSAGES, stream=True):
                last = chunk
            return last

    if not record:
        return call, None, None  # type: ignore[return-value]
    return call, lambda: client.flush(60), _writer_cpu(client.transport.journal)


def _sdk(url: str, stream: bool, db: str | None, spool: str | None) -> tuple[Callable[[], Any], Any, Any]:
    import httpx
    from cerebras.cloud.sdk import Cerebras

    import ledger

    http = httpx.Client()
    if db is not None:
        http = ledger.instrument(http, project="bench", database_url=db, spool_dir=spool)
    sdk = Cerebras(api_key="k", base_url=url, warm_tcp_connection=False, max_retries=0, http_client=http)
    create = sdk.chat.completions.create
    if not stream:

        def call() -> Any:
            return create(model=MODEL, messages=MESSAGES)  # type: ignore[arg-type]
    else:

        def call() -> Any:
            last = None
            for chunk in create(model=MODEL, messages=MESSAGES, stream=True):  # type: ignore[arg-type]
                last = chunk
            return last

    if db is None:
        return call, None, None
    j = http._transport.journal
    return call, (lambda: j.flush(60)), _writer_cpu(j)


def _writer_cpu(journal: Any) -> Callable[[], float] | None:
    """CPU seconds (user + system) used so far by the journal's writer process, from /proc;
    ``None`` with the writer thread (its CPU is this process's)."""
    child = getattr(journal, "_child", None)
    if child is None:
        return None
    tick = os.sysconf("SC_CLK_TCK")
    path = f"/proc/{child.pid}/stat"

    def cpu() -> float:
        try:
            with open(path) as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        except (OSError, IndexError, ValueError):
            return 0.0

    return cpu


def _litellm(url: str, stream: bool) -> Callable[[], Any]:
    import litellm

    kw = {"model": f"cerebras/{MODEL}", "messages": MESSAGES, "api_base": f"{url}/v1", "api_key": "k"}
    if not stream:

        def call() -> Any:
            r = litellm.completion(**kw)
            return r._hidden_params["response_cost"]  # litellm's own cost tracking, computed in completion()

        return call

    def call_stream() -> Any:
        chunks = list(litellm.completion(**kw, stream=True, stream_options={"include_usage": True}))
        built = litellm.stream_chunk_builder(chunks, messages=MESSAGES)
        return litellm.completion_cost(completion_response=built)  # the documented way for streams

    return call_stream


def litellm_status() -> tuple[bool, str]:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network fetch of the price map
    try:
        import litellm
    except Exception as exc:  # noqa: BLE001
        return False, (
            f"not installed: `import litellm` fails in this venv ({type(exc).__name__}); "
            "`.venv/bin/pip install litellm` adds ~35 packages (tokenizers, huggingface_hub, "
            "aiohttp, boto3, ...), so it is not a dependency"
        )
    litellm.suppress_debug_info = True
    litellm.telemetry = False
    from importlib.metadata import version

    return True, f"litellm {version('litellm')} (cost map: bundled local copy)"


def _run_mode(variants: list[Variant], rounds: int, block: int, warm: int, seed: int) -> None:
    rng = random.Random(seed)
    for v in variants:
        for _ in range(warm if v.every == 1 else max(5, warm // v.every)):
            v.call()
        if v.flush:
            v.flush()
    for r in range(rounds):
        order = [v for v in variants if r % v.every == 0]
        rng.shuffle(order)
        for v in order:
            gc.collect()
            times = v.times
            call = v.call
            c0 = time.process_time() + v.writer_cpu()
            for _ in range(block):
                t0 = time.perf_counter()
                call()
                times.append(time.perf_counter() - t0)
            if v.flush:
                t0 = time.perf_counter()
                if not v.flush():
                    # PostgreSQL went away (other people's tests stop it): calls never wait for the
                    # database, but this block's drain does; wait for it and say so.
                    v.interrupted += 1
                    if not (wait_for_pg(180) and v.flush()):
                        raise RuntimeError(f"{v.name}: the ledger did not drain")
                v.drains.append(time.perf_counter() - t0)
            v.cpu.append((time.process_time() + v.writer_cpu() - c0) / block)


def _compare(
    fig: str,
    label: str,
    mode: str,
    backend: str,
    v: Variant,
    base: Variant,
    target: float,
    drain_rows: bool = True,
) -> list[dict[str, Any]]:
    out = []
    tgt = f"≤ {target:.2f}×" if target else ""
    for stat, fn in (("median", median), ("p99", lambda xs: pct(xs, 99))):
        a, b = fn(v.times), fn(base.times)
        ratio = a / b
        out.append(
            row(
                fig,
                f"{label} {mode} {stat} ({backend})",
                value=a,
                unit="s",
                baseline_name=f"{base.name} {stat}",
                baseline=b,
                ratio=ratio,
                target=tgt,
                ok=(ratio <= target) if target else None,
                calls=len(v.times),
                baseline_calls=len(base.times),
                extra_us=round((a - b) * 1e6, 1),
            )
        )
    if drain_rows:
        a, b = median(v.cpu), median(base.cpu)
        out.append(
            row(
                fig,
                f"{label} {mode} CPU/call incl. writer ({backend})",
                value=a,
                unit="s",
                baseline_name=f"{base.name} CPU/call",
                baseline=b,
                extra_us=round((a - b) * 1e6, 1),
                median_flush_after_block_s=median(v.drains) if v.drains else None,
                note="CPU time per call of this process (all threads: caller and ledger writer "
                "thread) plus the writer process's, if any, over a block of calls and the "
                "flush after it; median over blocks",
            )
        )
    return out


def main(quick: bool) -> dict[str, Any]:
    fig = "1 call overhead"
    n_calls = 600 if quick else 4000
    block = 50 if quick else 100
    rounds = n_calls // block
    warm = 50 if quick else 200
    tmp = scratch("ovh")
    os.environ["LEDGER_HOME"] = tmp
    notes: dict[str, Any] = {
        "calls_per_variant": n_calls,
        "block": block,
        "rounds": rounds,
        "request": f"{MODEL}, 1 message, 12 completion tokens (stand-in default)",
    }
    has_litellm, why = litellm_status()
    notes["litellm"] = why
    pg_why = pg_reachable()
    proc = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "_standin.py")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    rows: list[dict[str, Any]] = []
    try:
        with contextlib.ExitStack() as stack:
            backends = {"SQLite": (f"sqlite:///{tmp}/ledger.db", f"{tmp}/spool-sqlite")}
            if pg_why is None:
                schema = stack.enter_context(pg_schema("ovh"))
                backends["PostgreSQL"] = (pg_url(schema), f"{tmp}/spool-pg")
            for mode, stream in (("non-stream", False), ("stream", True)):
                bare = Variant("bare httpx", _bare(url, stream))
                sdk_bare = Variant("SDK without instrument()", _sdk(url, stream, None, None)[0])
                plain = Variant(
                    "CerebrasClient without recording",
                    _wrapper(url, f"sqlite:///{tmp}/unused.db", f"{tmp}/spool-unused", stream, False)[0],
                )
                variants = [bare, sdk_bare, plain]
                per_backend = {}
                for bname, (db, spool) in backends.items():
                    for writer in ("thread", "process"):
                        label = bname if writer == "thread" else f"{bname}, writer process"
                        with _writer_mode(writer):  # the journal is made (and its mode read) here
                            w = Variant(f"wrapper {label}", *_wrapper(url, db, f"{spool}-{writer}", stream))
                            s = Variant(
                                f"SDK+instrument {label}", *_sdk(url, stream, db, f"{spool}-{writer}")
                            )
                        variants += [w, s]
                        per_backend[label] = (w, s)
                lite = None
                if has_litellm:
                    lite = Variant("LiteLLM", _litellm(url, stream), every=4)
                    variants.append(lite)
                _run_mode(variants, rounds, block, warm, seed=1 if stream else 0)
                for bname, (w, s) in per_backend.items():
                    rows += _compare(fig, "CerebrasClient", mode, bname, w, bare, 1.10)
                    rows += _compare(fig, "SDK+instrument()", mode, bname, s, sdk_bare, 1.05)
                    rows += _compare(
                        fig, "CerebrasClient recording cost", mode, bname, w, plain, 0, drain_rows=False
                    )
                if lite is not None:
                    rows += _compare(fig, "LiteLLM+cost (peer)", mode, "no ledger", lite, bare, 0)
                notes[f"{mode} medians_us"] = {v.name: round(median(v.times) * 1e6, 1) for v in variants}
                notes[f"{mode} blocks_whose_flush_waited_for_postgresql"] = {
                    v.name: v.interrupted for v in variants if v.interrupted
                }
            if pg_why is not None:
                rows.append(row(fig, "PostgreSQL rows", value=None, unit="", verdict="skipped", why=pg_why))
            if not has_litellm:
                rows.append(
                    row(fig, "LiteLLM+cost (peer)", value=None, unit="", verdict="not installed", why=why)
                )
            # sanity: every call became exactly one event
            import ledger.journal

            ledger.journal.close_all(60)
            try:
                notes["events_recorded"] = _count_events(backends)
            except Exception as exc:  # noqa: BLE001 - a sanity note, not a figure
                notes["events_recorded"] = f"could not count: {type(exc).__name__}"
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(10)
    return {"rows": rows, "notes": notes}


def _count_events(backends: dict[str, tuple[str, str]]) -> dict[str, int]:
    from sqlalchemy import text

    from ledger import store

    out = {}
    for name, (db, _) in backends.items():
        engine = store.make_engine(db)
        with engine.connect() as conn:
            out[name] = int(conn.execute(text("SELECT count(*) FROM events")).scalar_one())
        engine.dispose()
    return out
