"""The call stage: everything a chat completion passes through on its way out and back.

It owns the wrapper clients (:mod:`ledger.call.client` and :mod:`ledger.call.aclient`, their
settings and request building in :mod:`ledger.call.settings`, with :mod:`ledger.call.streams` and
the SDK's retries in :mod:`ledger.call.retry`), the recording transports and :func:`ledger.instrument`
(:mod:`ledger.call.transport`), routing, what a request says (:mod:`ledger.call.route`), the
body tap (:mod:`ledger.call.tap`), one attempt and the one event it becomes
(:mod:`ledger.call.attempt`), the wire format (:mod:`ledger.call.wire`), the SDK-shaped errors
(:mod:`ledger.call.errors`) and the hard-budget stop list read on the call path
(:mod:`ledger.call.stops`).

It imports only httpx, the standard library and the ledger's foundations (``money``,
``events``, ``pricing``, ``config``, ``calendar``, ``outfile``): never SQLAlchemy, pandas,
Alembic or a later stage. Its one hand-off to the journal is a function-scope import where a
transport opens its default journal (``ledger.call.transport``). The public names are
re-exported by :mod:`ledger` itself, so this package re-exports nothing.
"""
