"""Figure 5: the per-project report and the FOCUS billing export over a month of events.

A SQLite ledger (the embedded default; PostgreSQL is not measured here) is filled with one month
(March 2025) of synthetic events over 100 projects with raw driver inserts, then rolled up
(untimed). At two sizes (1 M and 100k events; --quick 100k and 10k):

* per-project report: ``reports.build_report(engine, 2025-03, Europe/Berlin, "proj-000",
  refresh=False)`` (the busiest project) rendered as HTML and JSON; baseline: one bare SQL
  ``GROUP BY`` over ``usage_rollup`` for that project and month;
* FOCUS export: ``billing.export_billing(engine, "2025-03", out=<file>.csv)``, first issue of the
  month (timed once) and re-exports; baseline: one bare SQL ``GROUP BY`` over the month's events
  with the export's keys.

Time is the median of a few runs without tracing; peak memory is ``tracemalloc``'s peak during
one more run (Python heap, numpy/pandas buffers included; the re-export for FOCUS, which builds
the same rows as the first issue). Memory at the big size against the small one must stay flat.
If ``ledger.reports.build`` / ``ledger.exports.focus`` are missing, a clearly marked placeholder row is shown.
"""

from __future__ import annotations

import importlib.util
import time
import tracemalloc
from pathlib import Path
from typing import Any

from _common import MONTH, Synth, fill_sqlite, median, new_ledger, row, scratch

FLAT = "flat: ≤ 1.5× or +<1 MiB"


def _flat(big: float, small: float) -> bool:
    """Memory does not grow with 10× the events: within 1.5×, or under 1 MiB more (a ratio of
    two sub-megabyte peaks is mostly noise)."""
    return big <= 1.5 * small or big - small < 1.0


PENDING = "pending: reports/FOCUS export modules land in this issue"
PROJECT = "proj-000"
TZ = "Europe/Berlin"


def _peak(fn: Any) -> float:
    """Peak traced memory (MiB) while ``fn`` runs."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        fn()
        return (tracemalloc.get_traced_memory()[1] - base) / 2**20
    finally:
        tracemalloc.stop()


def _times(fn: Any, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def _one_size(n: int, reps: int) -> dict[str, Any]:
    from sqlalchemy import text

    from ledger import calendar, store
    from ledger.exports import billing
    from ledger.reports import build as reports
    from ledger.reports import files as report_files
    from ledger.store import rollup

    tmp = scratch("rep")
    url = f"sqlite:///{tmp}/ledger.db"
    new_ledger(url)
    out: dict[str, Any] = {"events": n}
    t0 = time.perf_counter()
    fill_sqlite(f"{tmp}/ledger.db", Synth(5), n, 0, id_prefix="a", rolled_up=False)
    out["fill_s"] = time.perf_counter() - t0
    engine = store.make_engine(url)
    try:
        t0 = time.perf_counter()
        rollup.rollup(engine)
        out["rollup_s"] = time.perf_counter() - t0
        with engine.connect() as conn:
            out["usage_rollup_rows"] = conn.execute(text("SELECT count(*) FROM usage_rollup")).scalar_one()
        period = calendar.parse_period(MONTH.strftime("%Y-%m"))
        zone = calendar.parse_zone(TZ)

        def report() -> None:
            r = reports.build_report(engine, period, zone, PROJECT, refresh=False)
            report_files.render(r, "html")
            report_files.render(r, "json")

        bounds = calendar.period_bounds(period, zone)

        def report_sql() -> None:
            with engine.connect() as conn:
                conn.execute(
                    text(
                        "SELECT model, status, kind, free, priced, sum(events), sum(prompt_tokens), "
                        "sum(completion_tokens), sum(total_tokens), sum(cost_nanos), sum(list_cost_nanos) "
                        "FROM usage_rollup WHERE project = :p AND bucket >= :s AND bucket < :e "
                        "GROUP BY model, status, kind, free, priced"
                    ),
                    {
                        "p": PROJECT,
                        "s": bounds[0].strftime("%Y-%m-%d %H:%M:%S.%f"),
                        "e": bounds[-1].strftime("%Y-%m-%d %H:%M:%S.%f"),
                    },
                ).all()

        report()  # warm: pandas import, statement caches
        rt, rb = [], []
        for _ in range(reps):  # interleaved with its baseline
            rt += _times(report, 1)
            rb += _times(report_sql, 1)
        out["report_s"], out["report_sql_s"] = median(rt), median(rb)
        out["report_peak_mib"] = _peak(report)

        month = MONTH.strftime("%Y-%m")
        csv_path = Path(tmp) / "focus.csv"

        def export() -> Any:
            return billing.export_billing(engine, month, out=csv_path, fmt="csv")

        def export_sql() -> None:
            with engine.connect() as conn:
                conn.execute(
                    text(
                        "SELECT project, route, book, coalesce(served_model, requested_model, ''), price_id, free, "
                        "sum(coalesce(prompt_tokens, 0) - coalesce(cached_tokens, 0)), sum(coalesce(cached_tokens, 0)), "
                        "sum(coalesce(completion_tokens, 0)), sum(coalesce(total_tokens, 0)), sum(cost_nanos) "
                        "FROM events WHERE occurred_at >= :s AND occurred_at < :e AND cost_nanos IS NOT NULL "
                        "GROUP BY project, route, book, coalesce(served_model, requested_model, ''), price_id, free"
                    ),
                    {"s": "2025-03-01 00:00:00.000000", "e": "2025-04-01 00:00:00.000000"},
                ).all()

        fb = _times(export_sql, 1)
        t0 = time.perf_counter()
        first = export()
        out["focus_first_s"] = time.perf_counter() - t0
        out["focus_rows"] = len(first.rows)
        out["focus_file_bytes"] = csv_path.stat().st_size
        ft = []
        for _ in range(reps):
            fb += _times(export_sql, 1)
            ft += _times(export, 1)
        out["focus_reexport_s"], out["focus_sql_s"] = median(ft), median(fb)
        out["focus_peak_mib"] = _peak(export)
    finally:
        engine.dispose()
    return out


def main(quick: bool) -> dict[str, Any]:
    fig = "5 reports"
    present = {
        m: importlib.util.find_spec(m) is not None for m in ("ledger.reports.build", "ledger.exports.focus")
    }
    if not all(present.values()):
        return {
            "rows": [row(fig, PENDING, value=None, unit="", verdict="pending", modules=present)],
            "notes": {"modules": present},
        }
    big, small = (100_000, 10_000) if quick else (1_000_000, 100_000)
    reps = 3 if quick else 5
    notes: dict[str, Any] = {"backend": "SQLite only", "project": PROJECT, "zone": TZ}
    rows: list[dict[str, Any]] = []
    try:
        s = _one_size(small, reps)
        b = _one_size(big, reps)
    except Exception as exc:  # noqa: BLE001 - the modules are new; say what broke instead of dying
        import traceback

        notes["error"] = traceback.format_exc()
        return {
            "rows": [
                row(
                    fig,
                    f"reports/FOCUS benchmark failed: {type(exc).__name__}: {exc}"[:160],
                    value=None,
                    unit="",
                    verdict="ERROR",
                )
            ],
            "notes": notes,
        }
    notes["small"], notes["big"] = s, b
    nb, ns = f"{big:,}", f"{small:,}"
    rows.append(
        row(
            fig,
            f"per-project report (build + HTML + JSON), month of {nb} events",
            value=b["report_s"],
            unit="s",
            baseline_name="bare SQL GROUP BY on usage_rollup",
            baseline=b["report_sql_s"],
            usage_rollup_rows=b["usage_rollup_rows"],
        )
    )
    rows.append(
        row(
            fig,
            f"per-project report time, {nb} vs {ns} events",
            value=b["report_s"],
            unit="s",
            baseline_name=f"same on {ns}",
            baseline=s["report_s"],
        )
    )
    rows.append(
        row(
            fig,
            f"per-project report peak memory, {nb} vs {ns} events",
            value=b["report_peak_mib"],
            unit="MiB",
            baseline_name=f"same on {ns}",
            baseline=s["report_peak_mib"],
            target=FLAT,
            ok=_flat(b["report_peak_mib"], s["report_peak_mib"]),
            note="tracemalloc peak",
        )
    )
    rows.append(
        row(
            fig,
            f"FOCUS export (CSV), first issue, month of {nb} events",
            value=b["focus_first_s"],
            unit="s",
            baseline_name="bare SQL GROUP BY on the month's events",
            baseline=b["focus_sql_s"],
            focus_rows=b["focus_rows"],
            reexport_s=b["focus_reexport_s"],
            file_bytes=b["focus_file_bytes"],
        )
    )
    rows.append(
        row(
            fig,
            f"FOCUS export time, {nb} vs {ns} events",
            value=b["focus_first_s"],
            unit="s",
            baseline_name=f"same on {ns}",
            baseline=s["focus_first_s"],
        )
    )
    rows.append(
        row(
            fig,
            f"FOCUS export peak memory, {nb} vs {ns} events",
            value=b["focus_peak_mib"],
            unit="MiB",
            baseline_name=f"same on {ns}",
            baseline=s["focus_peak_mib"],
            target=FLAT,
            ok=_flat(b["focus_peak_mib"], s["focus_peak_mib"]),
            note="tracemalloc peak of a re-export",
        )
    )
    return {"rows": rows, "notes": notes}
