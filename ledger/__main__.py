"""``python -m ledger``: the same as ``cerebras-ledger``."""

import sys

from ledger.cli.main import main

sys.exit(main())
