"""``--out`` never replaces a device, a symlink or any non-regular file, on SQLite and PostgreSQL.

Each command that takes ``--out`` runs as a real ``cerebras-ledger`` subprocess against a
target that is a character device (made with ``mknod`` in the test's folder, the numbers of
``/dev/full``: the real one is never touched), a symlink to a file, or a FIFO. Each must leave
the target as it was and say so in one line, exit 1. A regular target is replaced whole, owner-only.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from ledger.outfile import OutFile, OutFileError, write_bytes

COMMANDS = {
    "events export": ["events", "export", "--since", "2026-11-01", "--until", "2026-12-01", "--out"],
    "events export jsonl": [
        "events",
        "export",
        "--since",
        "2026-11-01",
        "--until",
        "2026-12-01",
        "--format",
        "jsonl",
        "--out",
    ],
    "report": ["report", "--period", "2026-11", "--format", "json", "--out"],
    "export billing": ["export", "billing", "--month", "2026-10", "--out"],
}


def _cli(args: list[str], db_url: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = dict(
        os.environ,
        LEDGER_DATABASE_URL=db_url,
        LEDGER_SPOOL_DIR=str(tmp_path / "spool"),
        LEDGER_HOME=str(tmp_path / "home"),
        LEDGER_REPORTS_DIR=str(tmp_path / "reports"),
    )
    return subprocess.run(
        [sys.executable, "-m", "ledger", *args], env=env, capture_output=True, text=True, timeout=120
    )


def _target(tmp_path: Path, kind: str) -> Path:
    out = tmp_path / "out" / f"target-{kind}"
    out.parent.mkdir(exist_ok=True)
    if kind == "device":
        os.mknod(out, stat.S_IFCHR | 0o666, os.makedev(1, 7))  # what /dev/full is
    elif kind == "symlink":
        (tmp_path / "out" / "real.txt").write_text("keep me\n")
        out.symlink_to(tmp_path / "out" / "real.txt")
    elif kind == "dangling":
        out.symlink_to(tmp_path / "out" / "nowhere")
    else:
        os.mkfifo(out)
    return out


def _kind(path: Path) -> int:
    return stat.S_IFMT(os.lstat(path).st_mode)


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("kind", ["device", "symlink", "dangling", "fifo"])
def test_out_never_replaces_a_non_regular_file(db_url: str, tmp_path: Path, command: str, kind: str) -> None:
    out = _target(tmp_path, kind)
    before = _kind(out)
    proc = _cli([*COMMANDS[command], str(out)], db_url, tmp_path)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "not a regular file" in proc.stderr and "Traceback" not in proc.stderr
    assert _kind(out) == before, f"{command} replaced a {kind}"
    if kind == "symlink":
        assert (tmp_path / "out" / "real.txt").read_text() == "keep me\n"
    assert sorted(p.name for p in out.parent.iterdir() if p.name.endswith(".part")) == []


@pytest.mark.parametrize("command", list(COMMANDS))
def test_out_replaces_a_regular_file_whole_and_owner_only(db_url: str, tmp_path: Path, command: str) -> None:
    out = tmp_path / "out" / "result"
    out.parent.mkdir()
    out.write_text("old\n")
    out.chmod(0o644)
    proc = _cli([*COMMANDS[command], str(out)], db_url, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert out.read_text() != "old\n" and stat.S_IMODE(out.stat().st_mode) == 0o600
    assert [p.name for p in out.parent.iterdir()] == ["result"]


def test_outfile_refuses_and_cleans_up(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(OutFileError, match="FIFO"):
        write_bytes(tmp_path / "fifo", b"x")
    target = tmp_path / "file"
    with pytest.raises(RuntimeError), OutFile(target) as out:
        out.file.write(b"half")
        raise RuntimeError("cut")
    assert list(tmp_path.iterdir()) == [tmp_path / "fifo"]
    old = os.umask(0o077)
    try:
        os.umask(0o022)
        write_bytes(target, b"whole\n")
        assert os.umask(0o022) == 0o022  # untouched
    finally:
        os.umask(old)
    assert target.read_bytes() == b"whole\n" and stat.S_IMODE(target.stat().st_mode) == 0o600
