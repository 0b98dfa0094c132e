"""Figure 2: import cost and the wrapper's first call, in fresh interpreters.

* ``python -c "import ledger"`` against ``python -c pass`` (and ``import httpx``, the call path's
  one dependency), interleaved; wall time from spawn to exit and peak RSS from ``wait4``.
* First call: a fresh process imports ledger, makes a ``CerebrasClient`` and sends one chat
  completion to a stand-in already running in another process, on a ledger that already exists
  (created before the runs). Baseline: the same with bare httpx. Then it reports which heavy
  modules are loaded right after the call and again after the writer thread has flushed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

from _common import median, row, scratch

HERE = os.path.dirname(os.path.abspath(__file__))
HEAVY = ("pandas", "alembic", "sqlalchemy", "numpy", "apscheduler", "click")

LEDGER_FIRST = """
import time
t0 = time.perf_counter()
import ledger
client = ledger.CerebrasClient("bench", api_key="k", base_url={url!r})
client.chat.completions.create(model="gpt-oss-120b", messages=[{{"role": "user", "content": "hello there"}}])
took = time.perf_counter() - t0
import json, sys
after_call = [m for m in {heavy!r} if m in sys.modules]
flushed = client.flush(30)
after_flush = [m for m in {heavy!r} if m in sys.modules]
print(json.dumps({{"took": took, "after_call": after_call, "after_flush": after_flush, "flushed": flushed}}))
"""

BARE_FIRST = """
import time
t0 = time.perf_counter()
import httpx, json
client = httpx.Client(timeout=60)
client.post({url!r} + "/v1/chat/completions", headers={{"authorization": "Bearer k"}},
            content=json.dumps({{"model": "gpt-oss-120b",
                                 "messages": [{{"role": "user", "content": "hello there"}}]}}).encode()).json()
took = time.perf_counter() - t0
print(json.dumps({{"took": took}}))
"""


def spawn(code: str, env: dict[str, str]) -> tuple[float, float, str]:
    """Run ``python -c code``; (wall seconds spawn-to-exit, peak RSS MiB, stdout)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"benchmark child failed ({proc.returncode}): {code[:80]!r}")
    return wall, usage.ru_maxrss / 1024, out.decode()


def _compile_ledger() -> str:
    """Write ledger's .pyc files, as ``pip install`` does for an installed package. An editable
    checkout run with ``PYTHONDONTWRITEBYTECODE=1`` (as on these machines) would otherwise
    compile every ledger module from source at each start: about 30 ms that no installed copy
    pays. (``py_compile`` writes them whatever that variable says; they are git-ignored.)"""
    import compileall
    import importlib.util

    spec = importlib.util.find_spec("ledger")
    folder = os.path.dirname(spec.origin) if spec and spec.origin else None
    if folder is None or not compileall.compile_dir(folder, quiet=1):
        return "could not compile ledger's bytecode; imports compile from source"
    return f"ledger's .pyc files written first (PYTHONDONTWRITEBYTECODE={os.environ.get('PYTHONDONTWRITEBYTECODE', '')!r})"


def main(quick: bool) -> dict[str, Any]:
    fig = "2 import"
    runs = 10 if quick else 25
    tmp = scratch("imp")
    env = {**os.environ, "LEDGER_HOME": tmp}
    for k in ("LEDGER_DATABASE_URL", "LEDGER_SPOOL_DIR", "LEDGER_PROJECT"):
        env.pop(k, None)
    rows: list[dict[str, Any]] = []
    notes: dict[str, Any] = {"runs": runs, "bytecode": _compile_ledger()}

    # -- import ledger ---------------------------------------------------------------------
    codes = {"pass": "pass", "httpx": "import httpx", "ledger": "import ledger"}
    wall: dict[str, list[float]] = {k: [] for k in codes}
    rss: dict[str, list[float]] = {k: [] for k in codes}
    for c in codes.values():  # warm the page cache
        spawn(c, env)
    for _ in range(runs):
        for k, c in codes.items():
            w, r, _ = spawn(c, env)
            wall[k].append(w)
            rss[k].append(r)
    m = {k: median(v) for k, v in wall.items()}
    mr = {k: median(v) for k, v in rss.items()}
    rows.append(
        row(
            fig,
            "`python -c 'import ledger'` wall",
            value=m["ledger"],
            unit="s",
            baseline_name="`python -c pass`",
            baseline=m["pass"],
            import_cost_s=m["ledger"] - m["pass"],
            runs=runs,
        )
    )
    rows.append(
        row(
            fig,
            "import ledger − python startup",
            value=m["ledger"] - m["pass"],
            unit="s",
            baseline_name="import httpx − python startup",
            baseline=m["httpx"] - m["pass"],
            note="the ledger's own import on top of httpx is value − baseline",
        )
    )
    rows.append(
        row(
            fig,
            "import ledger peak RSS delta",
            value=mr["ledger"] - mr["pass"],
            unit="MiB",
            baseline_name="import httpx peak RSS delta",
            baseline=mr["httpx"] - mr["pass"],
            python_pass_rss_mib=mr["pass"],
            ledger_rss_mib=mr["ledger"],
        )
    )

    # -- the wrapper's first call ----------------------------------------------------------
    proc = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "_standin.py")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdin is not None
    url = proc.stdout.readline().strip()
    try:
        ledger_code = LEDGER_FIRST.format(url=url, heavy=HEAVY)
        bare_code = BARE_FIRST.format(url=url)
        spawn(ledger_code, env)  # creates and migrates the embedded default ledger: not timed
        spawn(bare_code, env)
        firsts: dict[str, list[float]] = {"ledger": [], "bare": []}
        procs: dict[str, list[float]] = {"ledger": [], "bare": []}
        frss: dict[str, list[float]] = {"ledger": [], "bare": []}
        loaded_call: set[str] = set()
        loaded_flush: set[str] = set()
        flushed = True
        for _ in range(runs):
            for k, code in (("bare", bare_code), ("ledger", ledger_code)):
                w, r, out = spawn(code, env)
                res = json.loads(out.strip().splitlines()[-1])
                firsts[k].append(res["took"])
                procs[k].append(w)
                frss[k].append(r)
                if k == "ledger":
                    loaded_call |= set(res["after_call"])
                    loaded_flush |= set(res["after_flush"])
                    flushed &= bool(res["flushed"])
    finally:
        proc.stdin.close()
        proc.wait(10)
    first, bare = median(firsts["ledger"]), median(firsts["bare"])
    rows.append(
        row(
            fig,
            "first call: import + client + 1 call (in-process)",
            value=first,
            unit="s",
            baseline_name="same with bare httpx",
            baseline=bare,
            target="≤ 0.35 s",
            ok=first <= 0.35,
            max_s=max(firsts["ledger"]),
            process_wall_s=median(procs["ledger"]),
            bare_process_wall_s=median(procs["bare"]),
            runs=runs,
            note="the target is absolute; the ratio is against bare httpx measured interleaved",
        )
    )
    rows.append(
        row(
            fig,
            "first call process peak RSS",
            value=median(frss["ledger"]),
            unit="MiB",
            baseline_name="bare httpx process",
            baseline=median(frss["bare"]),
        )
    )
    bad = sorted(loaded_call & {"pandas", "alembic"}) + sorted(
        (loaded_flush - loaded_call) & {"pandas", "alembic"}
    )
    rows.append(
        row(
            fig,
            "pandas, alembic not in sys.modules after first call (and after flush)",
            value=float(not bad),
            unit="bool",
            target="not loaded",
            ok=not bad,
            loaded_after_call=sorted(loaded_call),
            loaded_after_flush=sorted(loaded_flush),
            all_flushed=flushed,
        )
    )
    notes["loaded_after_first_call"] = sorted(loaded_call)
    notes["loaded_after_flush"] = sorted(loaded_flush)
    return {"rows": rows, "notes": notes}
