"""Reports: where report files go and how they are written, including the scheduler's daily job.

Files go to ``$LEDGER_REPORTS_DIR/<project folder>/<period>_<zone>.<fmt>`` (default folder
``./reports``) or where asked; the project folder is a safe slug plus a short hash, so no name
leaves the reports folder; files are written atomically (temporary file, then rename).
:func:`render` picks the format (:data:`FORMATS`): CSV and JSON from :mod:`ledger.reports.formats`,
HTML from :mod:`ledger.reports.html`.
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine, select

from ledger.calendar import Period, day_of, parse_zone, period_bounds
from ledger.reports.build import Report, ReportError, build_report
from ledger.reports.formats import to_csv, to_json
from ledger.reports.html import to_html
from ledger.store.schema import UsageRollupRow

__all__ = [
    "FORMATS",
    "daily_reports",
    "default_path",
    "project_folder",
    "render",
    "reports_dir",
    "write_report",
]

FORMATS = ("csv", "json", "html")


def render(report: Report, fmt: str) -> str:
    """The report as text in ``fmt``, one of :data:`FORMATS`."""
    if fmt == "csv":
        return to_csv(report)
    if fmt == "json":
        return to_json(report)
    if fmt == "html":
        return to_html(report)
    raise ReportError(f"unknown report format {fmt!r}; use one of {', '.join(FORMATS)}")


def reports_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$LEDGER_REPORTS_DIR``, else ``./reports``."""
    chosen = (os.environ if env is None else env).get("LEDGER_REPORTS_DIR")
    return Path(chosen).expanduser() if chosen else Path("reports")


def _slug(text: str, limit: int) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", ascii_text).strip("-_")[:limit].strip("-_")
    return slug


def project_folder(project: str | None) -> str:
    """A folder name for ``project`` that cannot leave its parent: a slug plus a hash of the name."""
    if project is None:
        return "all-projects"
    digest = hashlib.sha256(project.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    return f"{_slug(project, 40) or 'project'}-{digest}"


def _file_name(period: Period, tz: str, fmt: str) -> str:
    return f"{period.label}_{_slug(tz.replace('/', '-'), 60) or 'zone'}.{fmt}"


def default_path(base: Path, project: str | None, period: Period, tz: str, fmt: str) -> Path:
    """``base/<project folder>/<period>_<zone>.<fmt>``, checked to be inside ``base``."""
    path = base / project_folder(project) / _file_name(period, tz, fmt)
    root = base.resolve()
    if root not in path.resolve().parents:
        raise ReportError(f"report path {path} would leave the reports folder {base}")
    return path


def write_file(path: Path, data: str) -> None:
    """Write ``data`` (UTF-8) to ``path`` atomically and owner-only (:class:`~ledger.outfile.OutFile`:
    a temporary file beside it, then a rename; never over a device, a symlink or a folder)."""
    from ledger.outfile import write_bytes

    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(path, data.encode("utf-8", "replace"))


def write_report(report: Report, fmt: str, out: Path | None = None, base: Path | None = None) -> Path:
    """Render and write; returns the path. ``out`` is a file, or a folder (existing, or written with a
    trailing slash) to put the default file name in; without it the file goes under ``base``
    (default :func:`reports_dir`)."""
    text = render(report, fmt)
    if out is None:
        path = default_path(base or reports_dir(), report.project, report.period, report.tz, fmt)
    elif out.is_dir() or str(out).endswith(("/", os.sep)):
        path = Path(out) / f"{project_folder(report.project)}_{_file_name(report.period, report.tz, fmt)}"
    else:
        path = out
    write_file(path, text)
    return path


def daily_reports(
    engine: Engine, now: datetime, tz: str, base: Path, formats: Sequence[str] = ("html", "json")
) -> list[Path]:
    """The scheduler's job: yesterday's (in ``tz``) report for all projects and for each project with
    usage that day, under ``base``."""
    from ledger.store.rollup import rollup

    zone = parse_zone(tz)
    period = day_of(now.astimezone(zone).date() - timedelta(days=1))
    bounds = period_bounds(period, zone)
    rollup(engine)
    r = UsageRollupRow.__table__.c
    with engine.connect() as conn:
        projects = sorted(
            str(p)
            for p in conn.execute(
                select(r.project).where(r.bucket >= bounds[0], r.bucket < bounds[-1]).distinct()
            ).scalars()
        )
    written = []
    for project in [None, *projects]:
        report = build_report(engine, period, zone, project, refresh=False)
        written += [write_report(report, fmt, base=base) for fmt in formats]
    return written
