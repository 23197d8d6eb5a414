"""Run the `backout` CLI as a real subprocess (as `python -m backout`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping

__all__ = ["backout", "backout_json", "row_count", "sha256_of"]


def backout(*args: str, env: Mapping[str, str] | None = None, cwd: Path | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run `backout ARGS...`; never raises on a non-zero exit."""
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("BACKOUT_")}
    child_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "backout", *args], capture_output=True, text=True,
                          env=child_env, cwd=cwd, timeout=timeout)


def backout_json(*args: str, **kwargs: Any) -> Any:
    """Run a command with --json that must succeed, and parse its output."""
    out = backout(*args, "--json", **kwargs)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file (call only where no SQLite connection to it is open)."""
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def row_count(db: Path, table: str = "conversations") -> int:
    """Rows in one table of a brain, read-only."""
    import sqlite3

    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    finally:
        conn.close()
