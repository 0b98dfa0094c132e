"""cli stage: the ``cerebras-ledger`` command line.

Owns the commands, their options, help texts, output formats and exit codes: thin click
wrappers over :class:`ledger.Ledger` (``ledger.api``) and the stages below it. ``main`` holds
the root group and the error handling, ``common`` what the commands share, and one module per
command group (``calls``, ``db``, ``prices``, ``events``, ``reporting``, ``billing``,
``budgets``, ``scheduler``); ``demo`` is the demo's engine.

The last stage: nothing imports it but ``ledger.__main__`` (and the console script). It stays
light: no pandas, SQLAlchemy or Alembic import before a command needs one.
"""
