"""`backout snapshot`: online snapshots of a live Engine brain, verification, listing, pruning."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import threading
from pathlib import Path

import httpx
import pytest

from backout_cli import backout, backout_json, sha256_of


def _consistent(db: Path) -> None:
    """Every turn writes 2 conversation rows, 1 trajectory and 1 episode in one transaction."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        conv, traj, epi = (conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                           for t in ("conversations", "trajectories", "episodes"))
    finally:
        conn.close()
    assert conv == 2 * traj == 2 * epi


def _turns(eng, n: int, prefix: str) -> None:  # type: ignore[no-untyped-def]
    with httpx.Client(headers=eng.headers, timeout=30) as client:
        for i in range(n):
            r = client.post(f"{eng.url}/execute", json={"task_id": f"{prefix}-{i % 7}",
                                                       "message": f"The item {prefix}{i} is ready. Met Priya."})
            assert r.status_code == 200


def test_snapshots_of_a_live_brain_under_heavy_writes_are_consistent(start_engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    eng = start_engine("2.3.1", env={"ENGINE_TURN_MS": "20"})
    _turns(eng, 20, "warm")
    into = tmp_path / "snaps"
    stop = threading.Event()

    def writer() -> None:
        while not stop.is_set():
            _turns(eng, 5, "load")

    threads = [threading.Thread(target=writer) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        made = [backout_json("snapshot", "create", "--brain", str(eng.brain), "--into", str(into)) for _ in range(4)]
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert len({m["tables"]["conversations"]["rows"] for m in made}) > 1  # writes really went on
    for manifest in made:
        snap = into / f"{manifest['id']}.sqlite"
        assert manifest["integrity_check"] == "ok" and manifest["method"] == "wal-copy"
        assert sha256_of(snap) == manifest["sha256"] and snap.stat().st_size == manifest["size"]
        assert not (into / f"{manifest['id']}.sqlite-wal").exists()  # self-contained file
        _consistent(snap)
        assert snap.stat().st_mode & 0o777 == 0o600 and (into / f"{manifest['id']}.json").stat().st_mode & 0o777 == 0o600
    assert into.stat().st_mode & 0o777 == 0o700
    assert manifest["schema_stamp"]["head"] in ("2", 2) and manifest["source"] == str(eng.brain)
    assert httpx.get(f"{eng.url}/health").status_code == 200


def _quiet_brain(tmp_path: Path, start_engine) -> Path:  # type: ignore[no-untyped-def]
    eng = start_engine("2.3.1")
    _turns(eng, 5, "q")
    assert eng.stop() == 0
    return eng.brain


def test_verify_catches_flipped_bytes_and_restore_refuses(start_engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    brain = _quiet_brain(tmp_path, start_engine)
    into = tmp_path / "snaps"
    good = backout_json("snapshot", "create", "--brain", str(brain), "--into", str(into))
    bad = backout_json("snapshot", "create", "--brain", str(brain), "--into", str(into), "--label", "to-corrupt")
    snap = into / f"{bad['id']}.sqlite"
    data = bytearray(snap.read_bytes())
    data[len(data) // 2] ^= 0xFF
    snap.write_bytes(bytes(data))

    out = backout("snapshot", "verify", bad["id"], "--brain", str(brain), "--into", str(into))
    assert out.returncode == 1 and "FAIL sha256" in out.stdout
    report = json.loads(backout("snapshot", "verify", bad["id"], "--brain", str(brain), "--into", str(into), "--json").stdout)
    assert not report["ok"]
    assert backout("snapshot", "verify", good["id"], "--brain", str(brain), "--into", str(into)).returncode == 0

    before = sha256_of(brain)
    out = backout("snapshot", "restore", bad["id"], "--yes", "--brain", str(brain), "--into", str(into))
    assert out.returncode == 3
    assert "fails verification" in out.stderr and good["id"] in out.stderr  # names the one that would pass
    assert sha256_of(brain) == before


def test_bad_input_is_refused_with_one_line(tmp_path: Path, start_engine) -> None:  # type: ignore[no-untyped-def]
    brain = _quiet_brain(tmp_path, start_engine)
    into = tmp_path / "snaps"
    for sid in ["../../etc/passwd", "20261126T221530Z-zzzzzz", "nope"]:
        out = backout("snapshot", "show", sid, "--brain", str(brain), "--into", str(into))
        assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    out = backout("snapshot", "show", "20261126T221530Z-abcdef", "--brain", str(brain), "--into", str(into))
    assert out.returncode == 2 and "no snapshot" in out.stderr
    not_sqlite = tmp_path / "notes.txt"
    not_sqlite.write_text("hello")
    out = backout("snapshot", "create", "--brain", str(not_sqlite), "--into", str(into))
    assert out.returncode == 2 and "not an SQLite database" in out.stderr
    assert not list(into.glob("*")) if into.exists() else True
    out = backout("snapshot", "create", "--brain", str(tmp_path / "missing.sqlite"), "--into", str(into))
    assert out.returncode == 2 and "does not exist" in out.stderr


def test_list_flags_stale_snapshots_and_prune_keeps_pinned(tmp_path: Path, start_engine) -> None:  # type: ignore[no-untyped-def]
    brain = _quiet_brain(tmp_path, start_engine)
    config = tmp_path / "backout.toml"
    config.write_text(f'state_dir = "state"\n[deployments.engine]\nbrain = "{brain}"\n'
                      '[deployments.engine.snapshots]\nkeep_last = 2\nmax_age = "1s"\n')
    ids = [backout_json("snapshot", "create", "--config", str(config), *(["--pin"] if i == 0 else []))["id"]
           for i in range(4)]
    import time
    time.sleep(1.2)
    listed = backout_json("snapshot", "list", "--config", str(config))
    assert [s["id"] for s in listed["snapshots"]] == ids[::-1]
    assert all(s["stale"] for s in listed["snapshots"])
    assert "STALE" in backout("snapshot", "list", "--config", str(config)).stdout
    plan = backout_json("snapshot", "prune", "--dry-run", "--config", str(config))
    assert plan["delete"] == [ids[1]] and plan["keep"][ids[0]] == "pinned"
    assert len(backout_json("snapshot", "list", "--config", str(config))["snapshots"]) == 4  # dry run
    out = backout("snapshot", "prune", "--config", str(config))  # no terminal, no --yes: refuse
    assert out.returncode == 2 and "--yes" in out.stderr
    assert backout("snapshot", "prune", "--yes", "--config", str(config)).returncode == 0
    assert [s["id"] for s in backout_json("snapshot", "list", "--config", str(config))["snapshots"]] == [ids[3], ids[2], ids[0]]


def test_malformed_config_is_a_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "backout.toml"
    config.write_text("[deployments.engine]\nbrian = 'typo'\n")
    out = backout("snapshot", "list", "--config", str(config))
    assert out.returncode == 2 and "deployments.engine" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    config.write_text("[deployments.engine\n")
    out = backout("snapshot", "list", "--config", str(config))
    assert out.returncode == 2 and "not valid TOML" in out.stderr


def _unshare_available() -> bool:
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                            "mount -t tmpfs -o size=1m tmpfs /mnt"], capture_output=True)
    return probe.returncode == 0


def test_disk_full_leaves_no_partial_snapshot(tmp_path: Path, start_engine) -> None:  # type: ignore[no-untyped-def]
    if shutil.which("unshare") is None or not _unshare_available():
        pytest.skip("no mount namespaces here")
    brain = _quiet_brain(tmp_path, start_engine)
    before = sha256_of(brain)
    into = tmp_path / "small"
    into.mkdir()
    import sys
    script = 'mount -t tmpfs -o size=64k tmpfs "$1" && shift && exec "$@"'
    out = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", str(into),
                          sys.executable, "-m", "backout", "snapshot", "create", "--brain", str(brain),
                          "--into", str(into)], capture_output=True, text=True)
    assert out.returncode == 4, out.stderr
    assert "space" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert sha256_of(brain) == before and not list(into.iterdir())


def test_enospc_in_the_middle_of_the_copy(tmp_path: Path, start_engine) -> None:  # type: ignore[no-untyped-def]
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed")
    brain = _quiet_brain(tmp_path, start_engine)
    before = sha256_of(brain)
    into = tmp_path / "snaps"
    import sys
    out = subprocess.run(["strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=copy_file_range",
                          "-e", "inject=copy_file_range:error=ENOSPC:when=1", sys.executable, "-m", "backout",
                          "snapshot", "create", "--brain", str(brain), "--into", str(into)],
                         capture_output=True, text=True)
    assert out.returncode == 4 and "no space left" in out.stderr, out.stderr
    assert sha256_of(brain) == before
    assert not [p for p in into.iterdir()]  # no temporary, no half snapshot
