"""``python -m ledger``: the same as ``cerebras-ledger``."""

import sys

from .cli import main

sys.exit(main())
