"""Safety invariants of the brain layer (8, 9, 10): fault-injection symptoms turned into regression tests.

8  the brain passes integrity_check, keeps its journal mode and is the file the service opens (a
   brain reached through a symlink is resolved once; its -wal/-shm live beside the target);
9  only complete snapshots are listed; nothing a journal or the restore point needs is pruned;
   leftovers of killed runs are found and cleaned, never a running snapshot's temporary file;
10 backout's own knowledge wins over a flag: no option restores while the service holds the brain.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from backout.brain.snapshot import copy_live_brain
from backout_cli import backout, backout_json, sha256_of, row_count
from rollback_setup import ENV, init_process, prepare_bad_upgrade, turns


def _turns(eng, n: int, prefix: str) -> None:  # type: ignore[no-untyped-def]
    with httpx.Client(headers=eng.headers, timeout=30) as client:
        for i in range(n):
            r = client.post(f"{eng.url}/execute", json={"task_id": f"{prefix}-{i}",
                                                       "message": f"The item {prefix}{i} is ready. Met Priya."})
            assert r.status_code == 200




def _journal_mode(db: Path) -> str:
    """From the header (byte 18: 2 in WAL mode), without opening a connection that could change it."""
    with db.open("rb") as f:
        return "wal" if f.read(20)[18] == 2 else "delete"


def _intact(db: Path, mode: str) -> None:
    """Invariant 8 after a command: integrity_check passes and the journal mode is kept."""
    assert _journal_mode(db) == mode
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()


def _quiet_brain(start_engine, turns_n: int = 4):  # type: ignore[no-untyped-def]
    eng = start_engine("2.3.1")
    _turns(eng, turns_n, "q")
    assert eng.stop() == 0
    return eng.brain


def _strace(*args: str, inject: str, cwd: Path | None = None) -> list[str]:
    """argv running `backout ARGS` under strace with one injected fault."""
    return ["strace", "-f", "-qq", "-o", "/dev/null", "-e", f"trace={inject.split(':')[0]}", "-e",
            f"inject={inject}", sys.executable, "-m", "backout", *args]


def _run(argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKOUT_")}
    return subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


needs_strace = pytest.mark.skipif(subprocess.run(["which", "strace"], capture_output=True).returncode != 0,
                                  reason="strace is not installed")


# --- invariant 8: a symlinked brain ---------------------------------------------------------------

def test_a_symlinked_brain_is_snapshotted_with_its_wal_and_restored_in_place(start_engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "real").mkdir()
    real = tmp_path / "real" / "brain.sqlite"
    link = tmp_path / "link.sqlite"
    real.touch(mode=0o600)  # the Engine makes a missing brain with O_EXCL, which a link would fail
    link.symlink_to(Path("real") / "brain.sqlite")
    eng = start_engine("2.3.1", brain=link)
    _turns(eng, 6, "a")
    assert Path(f"{real}-wal").exists() and not Path(f"{link}-wal").exists()  # SQLite keeps the WAL by the target
    live = row_count(real)
    cfg = tmp_path / "backout.toml"
    cfg.write_text('state_dir = "state"\n[deployments.engine]\nbrain = "link.sqlite"\n')

    snap = backout_json("snapshot", "create", "--config", str(cfg))
    assert snap["tables"]["conversations"]["rows"] == live, "the snapshot missed the WAL"
    assert snap["source"] == str(real.resolve())
    assert backout_json("status", "--config", str(cfg))["brain"]["files"].get("-wal", 0) > 0
    copy_live_brain(link, tmp_path / "trial.sqlite")  # what a trial boot starts on
    assert row_count(tmp_path / "trial.sqlite") == live

    _turns(eng, 3, "late")  # the bad window
    assert eng.stop() == 0
    displaced = row_count(real)
    result = backout_json("snapshot", "restore", snap["id"], "--yes", "--config", str(cfg))
    assert link.is_symlink() and link.resolve() == real.resolve()  # the link is kept, the target replaced
    assert row_count(real) == live
    kept = Path(result["quarantine"]) / "brain.sqlite"
    assert not kept.is_symlink() and row_count(kept) == displaced  # the displaced brain, not a dangling link
    assert not list(tmp_path.glob(".link.sqlite*"))
    _intact(real, "wal")


# --- invariant 8: the journal mode ------------------------------------------------------------------

def test_restore_keeps_the_brains_journal_mode(start_engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    brain = _quiet_brain(start_engine)
    assert _journal_mode(brain) == "wal"
    into = tmp_path / "snaps"
    args = ["--brain", str(brain), "--into", str(into)]
    snap = backout_json("snapshot", "create", *args, cwd=tmp_path)
    _intact(brain, "wal")
    backout_json("snapshot", "restore", snap["id"], "--yes", *args, cwd=tmp_path)
    _intact(brain, "wal")
    assert row_count(brain) == snap["tables"]["conversations"]["rows"]
    assert snap["journal_mode"] == "wal"  # recorded at snapshot time

    # A manifest written before the journal mode was recorded: the displaced brain's mode is kept.
    manifest = into / f"{snap['id']}.json"
    old = json.loads(manifest.read_text())
    del old["journal_mode"]
    manifest.write_text(json.dumps(old))
    backout_json("snapshot", "restore", snap["id"], "--yes", *args, cwd=tmp_path)
    _intact(brain, "wal")
    eng = start_engine("2.3.1", brain=brain)  # the restored brain serves
    assert httpx.get(f"{eng.url}/health").json()["status"] == "ok"


def test_a_rollback_journal_brain_stays_in_rollback_journal_mode(tmp_path: Path) -> None:
    brain = tmp_path / "plain.sqlite"
    conn = sqlite3.connect(brain)
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    conn.executemany("INSERT INTO notes (body) VALUES (?)", [(f"n{i}",) for i in range(50)])
    conn.commit()
    conn.close()
    args = ["--brain", str(brain), "--into", str(tmp_path / "snaps")]
    snap = backout_json("snapshot", "create", *args, cwd=tmp_path)
    assert snap["journal_mode"] == "delete"
    backout_json("snapshot", "restore", snap["id"], "--yes", *args, cwd=tmp_path)
    _intact(brain, "delete")
    assert sha256_of(brain) == snap["sha256"]  # nothing to change: the very bytes of the snapshot


# --- invariant 9: only complete snapshots are listed ---------------------------------------------

@needs_strace
def test_a_snapshot_that_failed_on_any_fsync_is_never_listed(start_engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    brain = _quiet_brain(start_engine)
    into = tmp_path / "snaps"
    args = ["--brain", str(brain), "--into", str(into)]
    real = backout_json("snapshot", "create", *args, cwd=tmp_path)
    failed = 0
    for when in range(1, 7):
        before = set(os.listdir(into))
        out = _run(_strace("snapshot", "create", *args, inject=f"fsync:error=EIO:when={when}"), cwd=tmp_path)
        made = set(os.listdir(into)) - before
        if out.returncode != 0:
            failed += 1
            assert out.returncode == 4 and "I/O error" in out.stderr, out.stderr
            assert not made, f"fsync #{when} failed and left {made}"
        listed = backout_json("snapshot", "list", *args, cwd=tmp_path)["snapshots"]
        assert all((into / f"{s['id']}.sqlite").exists() for s in listed), when
    assert failed >= 3  # the tmp file, the folder after the rename, the manifest
    plan = backout_json("snapshot", "prune", "--keep-last", "1", "--dry-run", *args, cwd=tmp_path)
    newest = backout_json("snapshot", "list", *args, cwd=tmp_path)["snapshots"][0]["id"]
    assert list(plan["keep"]) == [newest] and real["id"] in plan["delete"] + [newest]


@needs_strace
def test_a_snapshot_whose_copy_kept_a_journal_fails_instead_of_changing_after_its_hash(
        start_engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Found by the fault sweep (unlink:error=ENOSPC:when=2): the copy's WAL -> DELETE switch could not remove
    its -journal; SQLite rolled that hot journal back after the hash was taken, and a snapshot whose sha256
    differs from its manifest was listed (exit 0)."""
    brain = _quiet_brain(start_engine)
    into = tmp_path / "snaps"
    args = ["--brain", str(brain), "--into", str(into)]
    for when in range(1, 5):
        out = _run(_strace("snapshot", "create", *args, inject=f"unlink:error=ENOSPC:when={when}"), cwd=tmp_path)
        assert out.returncode in (0, 4), out.stderr
        for snap in backout_json("snapshot", "list", *args, cwd=tmp_path)["snapshots"]:
            verified = backout("snapshot", "verify", snap["id"], *args, cwd=tmp_path)
            assert verified.returncode == 0, f"unlink #{when}: {verified.stdout}{verified.stderr}"


def test_a_truncated_or_orphaned_snapshot_is_listed_as_broken_and_never_counted(start_engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    brain = _quiet_brain(start_engine)
    into = tmp_path / "snaps"
    cfg = tmp_path / "backout.toml"
    cfg.write_text(f'state_dir = "state"\n[deployments.engine]\nbrain = "{brain}"\n'
                   f'[deployments.engine.snapshots]\ndir = "{into}"\n')
    ids = [backout_json("snapshot", "create", "--config", str(cfg))["id"] for _ in range(4)]
    with (into / f"{ids[3]}.sqlite").open("r+b") as f:  # newest: truncated
        f.truncate(4096)
    (into / f"{ids[2]}.sqlite").unlink()  # next: the data file is gone, the manifest stayed
    listed = backout_json("snapshot", "list", "--config", str(cfg))
    assert [s["id"] for s in listed["snapshots"]] == [ids[1], ids[0]]
    assert sorted(b["id"] for b in listed["broken"]) == sorted(ids[2:])
    text = backout("snapshot", "list", "--config", str(cfg)).stdout
    assert f"BROKEN {ids[3]}" in text and "truncated" in text and f"BROKEN {ids[2]}" in text
    assert backout_json("status", "--config", str(cfg))["snapshots"]["newest"] == ids[1]
    plan = backout_json("snapshot", "prune", "--keep-last", "1", "--dry-run", "--config", str(cfg))
    assert list(plan["keep"]) == [ids[1]] and plan["delete"] == [ids[0]]
    assert sorted(plan["broken"]) == sorted(ids[2:])
    assert backout("snapshot", "prune", "--keep-last", "1", "--yes", "--config", str(cfg)).returncode == 0
    assert sorted(os.listdir(into)) == [f"{ids[1]}.json", f"{ids[1]}.sqlite"]
    out = backout("snapshot", "restore", ids[3], "--yes", "--config", str(cfg))
    assert out.returncode == 2 and "no snapshot" in out.stderr


# --- invariant 9: leftovers of killed runs -------------------------------------------------------

@needs_strace
def test_leftovers_of_killed_snapshots_are_cleaned_by_prune_never_a_running_ones(start_engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    brain = _quiet_brain(start_engine)
    into = tmp_path / "snaps"
    args = ["--brain", str(brain), "--into", str(into)]
    kept = backout_json("snapshot", "create", *args, cwd=tmp_path)
    for inject in ("copy_file_range:signal=SIGKILL:when=2", "fsync:signal=SIGKILL:when=1",
                   "fsync:signal=SIGKILL:when=2"):
        out = _run(_strace("snapshot", "create", *args, inject=inject), cwd=tmp_path)
        assert out.returncode != 0, inject
    leftovers = sorted(set(os.listdir(into)) - {f"{kept['id']}.json", f"{kept['id']}.sqlite"})
    assert len(leftovers) >= 3, leftovers
    listed = backout_json("snapshot", "list", *args, cwd=tmp_path)
    assert [s["id"] for s in listed["snapshots"]] == [kept["id"]]
    assert sorted(Path(p).name for p in listed["incomplete"]) == leftovers
    plan = backout_json("snapshot", "prune", "--dry-run", *args, cwd=tmp_path)
    assert sorted(Path(p).name for p in plan["leftovers"]) == leftovers and plan["leftover_bytes"] > 0

    # A snapshot that is running (held in its first fsync) keeps its temporary file through a prune.
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKOUT_")}
    running = subprocess.Popen(_strace("snapshot", "create", *args, "--json", inject="fsync:delay_enter=3000000:when=1"),
                               cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(set(os.listdir(into)) - set(leftovers)) < 3:
            time.sleep(0.05)
        time.sleep(0.5)  # inside the delayed fsync now
        ours = sorted(set(os.listdir(into)) - set(leftovers) - {f"{kept['id']}.json", f"{kept['id']}.sqlite"})
        assert ours, "the running snapshot's temporary file did not appear"
        out = backout("snapshot", "prune", "--yes", "--json", *args, cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        assert all((into / name).exists() for name in ours)
        assert not any((into / name).exists() for name in leftovers)
    finally:
        stdout, stderr = running.communicate(timeout=60)
    assert running.returncode == 0, stderr
    made = json.loads(stdout)
    assert backout("snapshot", "verify", made["id"], *args, cwd=tmp_path).returncode == 0
    assert sorted(os.listdir(into)) == sorted(f"{i}.{e}" for i in (kept["id"], made["id"]) for e in ("json", "sqlite"))


# --- invariant 9: what a journal needs is never pruned -------------------------------------------

def test_prune_keeps_the_snapshot_an_interrupted_rollback_needs(tmp_path: Path) -> None:
    config = init_process(tmp_path)
    cfg = ["--config", str(config)]
    try:
        snap = prepare_bad_upgrade(config, "2.3.1", "2.4.0-errors")
        turns(config, "during", 4, strict=False)
        out = backout("rollback", "--yes", "--json", "--to", "2.3.1", *cfg,
                      env={**ENV, "BACKOUT_FAULT_AT": "before:restore"}, timeout=240)
        assert out.returncode == -9, out.stderr
        newer = [backout_json("snapshot", "create", *cfg, env=ENV)["id"] for _ in range(2)]
        plan = backout_json("snapshot", "prune", "--keep-last", "1", "--dry-run", *cfg, env=ENV)
        assert "rollback" in plan["keep"][snap["id"]] and plan["delete"] == [newer[0]], plan
        assert "rollback" in backout("snapshot", "prune", "--keep-last", "1", "--dry-run", *cfg, env=ENV).stdout
        assert backout("snapshot", "prune", "--keep-last", "1", "--yes", *cfg, env=ENV).returncode == 0
        assert (config.parent / ".backout" / "snapshots" / "engine" / f"{snap['id']}.sqlite").exists()
        resumed = backout("rollback", "--yes", "--json", "--resume", *cfg, env=ENV, timeout=240)
        assert resumed.returncode == 0, resumed.stderr
        assert json.loads(resumed.stdout)["result"]["outcome"] == "rolled-back"
        _intact(config.parent / "brain.sqlite", "wal")
    finally:
        backout("stop", "--yes", *cfg, env=ENV)


def test_prune_keeps_the_snapshot_a_pending_restore_needs(start_engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    brain = _quiet_brain(start_engine)
    args = ["--brain", str(brain), "--into", str(tmp_path / "snaps")]
    first = backout_json("snapshot", "create", *args, cwd=tmp_path)
    out = backout("snapshot", "restore", first["id"], "--yes", *args, cwd=tmp_path,
                  env={"BACKOUT_FAULT_AT": "after:quarantine"})
    assert out.returncode == -9
    newer = [backout_json("snapshot", "create", *args, cwd=tmp_path)["id"] for _ in range(2)]
    plan = backout_json("snapshot", "prune", "--keep-last", "1", "--dry-run", *args, cwd=tmp_path)
    assert "restore" in plan["keep"][first["id"]] and plan["delete"] == [newer[0]]
    assert backout("snapshot", "prune", "--keep-last", "1", "--yes", *args, cwd=tmp_path).returncode == 0
    assert backout("snapshot", "restore", first["id"], "--yes", *args, cwd=tmp_path).returncode == 0
    _intact(brain, "wal")


# --- invariant 9 and 8: same-named deployments sharing a folder ----------------------------------

def test_same_named_deployments_sharing_a_folder_never_touch_each_others_snapshots(start_engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    shared = tmp_path / "shared-snaps"
    configs = {}
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        brain = _quiet_brain(start_engine, turns_n=2 if name == "a" else 5)
        (folder / "brain.sqlite").write_bytes(brain.read_bytes())
        configs[name] = folder / "backout.toml"
        configs[name].write_text(f'[deployments.engine]\nbrain = "brain.sqlite"\n'
                                 f'[deployments.engine.snapshots]\ndir = "{shared}"\n')
    snaps = {n: [backout_json("snapshot", "create", "--config", str(c))["id"] for _ in range(2)]
             for n, c in configs.items()}
    b_brain = tmp_path / "b" / "brain.sqlite"
    before = sha256_of(b_brain)
    out = backout("snapshot", "restore", snaps["a"][1], "--yes", "--config", str(configs["b"]))
    assert out.returncode == 3, out.stderr
    assert str(tmp_path / "a" / "brain.sqlite") in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert sha256_of(b_brain) == before and not (tmp_path / "b" / ".backout" / "quarantine").exists()
    listed = backout_json("snapshot", "list", "--config", str(configs["b"]))["snapshots"]
    assert [s["id"] for s in listed] == snaps["b"][::-1]
    plan = backout_json("snapshot", "prune", "--keep-last", "1", "--dry-run", "--config", str(configs["b"]))
    assert plan["delete"] == [snaps["b"][0]] and list(plan["keep"]) == [snaps["b"][1]]
    assert backout("snapshot", "prune", "--keep-last", "1", "--yes", "--config", str(configs["b"])).returncode == 0
    assert all((shared / f"{i}.sqlite").exists() for i in snaps["a"])


# --- invariant 10: backout's knowledge wins over --service-stopped -------------------------------

def test_service_stopped_never_overrides_a_running_service(tmp_path: Path) -> None:
    config = init_process(tmp_path)
    cfg = ["--config", str(config)]
    brain = config.parent / "brain.sqlite"
    try:
        assert backout_json("switch", "2.3.1", "--yes", *cfg, env=ENV)["healthy"]
        turns(config, "before", 2)
        snap = backout_json("snapshot", "create", *cfg, env=ENV)
        turns(config, "after", 2)
        out = backout("snapshot", "restore", snap["id"], "--yes", "--service-stopped", *cfg, env=ENV)
        assert out.returncode == 3 and "running 2.3.1" in out.stderr, out.stderr
        # Without a config, the lock probe knows too.
        (tmp_path / "bare").mkdir()
        out = backout("snapshot", "restore", snap["id"], "--yes", "--service-stopped", "--brain", str(brain),
                      "--into", str(config.parent / ".backout" / "snapshots" / "engine"), cwd=tmp_path / "bare")
        assert out.returncode == 3 and "is open by process" in out.stderr, out.stderr
        assert not (config.parent / ".backout" / "quarantine").exists()
        turns(config, "still-served", 2)  # nothing was displaced under the running service
        backout_json("stop", "--yes", *cfg, env=ENV)
        _intact(brain, "wal")
        done = backout_json("snapshot", "restore", snap["id"], "--yes", "--service-stopped", *cfg, env=ENV)
        assert done["quarantine"] and row_count(brain) == snap["tables"]["conversations"]["rows"]
        _intact(brain, "wal")
    finally:
        backout("stop", "--yes", *cfg, env=ENV)


def test_a_rollback_never_chooses_a_snapshot_of_a_same_named_deployments_brain(tmp_path: Path) -> None:
    shared = tmp_path / "shared-snaps"
    configs = []
    for side in ("a", "b"):
        (tmp_path / side / "engine").mkdir(parents=True)
        config = init_process(tmp_path / side / "engine")
        text = config.read_text()
        config.write_text(text.replace("[deployments.engine.snapshots]\n",
                                       f'[deployments.engine.snapshots]\ndir = "{shared}"\n', 1))
        configs.append(config)
    a, b = (["--config", str(c)] for c in configs)
    try:
        theirs = prepare_bad_upgrade(configs[0], "2.3.1", "2.4.0-errors")  # a: snapshot of 2.3.1, then the bad build
        backout_json("stop", "--yes", *a, env=ENV)
        assert backout_json("switch", "2.3.1", "--yes", *b, env=ENV)["healthy"]  # b: no snapshot of its own
        assert backout_json("switch", "2.4.0-errors", "--yes", *b, env=ENV)["healthy"]
        out = backout("rollback", "--dry-run", "--json", "--to", "2.3.1", *b, env=ENV)
        assert theirs["id"] not in out.stdout + out.stderr  # never a's brain restored over b's
        assert out.returncode == 0 or "no verified snapshot of engine" in out.stderr, out.stderr
        out = backout("rollback", "--dry-run", "--to", "2.3.1", "--snapshot", theirs["id"], *b, env=ENV)
        assert str(configs[0].parent / "brain.sqlite") in out.stdout + out.stderr
    finally:
        for cfg in (a, b):
            backout("stop", "--yes", *cfg, env=ENV)
