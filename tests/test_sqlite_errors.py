"""What a person reads when SQLite or the disk says no: who holds a locked brain, a hot journal for what
it is, which file an I/O error was on, and advice about finishing a restore only when one is pending
(naming the command that finishes it)."""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from backout.brain.manifest import SnapshotError, SnapshotStore
from backout.brain.restore import RestoreRequest, restore_snapshot
from backout.brain.snapshot import create_snapshot
from backout_cli import backout, sha256_of

needs_strace = pytest.mark.skipif(subprocess.run(["which", "strace"], capture_output=True).returncode != 0,
                                  reason="strace is not installed")


def _journal_mode_brain(path: Path, rows: int = 3000) -> Path:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, x TEXT)")
    conn.executemany("INSERT INTO t (x) VALUES (?)", [(f"row {i}",) for i in range(rows)])
    conn.commit()
    conn.close()
    return path


def test_a_hot_journal_is_named_and_the_journal_is_kept(tmp_path: Path) -> None:
    brain = _journal_mode_brain(tmp_path / "b.sqlite")
    # A writer killed mid-transaction (a cache of one page: its changes spill into the file).
    subprocess.run([sys.executable, "-c", "import sqlite3, os\n"
                    f"c = sqlite3.connect({str(brain)!r}, isolation_level=None)\n"
                    "c.execute('PRAGMA cache_size = 1'); c.execute('BEGIN')\n"
                    "c.execute(\"UPDATE t SET x = x || '!'\"); os._exit(9)"], check=False)
    journal = brain.with_name("b.sqlite-journal")
    assert journal.stat().st_size > 0
    before = (sha256_of(brain), sha256_of(journal))
    out = backout("snapshot", "create", "--brain", str(brain), cwd=tmp_path)
    assert out.returncode == 4, out.stderr
    assert "hot journal" in out.stderr and "do not delete the journal" in out.stderr
    assert "readonly database" not in out.stderr
    assert (sha256_of(brain), sha256_of(journal)) == before  # nothing touched


def test_a_locked_brain_names_who_holds_it(tmp_path: Path) -> None:
    brain = _journal_mode_brain(tmp_path / "b.sqlite", rows=10)
    holder = subprocess.Popen([sys.executable, "-c", "import sqlite3, sys, time\n"
                               f"c = sqlite3.connect({str(brain)!r}, isolation_level=None)\n"
                               "c.execute('BEGIN EXCLUSIVE'); c.execute(\"INSERT INTO t (x) VALUES ('held')\")\n"
                               "print('locked', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        out = backout("snapshot", "create", "--brain", str(brain), cwd=tmp_path, timeout=60)
    finally:
        holder.kill()
        holder.wait()
    assert out.returncode == 4, out.stderr
    assert f"pid {holder.pid} (" in out.stderr and "is locked" in out.stderr and "retry" in out.stderr
    assert "database is locked" not in out.stderr


@needs_strace
def test_a_failed_fsync_names_its_file(tmp_path: Path) -> None:
    brain = _journal_mode_brain(tmp_path / "b.sqlite", rows=10)
    store = SnapshotStore(tmp_path / "snaps")
    snap = create_snapshot(store, brain, str(brain))  # the deployment `--brain` names
    for when in (1, 2):
        out = subprocess.run(["strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=fsync", "-e",
                              f"inject=fsync:error=EIO:when={when}", sys.executable, "-m", "backout", "snapshot",
                              "restore", snap.id, "--brain", "b.sqlite", "--into", "snaps", "--yes"],
                             capture_output=True, text=True, cwd=tmp_path, timeout=120)
        assert out.returncode == 4, out.stderr
        assert "I/O error on /" in out.stderr and " on .;" not in out.stderr and " on .:" not in out.stderr


@needs_strace
def test_a_restore_that_changed_nothing_says_so(tmp_path: Path) -> None:
    brain = _journal_mode_brain(tmp_path / "b.sqlite", rows=10)
    store = SnapshotStore(tmp_path / "snaps")
    snap = create_snapshot(store, brain, str(brain))  # the deployment `--brain` names
    out = subprocess.run(["strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=copy_file_range,sendfile", "-e",
                          "inject=copy_file_range,sendfile:error=ENOSPC", sys.executable, "-m", "backout",
                          "snapshot", "restore", snap.id, "--brain", "b.sqlite", "--into", "snaps", "--yes"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 4, out.stderr
    assert "nothing was changed" in out.stderr and "finish" not in out.stderr
    assert not list((tmp_path / ".backout" / "journals").glob("restore-*.json"))


def test_a_restore_stopped_halfway_names_the_command_that_finishes_it(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    brain = _journal_mode_brain(tmp_path / "b.sqlite", rows=10)
    store = SnapshotStore(tmp_path / "snaps")
    snap = create_snapshot(store, brain, str(brain))  # the deployment `--brain` names
    req = RestoreRequest(store, snap.id, brain, str(brain), tmp_path / ".backout", reason="rollback x",
                         finish_with="`backout rollback --resume`")
    rename = os.rename

    def failing_swap(src: object, dst: object) -> None:  # the disk fails at the final rename
        if Path(str(dst)) == brain:
            raise OSError(errno.EIO, "Input/output error", str(dst))
        rename(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "rename", failing_swap)
    with pytest.raises(SnapshotError) as failed:
        restore_snapshot(req)
    assert "partly restored" in str(failed.value) and "`backout rollback --resume` finishes it" in str(failed.value)
    monkeypatch.setattr(os, "rename", rename)
    time.sleep(0.01)
    assert restore_snapshot(req).snapshot_id == snap.id  # and it does
