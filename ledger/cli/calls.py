"""The commands that make calls: ``demo`` (a realistic mix against the built-in stand-in
upstream, engine in :mod:`ledger.cli.demo`) and ``chat`` (one real chat completion, recorded).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

from ledger.cli.common import UserError, format_option, open_engine, rows_out
from ledger.config import redact_url

__all__ = ["chat", "demo"]


@click.command()
@click.option(
    "--calls", default=60, show_default=True, type=click.IntRange(1, 100_000), help="How many calls."
)
@click.option("--seed", default=7, show_default=True, help="Seed of the call mix.")
@click.option(
    "--serve", "then_serve", is_flag=True, help="Then open the ledger in the dashboard (127.0.0.1)."
)
@click.option(
    "--port", default=8787, show_default=True, type=click.IntRange(0, 65535), help="Port for --serve."
)
@format_option()
@click.pass_context
def demo(ctx: click.Context, calls: int, seed: int, then_serve: bool, port: int, fmt: str) -> None:
    """Run a realistic mix of calls against a built-in stand-in upstream and summarize them.

    No key and no network needed: the stand-in listens on 127.0.0.1 and speaks the real wire
    format. Events go to the ledger (the embedded SQLite file unless --database-url says
    otherwise). The first demo on a ledger also writes four weeks of history, budgets near and
    over their thresholds, and fires their alerts, so the dashboard has something to show.

    \b
    Example:
      cerebras-ledger demo --calls 100
      cerebras-ledger demo --serve
    """
    from ledger.cli.demo import run_demo

    with open_engine(ctx):
        pass  # create the ledger (and surface a bad URL) before sending anything
    with click.progressbar(length=calls, label="calls", file=sys.stderr) as bar:
        summaries, waiting = run_demo(calls, seed, ctx.obj["url"], bar.update)
    rows = [
        {
            "project": s.project,
            "calls": s.calls,
            "errors": s.errors,
            "incomplete": s.incomplete,
            "tokens": s.tokens,
            "paid_usd": str(s.paid_cost),
            "free_calls": s.free_calls,
            "free_tokens": s.free_tokens,
            "unpriced": s.unpriced,
        }
        for s in summaries
    ]
    if fmt == "table":
        click.echo(f"ledger: {redact_url(ctx.obj['url'])}")
    rows_out(
        rows,
        fmt,
        [
            "project",
            "calls",
            "errors",
            "incomplete",
            "tokens",
            "paid_usd",
            "free_calls",
            "free_tokens",
            "unpriced",
        ],
    )
    if waiting:
        click.echo("note: some events are still in the spool; they will be written on next use", err=True)
    if then_serve:
        _serve_demo(ctx, port)


def _serve_demo(ctx: click.Context, port: int) -> None:
    """Make an admin token for the demo, say how to log in, and serve until Ctrl-C."""
    from ledger.config import spool_dir
    from ledger.service.app import Settings
    from ledger.service.auth import create_token
    from ledger.service.server import run

    with open_engine(ctx) as engine:
        made = create_token(engine, "admin", label="demo --serve")
        click.echo(
            f"dashboard: http://127.0.0.1:{port}/login  (log in with this token, shown once: {made.token})",
            err=True,
        )
        try:
            run(engine, Settings.from_env(os.environ, spool_dir(ctx.obj["url"])), "127.0.0.1", port)
        except OSError as exc:
            raise UserError(f"cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}") from None


@click.command()
@click.option("--model", "-m", required=True, help="Model id, e.g. gpt-oss-120b.")
@click.option("--message", "-p", default=None, help="The user message (default: read stdin).")
@click.option("--stream/--no-stream", default=False, help="Stream the reply.")
@click.option("--project", envvar="LEDGER_PROJECT", help="Project to bill (default $LEDGER_PROJECT).")
@click.option("--tag", "tags", multiple=True, metavar="KEY=VALUE", help="A tag; repeat for more.")
@click.option("--max-tokens", type=click.IntRange(1, 1_000_000), default=None)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.pass_context
def chat(
    ctx: click.Context,
    model: str,
    message: str | None,
    stream: bool,
    project: str | None,
    tags: tuple[str, ...],
    max_tokens: int | None,
    fmt: str,
) -> None:
    """Send one chat completion and record it.

    Uses CEREBRAS_API_KEY (or LAVA_FORWARD_TOKEN to go through Lava) and CEREBRAS_BASE_URL.

    \b
    Example:
      cerebras-ledger chat -m llama3.1-8b -p "Say hi" --project search --tag user=ana --stream
    """
    from ledger.call.client import CerebrasClient
    from ledger.call.errors import APIError

    tag_map: dict[str, str] = {}
    for t in tags:
        key, sep, value = t.partition("=")
        if not sep or not key:
            raise UserError(f"--tag {t!r}: use KEY=VALUE")
        tag_map[key] = value
    text = message if message is not None else sys.stdin.read()
    params: dict[str, Any] = {} if max_tokens is None else {"max_tokens": max_tokens}
    with CerebrasClient(project, database_url=ctx.obj["url"], tags=tag_map) as client:
        try:
            messages = [{"role": "user", "content": text}]
            if stream:
                for chunk in client.chat.completions.create(
                    model=model, messages=messages, stream=True, **params
                ):
                    if fmt == "json":
                        click.echo(json.dumps(chunk))
                        continue
                    for choice in chunk.get("choices") or []:
                        click.echo((choice.get("delta") or {}).get("content") or "", nl=False)
                if fmt == "text":
                    click.echo()
                return
            reply = client.chat.completions.create(model=model, messages=messages, **params)
            if fmt == "json":
                click.echo(json.dumps(reply))
            else:
                for choice in reply.get("choices") or []:
                    click.echo((choice.get("message") or {}).get("content") or "")
        except APIError as exc:
            raise UserError(f"upstream error: {exc}") from None
