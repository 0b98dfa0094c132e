"""The service's commands: ``serve`` (the dashboard, JSON API and metrics,
:mod:`ledger.service`) and ``tokens create|list|revoke`` (who may use them).
"""

from __future__ import annotations

import os

import click

from ledger.cli.common import UserError, format_option, iso_z_or_none, open_engine, rows_out
from ledger.config import ConfigError, first_line

__all__ = ["serve_cmd", "tokens_group"]


@click.command("serve")
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface)."
)
@click.option(
    "--port", default=8787, show_default=True, type=click.IntRange(0, 65535), help="Port to listen on."
)
@click.pass_context
def serve_cmd(ctx: click.Context, host: str, port: int) -> None:
    """Serve the live dashboard, the JSON API (/api/v1) and Prometheus metrics (/metrics).

    Everything but /healthz and /readyz needs a token (see `tokens create`). Listens on
    127.0.0.1 unless --host says otherwise. On PostgreSQL, run as many as you like behind a
    load balancer: they share everything through the database.

    \b
    Example:
      cerebras-ledger tokens create --role admin
      cerebras-ledger serve --port 8787
    """
    from ledger.config import spool_dir
    from ledger.service.app import Settings
    from ledger.service.server import run

    with open_engine(ctx) as engine:
        try:
            run(engine, Settings.from_env(os.environ, spool_dir(ctx.obj["url"])), host, port)
        except OSError as exc:
            raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or first_line(exc)}") from None


@click.group("tokens")
def tokens_group() -> None:
    """Tokens for the service: create (printed once), list and revoke.

    \b
    Example:
      cerebras-ledger tokens create --role viewer --project search --expires 90d
      cerebras-ledger tokens list
      cerebras-ledger tokens revoke 3f9a0c12ab34
    """


@tokens_group.command("create")
@click.option(
    "--role",
    type=click.Choice(["admin", "viewer"]),
    required=True,
    help="admin: everything; viewer: read only.",
)
@click.option(
    "--project", "projects", multiple=True, help="A project the viewer may see (repeat; default: all)."
)
@click.option("--expires", default=None, help="Lifetime, e.g. 12h, 90d or 4w (default: never).")
@click.option("--label", default="", help="A note to tell tokens apart in `tokens list`.")
@format_option()
@click.pass_context
def tokens_create(
    ctx: click.Context, role: str, projects: tuple[str, ...], expires: str | None, label: str, fmt: str
) -> None:
    """Create a token and print it once; the ledger keeps only its hash.

    \b
    Example:
      cerebras-ledger tokens create --role viewer --project search --expires 90d --label "finance"
      curl -H "Authorization: Bearer clg_..." http://127.0.0.1:8787/api/v1/spend
    """
    from ledger.service.auth import create_token, parse_expires

    try:
        span = None if expires is None else parse_expires(expires)
        with open_engine(ctx) as engine:
            made = create_token(engine, role, projects, expires=span, label=label)
    except ConfigError as exc:
        raise UserError(first_line(exc)) from None
    info = made.info
    row = {
        "token_id": info.token_id,
        "role": info.role,
        "projects": ",".join(info.projects) or "*",
        "expires_at": iso_z_or_none(info.expires_at),
        "token": made.token,
    }
    if fmt == "table":
        click.echo(made.token)
        click.echo(
            f"token {info.token_id} ({info.role}, projects {row['projects']}, expires "
            f"{row['expires_at'] or 'never'}): shown once, keep it safe",
            err=True,
        )
        return
    rows_out([row], fmt, list(row))


@tokens_group.command("list")
@format_option()
@click.pass_context
def tokens_list(ctx: click.Context, fmt: str) -> None:
    """List tokens (never their secrets).

    \b
    Example:
      cerebras-ledger tokens list --format json
    """
    from ledger.service.auth import list_tokens

    with open_engine(ctx) as engine:
        tokens = list_tokens(engine)
    columns = ["token_id", "role", "projects", "label", "created_at", "expires_at", "revoked_at"]
    rows_out(
        [
            {
                "token_id": t.token_id,
                "role": t.role,
                "projects": ",".join(t.projects) or "*",
                "label": t.label,
                "created_at": iso_z_or_none(t.created_at),
                "expires_at": iso_z_or_none(t.expires_at),
                "revoked_at": iso_z_or_none(t.revoked_at),
            }
            for t in tokens
        ],
        fmt,
        columns,
    )


@tokens_group.command("revoke")
@click.argument("token_id")
@click.pass_context
def tokens_revoke(ctx: click.Context, token_id: str) -> None:
    """Revoke a token at once, ending its browser sessions.

    \b
    Example:
      cerebras-ledger tokens revoke 3f9a0c12ab34
    """
    from ledger.service.auth import revoke_token

    with open_engine(ctx) as engine:
        if not revoke_token(engine, token_id):
            raise UserError(f"no live token {token_id[:40]!r}")
    click.echo(f"revoked {token_id}")
