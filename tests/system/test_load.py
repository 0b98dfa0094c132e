"""Load: several processes, each with threads or asyncio tasks, write one ledger at once.

Each test runs on a SQLite file and on PostgreSQL (the ``db_url`` fixture). Calls go over real
loopback HTTP to one :class:`~ledger.testing.StandIn` in this process; the callers are child
processes (``tests/system/_load_worker.py``) sharing one spool folder and one database, while ad-hoc
``cerebras-ledger`` commands and two schedulers run beside them.

What is asserted is correctness only -- counts, ids, sums to the nano-dollar, exit codes, clean
stderr -- never how fast anything ran. Expected money is computed here, independently of the
ledger's own arithmetic (:func:`expected_cost`), from the usage the callers got back and the
rates of the built-in price book.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from ledger import calendar, store
from ledger.pricing import ALIASES, BUILTIN_PRICES, PricePoint
from ledger.store.schema import EventRow, IngestBatchRow, UsageRollupRow
from ledger.testing import StandIn

WORKER = Path(__file__).with_name("_load_worker.py")
# What a clean stderr never holds: a lock error that leaked, a traceback, a failed command.
STDERR_BAD = ("locked", "Traceback", "error:", "CRITICAL", "cannot write to")


# -- independent pricing ---------------------------------------------------------------------------


def _point(book: str, model: str) -> PricePoint | None:
    """The built-in point for ``model`` (or the model it is an alias of, or an alias of it)."""
    names = {model, ALIASES.get(model, model)} | {a for a, target in ALIASES.items() if target == model}
    found = [p for p in BUILTIN_PRICES if p.book == book and p.model in names]
    assert len(found) <= 1, f"ambiguous built-in price for {book}/{model}"
    return found[0] if found else None


def expected_cost(book: str, model: str, prompt: int, cached: int, completion: int) -> int | None:
    """Nano-dollars for this usage, by hand: integers only, ``None`` when the model is unpriced."""
    p = _point(book, model)
    if p is None:
        return None
    if p.free:
        return 0
    cached_rate = p.input.nanos if p.cached is None else p.cached.nanos
    return p.input.nanos * (prompt - cached) + cached_rate * cached + p.output.nanos * completion


def test_independent_pricing_matches_the_published_rates() -> None:
    # $0.35 / $0.75 per 1M tokens = 350 / 750 nano-dollars a token; free on Lava is free.
    assert expected_cost("cerebras", "gpt-oss-120b", 1000, 0, 100) == 1000 * 350 + 100 * 750
    assert expected_cost("lava", "qwen-3-235b-instruct", 10, 4, 10) == 10 * 600 + 10 * 1200
    assert expected_cost("cerebras", "qwen-3-235b-instruct", 10, 0, 10) == 10 * 600 + 10 * 1200  # the alias
    assert expected_cost("lava", "llama3.1-8b", 10**6, 0, 10**6) == 0
    assert expected_cost("cerebras", "llama3.1-8b", 1000, 0, 1000) == 1000 * 100 + 1000 * 100
    assert expected_cost("lava", "mystery-model", 1, 0, 1) is None


# -- child processes ---------------------------------------------------------------------------------


def child_env(db_url: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in (
            "LEDGER_PROJECT",
            "CEREBRAS_API_KEY",
            "LAVA_FORWARD_TOKEN",
            "CEREBRAS_BASE_URL",
            "LAVA_BASE_URL",
            "LEDGER_SPOOL_FSYNC",
        )
    }
    env.update(
        {
            "LEDGER_DATABASE_URL": db_url,
            "LEDGER_HOME": str(tmp_path / "home"),
            "LEDGER_SPOOL_DIR": str(tmp_path / "spool"),
            "LEDGER_REPORTS_DIR": str(tmp_path / "reports"),
            "PYTHONUNBUFFERED": "1",
            **extra,
        }
    )
    return env


def spawn_worker(
    base_url: str, mode: str, workers: int, env: dict[str, str], log: Path, *args: str
) -> subprocess.Popen[bytes]:
    err = open(log, "wb")  # noqa: SIM115 - closed below: the child has its own copy of the descriptor
    try:
        return subprocess.Popen(
            [sys.executable, str(WORKER), base_url, mode, str(workers), *args],
            stdout=subprocess.PIPE,
            stderr=err,
            env=env,
        )
    finally:
        err.close()


def cli(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ledger", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


def assert_clean(what: str, code: int | None, stderr: str) -> None:
    assert code == 0, f"{what} exited {code}: {stderr[-2000:]}"
    bad = [b for b in STDERR_BAD if b in stderr]
    assert not bad, f"{what} printed {bad}: {stderr[-2000:]}"


def parse_lines(out: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.decode().splitlines() if line.strip()]


@dataclass
class CommandLoop:
    """Run ``cerebras-ledger`` commands over and over in a thread until stopped; keep every result.

    ``{n}`` in an argument becomes the run's number (so each run can write its own file)."""

    env: dict[str, str]
    commands: list[list[str]]
    results: list[tuple[float, list[str], subprocess.CompletedProcess[str]]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    rounds: int = 0  # times every command has run

    def start(self) -> CommandLoop:
        def run() -> None:
            n = 0
            while not self.stop.is_set():
                for template in self.commands:
                    n += 1
                    cmd = [a.replace("{n}", str(n)) for a in template]
                    started = time.monotonic()
                    self.results.append((started, cmd, cli(self.env, *cmd)))
                    if self.stop.is_set():
                        return
                self.rounds += 1

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        return self

    def finish(self) -> list[tuple[float, list[str], subprocess.CompletedProcess[str]]]:
        self.stop.set()
        assert self.thread is not None
        self.thread.join(timeout=600)
        assert not self.thread.is_alive()
        return self.results


@dataclass(frozen=True)
class Run:
    started: float
    ended: float
    events: int


class RollupLoop:
    """``ledger.rollup.rollup`` in a thread of this process, back to back, until stopped."""

    def __init__(self, url: str, pause: float = 0.05) -> None:
        self.url = url
        self.pause = pause
        self.runs: list[Run] = []
        self.errors: list[BaseException] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from ledger.store import rollup

        engine = store.make_engine(self.url)
        try:
            while not self.stop.is_set():
                started = time.monotonic()
                try:
                    result = rollup.rollup(engine)
                except Exception as exc:  # noqa: BLE001 - reported by finish()
                    self.errors.append(exc)
                    return
                self.runs.append(Run(started, time.monotonic(), result.events))
                self.stop.wait(self.pause)
        finally:
            engine.dispose()

    def start(self) -> RollupLoop:
        self.thread.start()
        return self

    def finish(self) -> list[Run]:
        self.stop.set()
        self.thread.join(timeout=600)
        assert not self.thread.is_alive()
        assert not self.errors, self.errors
        return self.runs


# -- reading the ledger back -------------------------------------------------------------------------


def engine_for(url: str) -> sa.Engine:
    return store.make_engine(url)


def make_schema(url: str) -> None:
    engine = store.make_engine(url)
    try:
        store.ensure_schema(engine)
    finally:
        engine.dispose()


def quarter(when: datetime) -> datetime:
    when = when.astimezone(UTC)
    return when.replace(minute=when.minute - when.minute % 15, second=0, microsecond=0)


def raw_by_project_quarter(engine: sa.Engine) -> dict[tuple[str, datetime], tuple[int, int, int]]:
    """(project, quarter hour) -> (usage rows, total tokens, cost) from the events, bucketed here."""
    e = EventRow.__table__.c
    out: dict[tuple[str, datetime], list[int]] = defaultdict(lambda: [0, 0, 0])
    with engine.connect() as conn:
        result = conn.execution_options(yield_per=20_000).execute(
            sa.select(e.project, e.occurred_at, e.kind, e.total_tokens, e.cost_nanos)
        )
        for project, when, kind, tokens, cost in result:
            acc = out[(project, quarter(when))]
            acc[0] += kind == "usage"
            acc[1] += tokens or 0
            acc[2] += cost or 0
    return {k: (v[0], v[1], v[2]) for k, v in out.items()}


def rolled_by_project_quarter(engine: sa.Engine) -> dict[tuple[str, datetime], tuple[int, int, int]]:
    r = UsageRollupRow.__table__.c
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(
                r.project,
                r.bucket,
                sa.func.sum(sa.case((r.kind == "usage", r.events), else_=0)),
                sa.func.sum(r.total_tokens),
                sa.func.sum(r.cost_nanos),
            ).group_by(r.project, r.bucket)
        ).all()
    return {(p, b.astimezone(UTC)): (int(c), int(t or 0), int(n or 0)) for p, b, c, t, n in rows}


def pending_batches(engine: sa.Engine) -> int:
    b = IngestBatchRow.__table__.c
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).where(b.rolled_up.is_(False))).scalar_one())


@dataclass
class Expected:
    """What the callers say they got back, and what it must cost."""

    calls: int = 0
    ids: Counter[str] = field(default_factory=Counter)
    by_project: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0, 0, 0]))
    unpriced: int = 0

    def add(
        self, upstream_id: str | None, project: str, book: str, model: str, calls: int, usage: Iterable[int]
    ) -> None:
        prompt, cached, completion, _reasoning, total = usage
        cost = expected_cost(book, model, prompt, cached, completion)
        if upstream_id is not None:
            self.ids[upstream_id] += 1
        self.calls += calls
        acc = self.by_project[project]
        acc[0] += calls
        acc[1] += total
        acc[2] += cost or 0
        acc[3] += prompt
        if cost is None:
            self.unpriced += calls

    @property
    def cost(self) -> int:
        return sum(v[2] for v in self.by_project.values())


def db_by_project(engine: sa.Engine) -> dict[str, list[int]]:
    e = EventRow.__table__.c
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(
                e.project,
                sa.func.count(),
                sa.func.sum(e.total_tokens),
                sa.func.coalesce(sa.func.sum(e.cost_nanos), 0),
                sa.func.sum(e.prompt_tokens),
            ).group_by(e.project)
        ).all()
    return {p: [int(c), int(t or 0), int(n), int(pr or 0)] for p, c, t, n, pr in rows}


# -- 1. processes x threads/tasks, one SQLite file or one PostgreSQL -----------------------------------


CALLS_PER_PROCESS = 300


def test_processes_threads_and_tasks_write_one_ledger_exactly(
    db_url: str, tmp_path: Path, upstream: StandIn, reliability: Any
) -> None:
    env = child_env(db_url, tmp_path)
    # The schema first, as a deployment does (`db upgrade`); the children then race only on writes.
    # (Several processes creating a new ledger at once is tested in test_durability.)
    make_schema(db_url)
    plan = [("threads", 4, 11), ("async", 4, 12), ("threads", 3, 13)]
    procs = [
        spawn_worker(
            upstream.base_url,
            mode,
            workers,
            env,
            tmp_path / f"w{i}.log",
            "--calls",
            str(CALLS_PER_PROCESS),
            "--projects",
            "6",
            "--seed",
            str(seed),
        )
        for i, (mode, workers, seed) in enumerate(plan)
    ]
    # While they call: ad-hoc `rollup` and `verify` commands from other processes, and rollups
    # in this process, back to back.
    loop = CommandLoop(env, [["rollup", "--format", "json"], ["verify", "--format", "json"]]).start()
    inproc = RollupLoop(db_url).start()
    try:
        outputs = [p.communicate(timeout=300)[0] for p in procs]
        load_ended = time.monotonic()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        ran = loop.finish()
        runs = inproc.finish()
    # At least one rollup really ran during the load: it started, consumed events and committed
    # before the last caller was done.
    assert [r for r in runs if r.ended < load_ended and r.events], runs
    assert any(started < load_ended for started, cmd, _ in ran if cmd[0] == "rollup")

    expected = Expected()
    for i, (p, out) in enumerate(zip(procs, outputs, strict=True)):
        assert_clean(f"worker {i}", p.returncode, (tmp_path / f"w{i}.log").read_text())
        lines = parse_lines(out)
        done = lines[-1]
        assert done == {**done, "done": CALLS_PER_PROCESS, "flushed": True, "pending": 0, "errors": 0}, done
        for row in lines[:-1]:
            assert "id" in row, row
            expected.add(row["id"], row["project"], row["book"], row["model"], 1, row["usage"])

    # Every ad-hoc command during the load succeeded; a concurrent verify may only report
    # batches that are not rolled up yet, never a rollup that disagrees with its events.
    rollups = [r for _, cmd, r in ran if cmd[0] == "rollup"]
    for _, cmd, r in ran:
        if cmd[0] == "verify" and r.returncode == 1:
            findings = json.loads(r.stdout)
            assert all(f["check"] == "rollup" and "not rolled up yet" in f["problem"] for f in findings), (
                findings
            )
            assert_clean("verify", 0, r.stderr)
        else:
            assert_clean(" ".join(cmd), r.returncode, r.stderr)

    total = len(plan) * CALLS_PER_PROCESS
    assert expected.calls == total == len(upstream.served)
    assert max(expected.ids.values()) == 1
    assert set(expected.ids) == {s.upstream_id for s in upstream.served}

    final = cli(env, "rollup", "--format", "json")
    assert_clean("final rollup", final.returncode, final.stderr)
    check = cli(env, "verify")
    assert_clean("verify", check.returncode, check.stderr)
    assert check.stdout.strip() == "ledger is consistent"

    engine = engine_for(db_url)
    try:
        e = EventRow.__table__.c
        with engine.connect() as conn:
            rows = conn.execute(sa.select(e.upstream_id, e.status, e.priced, e.event_id)).all()
        assert len(rows) == total
        assert Counter(r.upstream_id for r in rows) == expected.ids  # exactly these ids, each once
        assert len({r.event_id for r in rows}) == total
        assert all(r.status == "ok" and r.priced for r in rows)
        assert db_by_project(engine) == {k: list(v) for k, v in expected.by_project.items()}
        assert pending_batches(engine) == 0
        raw = raw_by_project_quarter(engine)
        assert rolled_by_project_quarter(engine) == raw
        assert sum(v[0] for v in raw.values()) == total and sum(v[2] for v in raw.values()) == expected.cost
    finally:
        engine.dispose()
    assert not list((tmp_path / "spool").glob("*.seg"))
    reliability(
        load=f"{len(plan)} processes (threads 4, asyncio 4, threads 3) x {CALLS_PER_PROCESS} calls, "
        f"6 projects, 2 routes, streams; concurrently {len(rollups)} `rollup` and "
        f"{len(ran) - len(rollups)} `verify` commands, {len(runs)} in-process rollups",
        fault="none (concurrency: one database, one spool folder)",
        inputs="-",
        expected=f"{total} events, ${expected.cost / 1e9:.9f}",
        recorded=f"{len(rows)} events, ${sum(v[2] for v in raw.values()) / 1e9:.9f}",
        lost=0,
    )


# -- 2. verify while rollups commit ------------------------------------------------------------------


VERIFY_RUNS = 30


def test_verify_during_writes_and_rollups_reports_no_false_mismatch(db_url: str) -> None:
    """``verify`` run while events arrive and rollups commit may say batches are pending, never
    that a rollup disagrees with its events. (Found by this file: on PostgreSQL, verify read the
    events and the rollups in two statements, i.e. two snapshots, and a rollup committing in
    between showed as a mismatch in about a third of the runs.)"""
    import random

    from ledger.store import rollup
    from ledger.store.verify import verify
    from tests.helpers import random_event, write_events

    engine = engine_for(db_url)
    store.ensure_schema(engine)
    stop = threading.Event()
    errors: list[BaseException] = []

    def keep(fn: Any) -> None:
        try:
            while not stop.is_set():
                fn()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    rng = random.Random(5)
    start = datetime(2026, 11, 3, tzinfo=UTC)
    threads = [
        threading.Thread(
            target=keep,
            args=(
                lambda: write_events(
                    engine,
                    [random_event(start + timedelta(minutes=rng.randint(0, 9000)), rng) for _ in range(50)],
                ),
            ),
        ),
        threading.Thread(target=keep, args=(lambda: rollup.rollup(engine),)),
    ]
    for t in threads:
        t.start()
    false: list[list[str]] = []
    try:
        for _ in range(VERIFY_RUNS):
            with engine.connect() as conn:
                problems = [f.problem for f in verify(conn)]
            if [p for p in problems if "not rolled up yet" not in p]:
                false.append(problems)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=120)
    try:
        assert not errors, errors
        assert false == [], f"{len(false)} of {VERIFY_RUNS} runs: {false[0]}"
        rollup.rollup(engine)
        with engine.connect() as conn:
            assert verify(conn) == []
    finally:
        engine.dispose()


# -- 3. two schedulers, ad-hoc rollup and report commands, calls arriving ----------------------------


def _check_report(path: Path) -> dict[str, Any] | None:
    """A report file is whole and well-formed; the JSON ones are returned parsed."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        data = json.loads(text)
        assert data["report"] == "cerebras-ledger spend report"
        assert {"totals", "by_day", "by_model"} <= set(data)
        assert isinstance(data["totals"]["calls"], int)
        return data  # type: ignore[no-any-return]
    if path.suffix == ".csv":
        rows = list(csv.reader(io.StringIO(text, newline="")))
        assert rows[0] == ["section", "item", "detail", "figure", "value"]
        assert all(len(r) == 5 for r in rows) and any(r[0] == "totals" and r[3] == "calls" for r in rows)
        return None
    assert path.suffix == ".html", path
    assert text.lstrip().lower().startswith("<!doctype html") and text.rstrip().endswith("</html>")
    assert text.count("<svg") == text.count("</svg>")
    return None


def _scheduler(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen[bytes]:
    with open(log, "wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "ledger", "-v", "scheduler", *args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )


ROUNDS = 1  # each loop once through: `rollup` twice, `report` three times, all during the calls


def test_two_schedulers_and_adhoc_rollup_and_report_keep_rollups_exact(
    db_url: str, tmp_path: Path, upstream: StandIn, reliability: Any
) -> None:
    env = child_env(db_url, tmp_path)
    make_schema(db_url)
    # One scheduler configured by a TOML file, the other by LEDGER_SCHEDULE_* variables.
    toml = tmp_path / "scheduler.toml"
    toml.write_text(
        f'[scheduler]\nrollup_seconds = 1\nlease_seconds = 30\nreports_dir = "{tmp_path / "sched-a"}"\n'
    )
    env_b = {
        **env,
        "LEDGER_SCHEDULE_ROLLUP_SECONDS": "1",
        "LEDGER_SCHEDULE_LEASE_SECONDS": "30",
        "LEDGER_SCHEDULE_REPORTS_DIR": str(tmp_path / "sched-b"),
    }
    schedulers = [
        _scheduler(env, tmp_path / "sched-a.log", "--config", str(toml)),
        _scheduler(env_b, tmp_path / "sched-b.log"),
    ]
    month = datetime.now(UTC).strftime("%Y-%m")
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    out = tmp_path / "adhoc"
    out.mkdir()
    # Callers run until told to stop (SIGTERM: they finish the calls in flight, flush and exit 0).
    callers = [
        spawn_worker(
            upstream.base_url,
            mode,
            3,
            env,
            tmp_path / f"c{i}.log",
            "--seconds",
            "600",
            "--projects",
            "8",
            "--seed",
            str(20 + i),
        )
        for i, mode in enumerate(("threads", "async"))
    ]
    loops = [
        CommandLoop(
            env,
            [
                ["rollup", "--format", "json"],
                ["report", "--period", month, "--format", "json", "--out", str(out / "all-{n}.json")],
            ],
        ),
        CommandLoop(
            env,
            [
                [
                    "report",
                    "--period",
                    month,
                    "--tz",
                    "Asia/Kathmandu",
                    "--format",
                    "csv",
                    "--out",
                    str(out / "ktm-{n}.csv"),
                ],
                [
                    "report",
                    "--project",
                    "proj-001",
                    "--period",
                    day,
                    "--format",
                    "html",
                    "--out",
                    str(out / "p1-{n}.html"),
                ],
                ["rollup"],
            ],
        ),
    ]
    for loop in loops:
        loop.start()
    try:
        # Calls keep arriving until every ad-hoc command has run (or a safety limit).
        started = time.monotonic()
        while min(loop.rounds for loop in loops) < ROUNDS and time.monotonic() - started < 300:
            assert all(p.poll() is None for p in callers + schedulers), "a caller or scheduler died"
            time.sleep(0.2)
        load_seconds = time.monotonic() - started
        for p in callers:
            p.send_signal(signal.SIGTERM)
        outputs = [p.communicate(timeout=300)[0] for p in callers]
        ran = [r for loop in loops for r in loop.finish()]
        # The last word goes to the schedulers: under load the ad-hoc rollups may take every batch
        # first, so a final burst of calls arrives with no ad-hoc command running, and a scheduler
        # rollup must take it.
        tail = spawn_worker(
            upstream.base_url,
            "threads",
            2,
            env,
            tmp_path / "c2.log",
            "--calls",
            "20",
            "--projects",
            "8",
            "--seed",
            "40",
        )
        callers.append(tail)
        outputs.append(tail.communicate(timeout=300)[0])
        engine = engine_for(db_url)
        try:
            deadline = time.monotonic() + 120
            while pending_batches(engine) and time.monotonic() < deadline:
                time.sleep(0.2)
        finally:
            engine.dispose()
    finally:
        for p in callers:
            if p.poll() is None:
                p.kill()
                p.wait()
        for loop in loops:
            loop.finish()
        for p in schedulers:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in schedulers:
            try:
                p.wait(timeout=120)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    expected = Expected()
    for i, (p, lines_out) in enumerate(zip(callers, outputs, strict=True)):
        assert_clean(f"caller {i}", p.returncode, (tmp_path / f"c{i}.log").read_text())
        lines = parse_lines(lines_out)
        assert lines[-1]["flushed"] is True and lines[-1]["errors"] == 0, lines[-1]
        for row in lines[:-1]:
            expected.add(row["id"], row["project"], row["book"], row["model"], 1, row["usage"])
    for name, p in zip(("a", "b"), schedulers, strict=True):
        err = (tmp_path / f"sched-{name}.log").read_text()
        assert_clean(f"scheduler {name}", p.returncode, err)
        assert "SIGTERM received, shutting down" in err and "scheduler: stopped" in err
    rolled_by = {
        name: [int(x) for x in _rollup_counts((tmp_path / f"sched-{name}.log").read_text())]
        for name in ("a", "b")
    }
    assert any(sum(v) for v in rolled_by.values()), "neither scheduler rolled anything up"

    kinds: Counter[str] = Counter()
    for _, cmd, r in ran:
        assert_clean(" ".join(cmd), r.returncode, r.stderr)
        kinds[cmd[0] if cmd[0] != "report" else f"report {cmd[cmd.index('--format') + 1]}"] += 1
    assert kinds["rollup"] and kinds["report json"] and kinds["report csv"], kinds
    files = sorted(out.iterdir())
    assert len(files) == sum(n for k, n in kinds.items() if k.startswith("report"))
    for f in files:
        _check_report(f)

    final = cli(env, "rollup")
    assert_clean("final rollup", final.returncode, final.stderr)
    assert len(upstream.served) == expected.calls
    assert set(expected.ids) == {s.upstream_id for s in upstream.served}
    engine = engine_for(db_url)
    try:
        assert pending_batches(engine) == 0
        raw = raw_by_project_quarter(engine)
        assert rolled_by_project_quarter(engine) == raw  # per project, per quarter hour, to the nano-dollar
        assert sum(v[0] for v in raw.values()) == expected.calls
        assert db_by_project(engine) == {k: list(v) for k, v in expected.by_project.items()}
    finally:
        engine.dispose()

    # A report made now, from the final rollups, carries the exact totals.
    from ledger.reports import build as reports
    from ledger.reports import files as report_files

    engine = engine_for(db_url)
    try:
        built = reports.build_report(
            engine, calendar.parse_period(month), calendar.parse_zone("UTC"), refresh=False
        )
    finally:
        engine.dispose()
    data = _check_report(report_files.write_report(built, "json", out=tmp_path / "final.json"))
    assert data is not None
    in_month = [
        k
        for k in raw
        if data["period"]["start_utc"] <= k[1].isoformat().replace("+00:00", "Z") < data["period"]["end_utc"]
    ]
    assert data["totals"]["calls"] == sum(raw[k][0] for k in in_month)
    assert data["totals"]["cost_usd"] == f"{sum(raw[k][2] for k in in_month) / 10**9:.9f}"
    reliability(
        load=f"2 schedulers (rollup every 1 s) + {len(ran)} ad-hoc commands ({dict(kinds)}) while "
        f"2 caller processes x 3 workers made calls for {load_seconds:.0f} s, 8 projects",
        fault="none (concurrency); then SIGTERM to the callers and both schedulers",
        inputs="-",
        expected=f"{expected.calls} events; rollup = raw per project and quarter hour",
        recorded=f"{sum(v[0] for v in raw.values())} events; equal (scheduler rollups of events: "
        f"a={sum(rolled_by['a'])}, b={sum(rolled_by['b'])})",
        lost=0,
    )


def _rollup_counts(log: str) -> list[str]:
    """Events each scheduler rollup consumed, from its ``-v`` log lines."""
    import re

    return re.findall(r"rollup: (\d+) event\(s\)", log)
