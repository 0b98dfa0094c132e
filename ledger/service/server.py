"""Server: the service on uvicorn, in the foreground (``cerebras-ledger serve``) or in a thread
(``demo --serve`` and the tests), always on a real socket.

The default host is 127.0.0.1: the service answers only this machine unless told otherwise, and
says where it listens at start. Port 0 picks a free port (the thread form reports it).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from types import TracebackType
from typing import Any

from sqlalchemy import Engine

from ledger.service.app import Settings, create_app

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "ThreadedServer", "run"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8787
log = logging.getLogger("ledger.service")


def _config(engine: Engine, settings: Settings, host: str, port: int, app: Any = None) -> Any:
    import uvicorn

    return uvicorn.Config(
        app if app is not None else create_app(engine, settings),
        host=host,
        port=port,
        log_level="warning",
        access_log=False,  # an access log would hold query strings; the service logs its own errors
        server_header=False,
        lifespan="off",
    )


def run(engine: Engine, settings: Settings, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> None:
    """Serve until SIGINT or SIGTERM (uvicorn's own signal handling). The socket is bound here,
    so a taken port is an ``OSError`` before anything starts, and port 0 says which it got."""
    import uvicorn

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family)
    bound = sock.getsockname()[1]
    where = "this machine only" if host in ("127.0.0.1", "::1", "localhost") else "the network"
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    log.warning("service: listening on http://%s:%d (%s)", shown, bound, where)
    try:
        uvicorn.Server(_config(engine, settings, host, bound)).run(sockets=[sock])
    finally:
        sock.close()


class ThreadedServer:
    """The service in a background thread on ``host`` and a free port: ``with ThreadedServer(...)
    as s: httpx.get(s.base_url + "/healthz")``. ``app`` serves an app already made by
    :func:`~ledger.service.app.create_app` instead of a new one."""

    def __init__(
        self, engine: Engine, settings: Settings | None = None, host: str = DEFAULT_HOST, app: Any = None
    ) -> None:
        import uvicorn

        class _Quiet(uvicorn.Server):
            def install_signal_handlers(self) -> None:  # the main thread keeps its own
                pass

        self._server = _Quiet(_config(engine, settings or Settings(), host, 0, app))
        self._thread = threading.Thread(target=self._server.run, name="ledger-service", daemon=True)
        self.host = host
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> ThreadedServer:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the service did not start")
            time.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)

    def __enter__(self) -> ThreadedServer:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
