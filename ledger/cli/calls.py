"""The commands that make calls: ``demo`` (a realistic mix against the built-in stand-in
upstream, engine in :mod:`ledger.cli.demo`) and ``chat`` (one real chat completion, recorded).
"""

from __future__ import annotations

import json
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
@format_option()
@click.pass_context
def demo(ctx: click.Context, calls: int, seed: int, fmt: str) -> None:
    """Run a realistic mix of calls against a built-in stand-in upstream and summarize them.

    No key and no network needed: the stand-in listens on 127.0.0.1 and speaks the real wire
    format. Events go to the ledger (the embedded SQLite file unless --database-url says
    otherwise).

    \b
    Example:
      cerebras-ledger demo --calls 100
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
