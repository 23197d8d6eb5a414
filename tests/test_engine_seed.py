"""`engine seed` builds a realistic brain through the real migrations."""

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

ENGINE = [sys.executable, "-m", "engine.cli"]


def test_seed_builds_a_consistent_brain_of_the_requested_size(tmp_path: Path) -> None:
    brain = tmp_path / "big.sqlite"
    out = subprocess.run([*ENGINE, "seed", "--brain", str(brain), "--size", "5MB", "--release", "2.4.0"],
                         capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    assert result["bytes"] >= 5_000_000 and result["schema"] == 4
    assert brain.stat().st_mode & 0o777 == 0o600
    conn = sqlite3.connect(brain)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    for table in ("conversations", "episodes", "knowledge_store", "social_graph_edges",
                  "observability_events", "learning_signals"):
        assert conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] > 0, table


def test_seed_rejects_a_bad_size(tmp_path: Path) -> None:
    out = subprocess.run([*ENGINE, "seed", "--brain", str(tmp_path / "b.sqlite"), "--size", "lots"],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip().startswith("engine: error: size 'lots'")
    assert not (tmp_path / "b.sqlite").exists()
