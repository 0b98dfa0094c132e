"""Helpers for the service tests: a served ledger and its tokens (real uvicorn, real sockets)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import sqlalchemy as sa

from ledger.service.app import Settings
from ledger.service.auth import create_token
from ledger.service.server import ThreadedServer

__all__ = ["Served", "serve"]


@dataclass
class Served:
    """A running service: its URL, an admin token and an engine on its ledger."""

    base_url: str
    admin: str
    engine: sa.Engine

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=30)

    def viewer(self, *projects: str) -> str:
        return create_token(self.engine, "viewer", projects).token


@contextmanager
def serve(engine: sa.Engine, settings: Settings | None = None) -> Iterator[Served]:
    admin = create_token(engine, "admin", label="tests").token
    with ThreadedServer(engine, settings) as server:
        yield Served(server.base_url, admin, engine)
