"""cerebras-ledger benchmark suite (not part of the test run; nothing here asserts on time).

    .venv/bin/python benchmarks/run.py [--quick] [--only NAMES] [--out benchmarks/results.json]

NAMES is a comma-separated subset of: overhead, import, ingest, rollup, reports, service.
Each figure runs in its own fresh Python process (so one figure's threads, imports and memory
never colour another's) and is reported as a ratio against a baseline measured in that same
process run, interleaved where possible: this machine is shared, so absolute times drift.
Prints a table (figure, value, baseline, ratio, target, verdict) and writes the same rows as JSON
with the machine's description. See benchmarks/README.md for what each figure measures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

FIGURES = ("overhead", "import", "ingest", "rollup", "reports", "service")
MODULES = {
    "overhead": "bench_overhead",
    "import": "bench_import",
    "ingest": "bench_ingest",
    "rollup": "bench_rollup",
    "reports": "bench_reports",
    "service": "bench_service",
}


def machine() -> dict[str, Any]:
    from _common import pg_version

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    ram = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    ram = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    versions = {}
    from importlib.metadata import PackageNotFoundError, version

    for pkg in ("cerebras-ledger", "httpx", "SQLAlchemy", "psycopg", "cerebras_cloud_sdk", "litellm"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    try:
        commit = (
            subprocess.run(
                ["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                check=False,
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout.strip()
            or None
        )
    except Exception:  # noqa: BLE001
        commit = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "ram_gib": ram,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "python_impl": platform.python_implementation(),
        "sqlite": sqlite3.sqlite_version,
        "postgresql": pg_version(),
        "packages": versions,
        "git_commit": commit,
        "load_avg_at_start": os.getloadavg(),
        "ledger_writer": os.environ.get("LEDGER_WRITER", "thread"),  # figures 1 and 3 (spool) depend on it
    }


def fmt_value(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if unit == "s":
        if abs(v) < 1e-3:
            return f"{v * 1e6:.1f} µs"
        if abs(v) < 1:
            return f"{v * 1e3:.2f} ms"
        return f"{v:.2f} s"
    if unit == "ev/s":
        return f"{v:,.0f} ev/s"
    if unit == "MiB":
        return f"{v:.1f} MiB"
    if unit == "µs":
        return f"{v:.2f} µs"
    if unit == "bool":
        return "yes" if v else "no"
    return f"{v:g} {unit}".strip()


def table(rows: list[dict[str, Any]]) -> str:
    head = ("figure", "value", "baseline", "ratio", "target", "verdict")
    lines = []
    for r in rows:
        base = ""
        if r.get("baseline_name"):
            base = (
                f"{r['baseline_name']}: {fmt_value(r.get('baseline'), r.get('baseline_unit') or r['unit'])}"
            )
            if r.get("baseline") is None:
                base = r["baseline_name"]
        ratio = "" if r.get("ratio") is None else f"{r['ratio']:.3f}×"
        lines.append(
            (
                f"{r['figure'].split(' ', 1)[0]}. {r['name']}",
                fmt_value(r.get("value"), r["unit"]),
                base,
                ratio,
                r.get("target", ""),
                r["verdict"],
            )
        )
    widths = [max(len(h), *(len(x[i]) for x in lines)) if lines else len(h) for i, h in enumerate(head)]
    out = [
        "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)),
        "  ".join("-" * w for w in widths),
    ]
    out += ["  ".join(c.ljust(w) for c, w in zip(x, widths, strict=True)) for x in lines]
    return "\n".join(out)


def run_worker(name: str, quick: bool) -> dict[str, Any]:
    """Run one figure in a fresh interpreter; its rows come back through a file."""
    fd, path = tempfile.mkstemp(prefix=f"bench-{name}-", suffix=".json")
    os.close(fd)
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, "--worker-out", path]
    if quick:
        cmd.append("--quick")
    t0 = time.monotonic()
    proc = subprocess.run(cmd, check=False, cwd=ROOT)
    took = time.monotonic() - t0
    try:
        with open(path) as fh:
            result: dict[str, Any] = json.load(fh)
    except (OSError, ValueError):
        result = {
            "rows": [
                {
                    "figure": f"? {name}",
                    "name": f"{name} failed (exit {proc.returncode})",
                    "value": None,
                    "unit": "",
                    "verdict": "ERROR",
                    "target": "",
                    "detail": {},
                }
            ],
            "notes": {"error": f"worker exited {proc.returncode}"},
        }
    finally:
        os.unlink(path)
    result.setdefault("notes", {})["seconds"] = round(took, 1)
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="smaller sizes and fewer repetitions (~5 minutes)")
    ap.add_argument("--only", default="", help=f"comma-separated figures: {', '.join(FIGURES)}")
    ap.add_argument(
        "--out", default=os.path.join("benchmarks", "results.json"), help="where to write the JSON"
    )
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        import importlib

        from _common import dump

        mod = importlib.import_module(MODULES[args.worker])
        dump(mod.main(args.quick), args.worker_out)
        return 0

    only = [x.strip() for x in args.only.split(",") if x.strip()] or list(FIGURES)
    bad = [x for x in only if x not in FIGURES]
    if bad:
        ap.error(f"unknown figure(s) {', '.join(bad)}; choose from {', '.join(FIGURES)}")
    started = datetime.now(UTC)
    from _common import drop_stale_schemas

    stale = drop_stale_schemas()
    if stale:
        print(
            f"dropped {len(stale)} PostgreSQL schema(s) left by earlier interrupted runs: {', '.join(stale)}"
        )
    info = machine()
    print(f"cerebras-ledger benchmarks ({'quick' if args.quick else 'full'}): {', '.join(only)}")
    print(
        f"machine: {info['cpu']}, {info['cores']} cores, {info['ram_gib']} GiB RAM, Python {info['python']}, "
        f"SQLite {info['sqlite']}, PostgreSQL {info['postgresql'] or 'not reachable'}; "
        f"load average {', '.join(f'{x:.2f}' for x in info['load_avg_at_start'])}",
        flush=True,
    )
    rows: list[dict[str, Any]] = []
    notes: dict[str, Any] = {}
    for name in only:
        print(f"... {name}", flush=True)
        result = run_worker(name, args.quick)
        rows += result["rows"]
        notes[name] = result.get("notes", {})
        print(table(result["rows"]), flush=True)
    info["load_avg_at_end"] = os.getloadavg()
    doc = {
        "suite": "cerebras-ledger benchmarks",
        "mode": "quick" if args.quick else "full",
        "figures": only,
        "command": " ".join(["benchmarks/run.py", *sys.argv[1:]]),
        "started": started.isoformat(),
        "seconds": round((datetime.now(UTC) - started).total_seconds(), 1),
        "machine": info,
        "rows": rows,
        "notes": notes,
    }
    print()
    print(table(rows))
    met = sum(r["verdict"] == "met" for r in rows)
    missed = [r for r in rows if r["verdict"] == "MISSED"]
    print(
        f"\ntargets met: {met}, missed: {len(missed)}"
        + ("  (" + "; ".join(r["name"] for r in missed) + ")" if missed else "")
    )
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(doc, fh, indent=1, default=str, ensure_ascii=False)
        fh.write("\n")
    print(f"wrote {args.out} ({doc['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
