"""The brain skeleton a trial boot starts on first: the schema and the small tables, nothing else."""

from __future__ import annotations

from pathlib import Path

from backout.brain.schema import stamp
from backout.brain.skeleton import copy_brain_skeleton
from conftest import StartEngine
from engine.client import EngineClient
from engine_proc import DEFAULT_KEY
from rollback_setup import counts


def test_skeleton_keeps_schema_and_ledger_and_the_engine_judges_it_like_the_brain(
        start_engine: StartEngine, tmp_path: Path) -> None:
    eng = start_engine("2.4.0")
    with EngineClient(eng.url, DEFAULT_KEY) as client:
        for i in range(3):
            assert client.execute(f"t-{i}", f"Alice met Ben. Project {i} is late.").ok
    eng.stop()
    skeleton = tmp_path / "skeleton.sqlite"
    left_out = copy_brain_skeleton(eng.brain, skeleton, small_rows=4)
    assert "channel_state_snapshots" in left_out and "schema_migrations" not in left_out
    assert stamp(skeleton).fingerprint == stamp(eng.brain).fingerprint
    assert stamp(skeleton).head == "4" and (skeleton.stat().st_mode & 0o777) == 0o600
    assert counts(skeleton)["channel_state_snapshots"] == 0 and counts(skeleton)["schema_migrations"] == 4

    old = start_engine("2.3.1", brain=skeleton, wait=False)
    assert not old.wait_healthy(10, check=False)
    assert "MIGRATION_REQUIRED" in old.logs()
    copy_brain_skeleton(eng.brain, tmp_path / "skel2.sqlite")
    start_engine("2.4.0", brain=tmp_path / "skel2.sqlite")  # waits until healthy: it reads its own schema


def test_skeleton_of_a_brain_with_full_text_search(tmp_path: Path) -> None:
    import sqlite3

    brain = tmp_path / "fts.sqlite"
    conn = sqlite3.connect(brain)
    conn.execute("CREATE VIRTUAL TABLE docs USING fts5(body)")
    conn.execute("INSERT INTO docs VALUES ('hello world')")
    conn.execute("CREATE TABLE meta (k TEXT PRIMARY KEY, v TEXT)")
    conn.execute("INSERT INTO meta VALUES ('schema', '7')")
    conn.commit()
    conn.close()
    left_out = copy_brain_skeleton(brain, tmp_path / "skel.sqlite")
    assert "docs" in left_out and "meta" not in left_out
    assert stamp(tmp_path / "skel.sqlite").fingerprint == stamp(brain).fingerprint
