"""The ``scheduler`` command: run the ledger's jobs (rollups, alert checks, reports, billing)
on a schedule, or list them (:mod:`ledger.scheduler.runner`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import click

from ledger.cli.common import format_option, open_engine, rows_out

__all__ = ["scheduler_cmd"]


@click.command("scheduler")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="TOML file with a [scheduler] table (LEDGER_SCHEDULE_* variables override it).",
)
@click.option("--list", "list_only", is_flag=True, help="Print the jobs and their next run times, then exit.")
@format_option()
@click.pass_context
def scheduler_cmd(ctx: click.Context, config_file: Path | None, list_only: bool, fmt: str) -> None:
    """Run the ledger's jobs on a schedule until SIGTERM: rollups and alert checks every few
    minutes, daily per-project reports, and the monthly billing export.

    Safe to run twice against one ledger: each job run takes a lease in the database.

    \b
    Example:
      LEDGER_SCHEDULE_ROLLUP_SECONDS=60 cerebras-ledger scheduler
      cerebras-ledger scheduler --config ledger.toml --list
    """
    from ledger.scheduler.runner import build_scheduler, load_schedule, run_scheduler

    schedule = load_schedule(config_file)
    with open_engine(ctx) as engine:
        if not list_only:
            run_scheduler(engine, schedule)
            return
        sched = build_scheduler(engine, schedule)
        now = datetime.now(UTC)
        rows = [
            {
                "job": job.id,
                "trigger": str(job.trigger),
                "next_run": (job.trigger.get_next_fire_time(None, now) or now).astimezone(UTC).isoformat(),
            }
            for job in sched.get_jobs()
        ]
    rows_out(rows, fmt, ["job", "trigger", "next_run"])
