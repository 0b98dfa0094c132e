"""Turn the rows that tests record with the ``reliability`` fixture into RELIABILITY.md's table.

LEDGER_RELIABILITY_OUT=/tmp/rel.jsonl .venv/bin/python -m pytest -m "soak or not soak"
.venv/bin/python -m tests._reliability /tmp/rel.jsonl > /tmp/table.md
"""

from __future__ import annotations

import json
import sys


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table(lines: list[str]) -> str:
    head = [
        "Test",
        "Result",
        "Load held",
        "Fault injected",
        "Bad inputs tried",
        "Expected",
        "Recorded",
        "Lost",
    ]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for line in lines:
        if not line.strip():
            continue
        row = json.loads(line)
        test = row["test"].removeprefix("tests/")
        cells = [
            f"`{test}`",
            row["status"],
            row["load"],
            row["fault"],
            row["inputs"],
            row["expected"],
            row["recorded"],
            row["lost"],
        ]
        out.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as fh:
        sys.stdout.write(table(fh.readlines()))
