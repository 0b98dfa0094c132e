"""Demo: the main job on the embedded default ledger, with no key and no network.

Starts the loopback stand-in upstream (:mod:`ledger.testing`), sends a realistic mix of calls
for three projects (free and paid models, direct and through Lava, streamed and not, some
upstream errors), waits for the ledger to have them, and returns a per-project summary of this
run. The fake credentials below never leave the machine.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime

from ledger.call.client import CerebrasClient
from ledger.call.errors import APIError
from ledger.config import Progress
from ledger.reports.summary import ProjectSummary, project_summaries
from ledger.testing import StandIn

__all__ = ["PROJECTS", "run_demo"]

PROJECTS = ("demo-search", "demo-support-bot", "demo-analytics")
# (route, model): direct calls pay Cerebras's rates; through Lava some models are free.
MIX = (
    ("cerebras", "gpt-oss-120b"),
    ("cerebras", "llama-3.3-70b"),
    ("lava", "gpt-oss-120b"),
    ("lava", "qwen-3-235b-instruct"),
    ("lava", "llama3.1-8b"),
    ("lava", "qwen-3-32b"),
    ("lava", "llama-4-scout-17b-16e-instruct"),
)
FAULTS = ("rate_limit", "not_found", "server_error", "cut", "stream_error")


def run_demo(
    calls: int = 60, seed: int = 7, database_url: str | None = None, progress: Progress | None = None
) -> tuple[list[ProjectSummary], int]:
    """Send ``calls`` calls and return (per-project summary of this run, events still waiting)."""
    from ledger import store
    from ledger.config import database_url as resolve_url

    rng = random.Random(seed)
    started = datetime.now(UTC)
    url = resolve_url(database_url)
    with StandIn() as upstream:
        clients = {
            (project, route): CerebrasClient(
                project,
                base_url=upstream.base_url,
                database_url=url,
                max_retries=0,
                lava_forward_token="aks_live_demo" if route == "lava" else None,
                lava_base_url=upstream.base_url,
                api_key="demo-key",
            )
            for project in PROJECTS
            for route in ("cerebras", "lava")
        }
        try:
            for _ in range(calls):
                project = rng.choice(PROJECTS)
                route, model = rng.choice(MIX)
                stream = rng.random() < 0.4
                fault = rng.choice(FAULTS) if rng.random() < 0.12 else None
                words = " ".join(["word"] * rng.randint(5, 400))
                client = clients[(project, route)]
                headers = {"x-standin-scenario": fault} if fault else None
                try:
                    reply = client.chat.completions.create(
                        model=model,
                        messages=[{"role": "user", "content": words}],
                        stream=stream,
                        max_tokens=rng.randint(20, 600),
                        extra_headers=headers,
                        tags={"feature": rng.choice(("chat", "summarize", "classify")), "env": "demo"},
                    )
                    if stream:
                        for _ in reply:
                            pass
                except APIError:
                    pass  # recorded as an error event; the demo carries on
                if progress:
                    progress(1)
            waiting = 0 if all(c.flush(30) for c in clients.values()) else 1
        finally:
            for c in clients.values():
                c.close()
    engine = store.make_engine(url)
    try:
        with engine.connect() as conn:
            return project_summaries(conn, since=started, projects=PROJECTS), waiting
    finally:
        engine.dispose()
