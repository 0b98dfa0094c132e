"""Service: ``cerebras-ledger serve``, the live dashboard, the JSON API (``/api/v1``) and the
Prometheus metrics (``/metrics``), behind tokens and browser sessions.

The last stage before the CLI: it reads what the earlier stages keep (the rollups, budgets,
alerts, prices and events of :mod:`ledger.store`, :mod:`ledger.budgets`, :mod:`ledger.reports`
and :mod:`ledger.exports`) and writes only what an admin asks for (budgets, a rollup) or what
auth needs (tokens, sessions). It must not import :mod:`ledger.cli`, and nothing before it may
import it. This ``__init__`` stays light: FastAPI and uvicorn load with :mod:`ledger.service.app`.

Modules: ``app`` (the ASGI app: middleware, auth, health, errors), ``auth`` (tokens, sessions,
CSRF, throttle), ``problems`` (RFC 9457 errors), ``queries`` (the reads every view shares),
``api`` (``/api/v1``), ``pages`` (the dashboard) and ``metrics`` (``/metrics``).
"""
