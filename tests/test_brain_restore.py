"""`backout snapshot restore`: refusals, quarantine, and kill -9 at every step then re-run."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import httpx
import pytest

from backout_cli import backout, backout_json, sha256_of, row_count

FAULT_POINTS = [f"{when}:{step}" for step in ("stage", "checkpoint", "quarantine", "swap")
                for when in ("before", "after")] + ["inside:swap"]


def _brain_with_turns(start_engine, release: str = "2.3.1", turns: int = 4):  # type: ignore[no-untyped-def]
    eng = start_engine(release)
    for i in range(turns):
        r = httpx.post(f"{eng.url}/execute", headers=eng.headers,
                       json={"task_id": f"t{i}", "message": f"The thing {i} is fine. Met Omar."})
        assert r.status_code == 200
    return eng




def _restored_from(brain: Path, snapshot: Path) -> bool:
    """The brain is the snapshot's bytes, back in WAL mode: only the header's mode bytes (18-19), change counter
    (24-27) and version-valid-for (92-99) may differ."""
    restored, taken = bytearray(brain.read_bytes()), bytearray(snapshot.read_bytes())
    if restored[18:20] != b"\x02\x02" or len(restored) != len(taken):
        return False
    for data in (restored, taken):
        data[18:20], data[24:28], data[92:100] = bytes(2), bytes(4), bytes(8)
    return restored == taken


def test_restore_refuses_while_the_service_runs_then_restores_and_quarantines(start_engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    eng = _brain_with_turns(start_engine)
    into, state = tmp_path / "snaps", tmp_path / "state"
    cfg = tmp_path / "backout.toml"
    cfg.write_text(f'state_dir = "{state}"\n[deployments.engine]\nbrain = "{eng.brain}"\n'
                   f'[deployments.engine.snapshots]\ndir = "{into}"\n')
    snap = backout_json("snapshot", "create", "--config", str(cfg))
    for i in range(3):  # the bad window
        httpx.post(f"{eng.url}/execute", headers=eng.headers, json={"task_id": "late", "message": f"late {i}"})

    out = backout("snapshot", "restore", snap["id"], "--yes", "--config", str(cfg))
    assert out.returncode == 3 and "is open by process" in out.stderr and str(eng.popen.pid) in out.stderr

    assert eng.stop() == 0
    displaced = sha256_of(eng.brain)
    dry = backout_json("snapshot", "restore", snap["id"], "--dry-run", "--config", str(cfg))
    assert dry["dry_run"] and sha256_of(eng.brain) == displaced
    result = backout_json("snapshot", "restore", snap["id"], "--yes", "--reason", "bad 2.4.0", "--config", str(cfg))
    assert _restored_from(eng.brain, into / f"{snap['id']}.sqlite")
    quarantine = Path(result["quarantine"])
    assert quarantine.parent == state / "quarantine" and quarantine.name.endswith("-bad-2-4-0")
    assert sha256_of(quarantine / eng.brain.name) == displaced
    assert row_count(quarantine / eng.brain.name) == row_count(eng.brain) + 6
    assert json.loads((quarantine / "quarantine.json").read_text())["replaced_by_snapshot"] == snap["id"]
    # The restored brain serves.
    eng2 = start_engine("2.3.1", brain=eng.brain)
    assert httpx.get(f"{eng2.url}/health").json()["status"] == "ok"


def test_restore_refuses_a_snapshot_of_another_deployment(start_engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    a = _brain_with_turns(start_engine)
    b = _brain_with_turns(start_engine)
    a.stop(), b.stop()
    into = tmp_path / "shared-snaps"
    cfg = tmp_path / "backout.toml"
    cfg.write_text(f'state_dir = "{tmp_path / "state"}"\n'
                   f'[deployments.a]\nbrain = "{a.brain}"\n[deployments.a.snapshots]\ndir = "{into}"\n'
                   f'[deployments.b]\nbrain = "{b.brain}"\n[deployments.b.snapshots]\ndir = "{into}"\n')
    snap_b = backout_json("snapshot", "create", "--config", str(cfg), "-d", "b")
    snap_a = backout_json("snapshot", "create", "--config", str(cfg), "-d", "a")
    before = sha256_of(b.brain)
    out = backout("snapshot", "restore", snap_a["id"], "--yes", "--config", str(cfg), "-d", "b")
    assert out.returncode == 3 and "deployment 'a'" in out.stderr and snap_b["id"] in out.stderr
    assert sha256_of(b.brain) == before


@pytest.mark.parametrize("fault", FAULT_POINTS)
def test_kill_9_at_any_step_then_rerun_finishes(start_engine, tmp_path: Path, fault: str) -> None:  # type: ignore[no-untyped-def]
    eng = _brain_with_turns(start_engine, turns=2)
    into = tmp_path / "snaps"
    args = ["--brain", str(eng.brain), "--into", str(into)]
    snap = backout_json("snapshot", "create", *args)
    for i in range(3):
        httpx.post(f"{eng.url}/execute", headers=eng.headers, json={"task_id": "late", "message": f"late {i}"})
    eng.kill()  # a crashed service: its WAL may still hold commits
    old = {s: sha256_of(eng.brain.with_name(eng.brain.name + s))
           for s in ("", "-wal") if eng.brain.with_name(eng.brain.name + s).exists()}
    old_rows = row_count(eng.brain)  # read-only: does not checkpoint

    crashed = backout("snapshot", "restore", snap["id"], "--yes", "--service-stopped", *args, cwd=tmp_path,
                      env={"BACKOUT_FAULT_AT": fault})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    # Never neither: a brain file is always in place, and it is the old one or the snapshot.
    assert eng.brain.exists()
    finished = backout("snapshot", "restore", snap["id"], "--yes", "--service-stopped", *args, cwd=tmp_path)
    assert finished.returncode == 0, finished.stderr
    assert _restored_from(eng.brain, into / f"{snap['id']}.sqlite")
    quarantined = list((tmp_path / ".backout" / "quarantine").glob(f"*/{eng.brain.name}"))
    assert len(quarantined) == 1, quarantined
    assert row_count(quarantined[0]) == old_rows  # the displaced brain, bad-window rows included
    assert not list((tmp_path / ".backout" / "journals").glob("*.json"))
    assert not list(eng.brain.parent.glob(".*.tmp"))
    again = backout("snapshot", "restore", snap["id"], "--yes", "--service-stopped", *args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr  # a second run restores again, with a new quarantine
    assert len(list((tmp_path / ".backout" / "quarantine").iterdir())) == 2
    assert old  # the crashed brain had files to protect


def test_salvage_after_a_brain_rollback_keeps_the_bad_window(start_engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Snapshot on 2.3.1, upgrade to 2.4.0 (forward-only), write, restore, salvage, replay."""
    eng = _brain_with_turns(start_engine, turns=3)
    args = ["--brain", str(eng.brain), "--into", str(tmp_path / "snaps")]
    assert eng.stop() == 0
    snap = backout_json("snapshot", "create", *args, cwd=tmp_path)
    bad = start_engine("2.4.0", brain=eng.brain)
    for i in range(4):
        r = httpx.post(f"{bad.url}/execute", headers=bad.headers,
                       json={"task_id": "window", "message": f"The window fact {i} is kept. Met Yara."})
        assert r.status_code == 200
    assert bad.stop() == 0
    result = backout_json("snapshot", "restore", snap["id"], "--yes", *args, cwd=tmp_path)
    quarantined = Path(result["quarantine"]) / eng.brain.name
    report = backout_json("salvage", "extract", "--snapshot", snap["id"], "--from", str(quarantined), *args,
                          cwd=tmp_path)
    counts = {t["table"]: t for t in report["tables"]}
    assert counts["episodes"]["added"] == 4 and counts["knowledge_store"]["added"] == 4
    assert report["schema_diff"]["kind"] == "breaking"  # 2.4.0's forward-only migration, shown beside the rows
    assert [t["table"] for t in report["tables"]][:3] == ["episodes", "knowledge_store", "social_graph_nodes"]
    bundle = Path(report["out_dir"]) / "memory-import.json"
    # Replay into the restored brain through the old version's own API.
    old = start_engine("2.3.1", brain=eng.brain)
    added = httpx.post(f"{old.url}/memory/import", headers=old.headers, content=bundle.read_bytes()).json()["added"]
    assert added["episodes"] == 4 and added["knowledge"] == 4
    facts = httpx.post(f"{old.url}/memory/knowledge/search", headers=old.headers, json={"query": "window fact"}).json()
    assert len(facts["results"]) == 4
