"""Profiles behind the figures that miss their targets (run by hand; not part of run.py's table).

    .venv/bin/python benchmarks/profile_hotspots.py [call|writer|all] [--calls N] [--events N]

* ``call``: cProfile of the same SDK calls with and without ``instrument()`` (stand-in in its own
  process), printed as the functions whose own time grew the most per call: the call-path cost.
  The ledger's writer thread is not profiled here (cProfile follows one thread); ``writer`` is.
* ``writer``: cProfile of the writer path (``journal.writer.write_lines``, batches of 2000 pre-encoded
  spool lines) into SQLite and PostgreSQL, top functions by own time and the ledger's functions
  by cumulative time, in microseconds per event.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import Synth, new_ledger, pg_reachable, pg_schema, pg_url, scratch

HERE = os.path.dirname(os.path.abspath(__file__))


def _stats(prof: cProfile.Profile) -> dict[Any, tuple[int, float, float]]:
    st = pstats.Stats(prof)
    return {k: (v[1], v[2], v[3]) for k, v in st.stats.items()}  # type: ignore[attr-defined]


def _name(key: Any) -> str:
    path, line, func = key
    short = path.split("site-packages/")[-1].replace(str(Path(HERE).parent) + "/", "")
    return f"{short}:{line}({func})"


def profile_call(calls: int) -> None:
    import bench_overhead as ov

    tmp = scratch("prof")
    os.environ["LEDGER_HOME"] = tmp
    proc = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "_standin.py")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdin is not None
    url = proc.stdout.readline().strip()
    try:
        for stream in (False, True):
            bare = ov._sdk(url, stream, None, None)[0]
            inst, flush, _ = ov._sdk(url, stream, f"sqlite:///{tmp}/l.db", f"{tmp}/spool")
            for f in (bare, inst):
                for _ in range(100):
                    f()
            flush()
            result = {}
            for name, f in (("bare", bare), ("instrumented", inst)):
                prof = cProfile.Profile()
                prof.enable()
                for _ in range(calls):
                    f()
                prof.disable()
                result[name] = _stats(prof)
                if flush and name == "instrumented":
                    flush()
            a, b = result["bare"], result["instrumented"]
            tot_a = sum(v[1] for v in a.values()) / calls * 1e6
            tot_b = sum(v[1] for v in b.values()) / calls * 1e6
            print(
                f"\n== SDK {'stream' if stream else 'non-stream'} call, main thread under cProfile: "
                f"{tot_a:.0f} µs/call without instrument(), {tot_b:.0f} with (+{tot_b - tot_a:.0f})"
            )
            diff = sorted(
                ((b.get(k, (0, 0, 0))[1] - a.get(k, (0, 0, 0))[1]) / calls * 1e6, k) for k in set(a) | set(b)
            )
            print("  own time grown most (µs/call, ncalls/call with instrument):")
            for d, k in reversed(diff[-18:]):
                print(f"  {d:8.1f}  {b.get(k, (0, 0, 0))[0] / calls:6.1f}  {_name(k)}")
            ledger_cum = sorted(
                ((v[2] / calls * 1e6, k) for k, v in b.items() if "/ledger/" in k[0]), reverse=True
            )
            print("  ledger functions by cumulative time (µs/call):")
            for c, k in ledger_cum[:12]:
                print(f"  {c:8.1f}  {_name(k)}")
    finally:
        proc.stdin.close()
        proc.wait(10)


def profile_writer(n: int) -> None:
    from ledger import journal
    from ledger.journal.codec import encode

    targets = [("SQLite", None)]
    if pg_reachable() is None:
        targets.append(("PostgreSQL", "pg"))
    lines = [encode(e).rstrip(b"\n") for e in Synth(3).events(n + 2000)]
    for name, kind in targets:
        tmp = scratch("prof-w")
        if kind is None:
            cm: Any = None
            url = f"sqlite:///{tmp}/l.db"
        else:
            cm = pg_schema("prof")
            url = pg_url(cm.__enter__())
        try:
            new_ledger(url)
            sink = journal.writer.Sink(url)
            reject = journal.spool.Reject(Path(tmp))
            journal.writer.write_lines(sink, reject, lines[:2000])
            prof = cProfile.Profile()
            prof.enable()
            for i in range(2000, n + 2000, 2000):
                journal.writer.write_lines(sink, reject, lines[i : i + 2000])
            prof.disable()
            sink.dispose()
        finally:
            if cm is not None:
                cm.__exit__(None, None, None)
        st = _stats(prof)
        total = sum(v[1] for v in st.values()) / n * 1e6
        print(f"\n== writer path into {name}, batches of 2000, under cProfile: {total:.1f} µs/event")
        print("  top own time (µs/event, calls/event):")
        for k, v in sorted(st.items(), key=lambda kv: -kv[1][1])[:14]:
            print(f"  {v[1] / n * 1e6:8.2f}  {v[0] / n:6.2f}  {_name(k)}")
        print("  ledger functions by cumulative time (µs/event):")
        for k, v in sorted(((k, v) for k, v in st.items() if "/ledger/" in k[0]), key=lambda kv: -kv[1][2])[
            :14
        ]:
            print(f"  {v[2] / n * 1e6:8.2f}  {_name(k)}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", nargs="?", default="all", choices=("call", "writer", "all"))
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--events", type=int, default=40_000)
    args = ap.parse_args()
    if args.what in ("call", "all"):
        profile_call(args.calls)
    if args.what in ("writer", "all"):
        profile_writer(args.events)


if __name__ == "__main__":
    main()
