"""Run ledger.testing.StandIn in its own process (so its threads never share the benchmark's GIL).

Prints the base URL on one line, then serves until stdin closes or SIGTERM."""

import signal
import sys

from ledger.testing import StandIn


def main() -> None:
    up = StandIn().start()
    print(up.base_url, flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        sys.stdin.read()  # returns when the parent closes our stdin (or dies)
    finally:
        up.stop()


if __name__ == "__main__":
    main()
