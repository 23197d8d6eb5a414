"""The local volume provider, for real: the reference Engine serving a brain inside the volume folder,
real copies, real renames, real SIGKILLs (BACKOUT_FAULT_AT in a child process), a real bind mount and a
real small tmpfs in a private mount namespace (`unshare -m`). Nothing is mocked, except where a test
says so (one test stands in for a filesystem without RENAME_EXCHANGE)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from backout_cli import row_count

from backout.commands import recording
from backout.config import VolumeSettings, resolve_target
from backout.errors import EXIT_ENVIRONMENT, EXIT_REFUSED, EXIT_USAGE
from backout.volumes import Hooks, VolumeError
from backout.volumes.factory import volume_for
from backout.volumes.local import LocalVolume

CHILD = Path(__file__).with_name("volume_child.py")
SWAP_POINTS = [f"{when}:volume-{step}" for step in ("stage", "stop", "swap", "record") for when in ("before", "after")] \
    + ["inside:volume-swap"]


def _volume(path: Path, state: Path) -> LocalVolume:
    return LocalVolume(VolumeSettings(provider="local", path=path), "engine", state)




def _tasks(db: Path) -> set[str]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {row[0] for row in conn.execute("SELECT DISTINCT task_id FROM conversations")}
    finally:
        conn.close()


def _turns(eng: Any, prefix: str, n: int) -> None:
    for i in range(n):
        r = httpx.post(f"{eng.url}/execute", headers=eng.headers, timeout=30,
                       json={"task_id": f"{prefix}{i}", "message": f"{prefix} turn {i}: met Omar."})
        assert r.status_code == 200, r.text


def _brain_folder(folder: Path, rows: int) -> Path:
    """A small volume folder: a SQLite brain (WAL mode) with `rows` rows, and a sub-folder."""
    (folder / "assets").mkdir(parents=True)
    (folder / "assets" / "note.txt").write_text("asset\n")
    os.chmod(folder / "assets" / "note.txt", 0o644)
    conn = sqlite3.connect(folder / "brain.sqlite")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE conversations (id INTEGER PRIMARY KEY, body TEXT)")
    _addrow_count(conn, rows)
    conn.close()
    return folder / "brain.sqlite"


def _addrow_count(conn: sqlite3.Connection, n: int) -> None:
    conn.executemany("INSERT INTO conversations (body) VALUES (?)", [(f"row {i}",) for i in range(n)])
    conn.commit()


def _morerow_count(brain: Path, n: int) -> None:
    conn = sqlite3.connect(brain)
    _addrow_count(conn, n)
    conn.close()


def _child(*args: str, fault: str | None = None, namespace: bool = False) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "BACKOUT_FAULT_AT"}
    if fault:
        env["BACKOUT_FAULT_AT"] = fault
    prefix = ["unshare", "-m", "--propagation", "private"] if namespace else []
    return subprocess.run([*prefix, sys.executable, str(CHILD), *args], capture_output=True, text=True, env=env,
                          timeout=120)


def _namespaces_work(tmp: Path) -> bool:
    probe = tmp / "ns-probe"
    probe.mkdir()
    out = subprocess.run(["unshare", "-m", "--propagation", "private", "mount", "--bind", str(probe), str(probe)],
                         capture_output=True, text=True)
    return out.returncode == 0


def test_snapshot_then_restore_with_the_engine_running_on_the_volume(start_engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Real: the Engine (2.3.1) on vol/brain.sqlite, stopped (drained) and started by the hooks."""
    folder, state = tmp_path / "vol", tmp_path / "state"
    folder.mkdir()
    eng = start_engine("2.3.1", brain=folder / "brain.sqlite")
    _turns(eng, "before", 3)
    code = eng.stop()
    assert code == 0, f"exit {code}: {eng.logs()[-3000:]}"  # drained: the brain on disk is consistent
    kept = row_count(eng.brain)
    volume = _volume(folder, state)
    snap = volume.snapshot({"version": "2.3.1", "restore-point": "rp-1"})
    manifest = volume.manifest(snap.id)
    assert snap.state == "completed" and snap.tags == {"deployment": "engine", "version": "2.3.1",
                                                       "restore-point": "rp-1"}
    assert manifest["method"] in ("copy", "reflink", "copy+reflink")
    data = state / "volume-snapshots" / snap.id / "data"
    assert stat.S_IMODE((data / "brain.sqlite").stat().st_mode) == 0o600
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert {e["path"] for e in manifest["entries"] if e["kind"] == "file"} >= {"brain.sqlite"}
    assert all(len(e["sha256"]) == 64 for e in manifest["entries"] if e["kind"] == "file")

    eng.start()
    eng.wait_healthy()
    _turns(eng, "bad-window", 2)
    calls: list[str] = []

    def stop() -> None:  # the snapshot is staged (verified) before the service stops: downtime is the swap
        assert len(list(folder.parent.glob(f".vol.restore-{snap.id}.tmp"))) == 1
        calls.append("stop")
        assert eng.stop() == 0

    def start() -> None:
        calls.append("start")
        eng.start()
        eng.wait_healthy()

    plan = volume.plan_restore(snap.id)  # the provider's own commands: the caller stops and starts the service
    assert [c.argv[:2] for c in plan] == [("cp", "-a"), ("mv", "--exchange"), ("mv", "-T"), ("chmod", "700")]
    assert plan[1].argv[-1] == str(folder)
    with recording() as performed:
        result = volume.restore(snap.id, Hooks(stop, start))
    assert performed == plan  # what the plan showed is what ran

    assert calls == ["stop", "start"] and result.steps == ["stage", "swap", "record"]
    assert httpx.get(f"{eng.url}/health").json()["status"] == "ok"
    assert eng.stop() == 0
    assert row_count(folder / "brain.sqlite") == kept
    assert _tasks(folder / "brain.sqlite") == {"before0", "before1", "before2"}
    quarantine = Path(result.quarantined_volume or "")
    assert quarantine.parent == folder.parent and quarantine.name.startswith("vol.quarantine-")
    assert _tasks(quarantine / "brain.sqlite") == {"before0", "before1", "before2", "bad-window0", "bad-window1"}
    record = json.loads((quarantine / "quarantine.json").read_text())
    assert record["replaced_by_snapshot"] == snap.id and record["displaced_volume"] == str(folder)
    assert stat.S_IMODE(quarantine.stat().st_mode) == 0o700
    assert not list(folder.parent.glob(".vol.restore-*")) and not list((state / "journals").glob("*.json"))
    assert [s.id for s in volume.snapshots("engine")] == [snap.id] and volume.snapshots("other") == []


def test_a_corrupt_snapshot_is_refused_before_the_service_is_stopped(tmp_path: Path) -> None:
    folder, state = tmp_path / "vol", tmp_path / "state"
    brain = _brain_folder(folder, 10)
    volume = _volume(folder, state)
    snap = volume.snapshot({})
    copy = state / "volume-snapshots" / snap.id / "data" / "brain.sqlite"
    with open(copy, "r+b") as f:  # one flipped byte in the snapshot
        f.seek(200)
        byte = f.read(1)
        f.seek(200)
        f.write(bytes([byte[0] ^ 0xFF]))
    _morerow_count(brain, 5)
    stopped: list[bool] = []
    with pytest.raises(VolumeError) as err:
        volume.restore(snap.id, Hooks(lambda: stopped.append(True), lambda: stopped.append(False)))
    assert err.value.exit_code == EXIT_REFUSED and "brain.sqlite: sha256 differs" in str(err.value)
    assert "nothing was stopped" in str(err.value) and stopped == []
    assert volume.verify(snap.id) == ["brain.sqlite: sha256 differs from the manifest"]
    assert row_count(brain) == 15 and not list(tmp_path.glob("vol.quarantine-*"))
    assert not list((state / "journals").glob("*.json"))  # nothing pending


def test_modes_and_owners_come_back_and_missing_things_are_refused(tmp_path: Path) -> None:
    folder, state = tmp_path / "vol", tmp_path / "state"
    _brain_folder(folder, 3)
    os.chmod(folder / "brain.sqlite", 0o640)
    (folder / "link").symlink_to("assets/note.txt")
    volume = _volume(folder, state)
    snap = volume.snapshot({"version": "1"})
    (folder / "assets" / "note.txt").write_text("changed\n")
    volume.restore(snap.id, Hooks(lambda: None, lambda: None))
    assert stat.S_IMODE((folder / "brain.sqlite").stat().st_mode) == 0o640
    assert stat.S_IMODE((folder / "assets" / "note.txt").stat().st_mode) == 0o644
    assert (folder / "assets" / "note.txt").read_text() == "asset\n" and os.readlink(folder / "link") == "assets/note.txt"

    with pytest.raises(VolumeError) as err:
        volume.restore("20990101T000000Z-abcdef", Hooks(lambda: None, lambda: None))
    assert err.value.exit_code == EXIT_USAGE
    with pytest.raises(VolumeError) as err:
        volume.plan_restore("../../etc")
    assert err.value.exit_code == EXIT_USAGE
    with pytest.raises(VolumeError) as err:
        _volume(tmp_path / "missing", state).snapshot({})
    assert err.value.exit_code == EXIT_USAGE and "does not exist" in str(err.value)


@pytest.mark.parametrize("exchange", ["exchange", "no-exchange"])
@pytest.mark.parametrize("point", SWAP_POINTS)
def test_kill_9_during_restore_then_rerun_finishes_it(tmp_path: Path, point: str, exchange: str) -> None:
    """Real SIGKILL at each named point of the restore (child process), then the same restore again.

    "no-exchange" replaces backout's renameat2 exchange by one that reports "not supported", to run
    the two-rename fallback of filesystems without RENAME_EXCHANGE (ext4 here has it)."""
    folder, state = tmp_path / "vol", tmp_path / "state"
    brain = _brain_folder(folder, 10)
    snap = _volume(folder, state).snapshot({})
    _morerow_count(brain, 7)
    flags = ["--no-exchange"] if exchange == "no-exchange" else []

    crashed = _child(*flags, "restore", str(folder), str(state), snap.id, fault=point)
    assert crashed.returncode == -9, crashed.stdout + crashed.stderr
    if folder.exists():  # old or new, whole; missing only between the two renames of the fallback
        assert row_count(brain) in (10, 17)
    else:
        assert (exchange, point) == ("no-exchange", "inside:volume-swap")

    again = _child(*flags, "restore", str(folder), str(state), snap.id)
    assert again.returncode == 0, again.stdout + again.stderr
    result = json.loads(again.stdout)
    assert row_count(brain) == 10
    quarantines = list(tmp_path.glob("vol.quarantine-*"))
    assert [str(q) for q in quarantines] == [result["quarantined_volume"]]
    assert row_count(quarantines[0] / "brain.sqlite") == 17
    assert (quarantines[0] / "quarantine.json").exists()
    assert not list(tmp_path.glob(".vol.restore-*")) and not list((state / "journals").glob("*.json"))


def test_a_pending_restore_of_another_snapshot_is_refused(tmp_path: Path) -> None:
    folder, state = tmp_path / "vol", tmp_path / "state"
    brain = _brain_folder(folder, 4)
    first = _volume(folder, state).snapshot({})
    _morerow_count(brain, 1)
    second = _volume(folder, state).snapshot({})
    crashed = _child("restore", str(folder), str(state), first.id, fault="after:volume-stage")
    assert crashed.returncode == -9
    with pytest.raises(VolumeError) as err:
        _volume(folder, state).restore(second.id, Hooks(lambda: None, lambda: None))
    assert err.value.exit_code == EXIT_REFUSED and f"restore of {first.id}" in str(err.value)
    _volume(folder, state).restore(first.id, Hooks(lambda: None, lambda: None))
    assert row_count(brain) == 4


def test_a_journal_with_the_earlier_step_names_is_resumed(tmp_path: Path) -> None:
    """A restore journal written when its steps were named `stage` and `swap` (not `volume-stage`...), left by
    a crash after the swap: the next run repeats neither (a second swap would refuse over the quarantine),
    stops the service again and records the quarantine."""
    folder, state = tmp_path / "vol", tmp_path / "state"
    brain = _brain_folder(folder, 4)
    snap = _volume(folder, state).snapshot({})
    _morerow_count(brain, 2)
    crashed = _child("restore", str(folder), str(state), snap.id, fault="after:volume-swap")
    assert crashed.returncode == -9
    [path] = (state / "journals").glob("volume-restore-*.json")
    journal = json.loads(path.read_text())
    assert journal["done"] == ["volume-stage", "volume-swap"]
    path.write_text(json.dumps({**journal, "done": ["stage", "swap"], "timeline": []}))
    calls: list[str] = []
    result = _volume(folder, state).restore(snap.id, Hooks(lambda: calls.append("stop"), lambda: calls.append("start")))
    assert result.steps == ["record"] and calls == ["stop", "start"] and row_count(brain) == 4
    assert json.loads((Path(result.quarantined_volume or "") / "quarantine.json").read_text())["replaced_by_snapshot"] \
        == snap.id


def test_a_mount_point_gets_its_contents_swapped(tmp_path: Path) -> None:
    """Real bind mount (PATH on itself) in a private mount namespace, as a docker volume is mounted:
    the directory cannot be renamed, so its contents are; a crash inside the swap is resumed."""
    if not _namespaces_work(tmp_path):
        pytest.skip("mount namespaces (unshare -m) are not available here")
    folder, state = tmp_path / "vol", tmp_path / "state"
    brain = _brain_folder(folder, 6)
    made = _child("--bind", "snapshot", str(folder), str(state), namespace=True)
    assert made.returncode == 0, made.stderr
    snap_id = json.loads(made.stdout)["id"]
    _morerow_count(brain, 4)
    (folder / "late.txt").write_text("written in the bad window\n")
    (folder / "brain.sqlite-wal").write_bytes(b"stale sidecar of the displaced brain")

    crashed = _child("--bind", "restore", str(folder), str(state), snap_id, fault="inside:volume-swap",
                     namespace=True)
    assert crashed.returncode == -9, crashed.stderr
    done = _child("--bind", "restore", str(folder), str(state), snap_id, namespace=True)
    assert done.returncode == 0, done.stdout + done.stderr

    quarantine = Path(json.loads(done.stdout)["quarantined_volume"])
    assert quarantine.parent == folder and quarantine.name.startswith(".backout-quarantine-")
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".backout-")) == \
        ["assets", "brain.sqlite"]  # the stale -wal and late.txt moved out
    assert (quarantine / "brain.sqlite-wal").read_bytes() == b"stale sidecar of the displaced brain"
    assert (quarantine / "late.txt").exists()
    assert json.loads((quarantine / "quarantine.json").read_text())["contents_of_mount_point"] is True
    displaced = tmp_path / "displaced.sqlite"  # read a copy: the garbage -wal beside it is no real WAL
    shutil.copyfile(quarantine / "brain.sqlite", displaced)
    assert row_count(brain) == 6 and row_count(displaced) == 10
    # A later snapshot leaves backout's own folders (the quarantine) out.
    again = _child("--bind", "snapshot", str(folder), str(state), namespace=True)
    manifest = json.loads((state / "volume-snapshots" / json.loads(again.stdout)["id"] / "manifest.json").read_text())
    assert not any(e["path"].startswith(".backout-") for e in manifest["entries"])


def test_not_enough_space_is_refused_before_copying(tmp_path: Path) -> None:
    """Real small disk: a 1 MiB tmpfs as the state folder, a 3 MiB volume."""
    if not _namespaces_work(tmp_path):
        pytest.skip("mount namespaces (unshare -m) are not available here")
    folder, state = tmp_path / "vol", tmp_path / "state"
    folder.mkdir()
    (folder / "brain.sqlite").write_bytes(os.urandom(3 * 2**20))
    out = _child("--tmpfs-state", "1024", "snapshot", str(folder), str(state), namespace=True)
    assert out.returncode == 3, out.stderr
    error = json.loads(out.stdout)
    assert error["exit_code"] == EXIT_ENVIRONMENT and "not enough space for the snapshot" in error["error"]


def test_disk_full_in_the_middle_of_a_copy_removes_the_partial_snapshot(tmp_path: Path) -> None:
    """Real ENOSPC from the kernel's side of the copy: strace makes the second copy_file_range fail."""
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed (apt-get install strace)")
    folder, state = tmp_path / "vol", tmp_path / "state"
    folder.mkdir()
    (folder / "brain.sqlite").write_bytes(os.urandom(9 * 2**20))  # three 4 MiB chunks
    out = subprocess.run(["strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=copy_file_range", "-e",
                          "inject=copy_file_range:error=ENOSPC:when=2", sys.executable, str(CHILD), "snapshot",
                          str(folder), str(state)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 3, out.stdout + out.stderr
    error = json.loads(out.stdout)["error"]
    assert "no space left" in error and "partial snapshot" in error and "was removed" in error
    assert list((state / "volume-snapshots").iterdir()) == []


def test_the_factory_builds_the_configured_provider(tmp_path: Path) -> None:
    config = tmp_path / "backout.toml"
    config.write_text('state_dir = "state"\n[deployments.engine]\nbrain = "vol/brain.sqlite"\n')
    assert volume_for(resolve_target(config)) is None
    config.write_text('state_dir = "state"\n[deployments.engine]\nbrain = "vol/brain.sqlite"\n'
                      '[deployments.engine.volume]\nprovider = "local"\npath = "vol"\n')
    provider = volume_for(resolve_target(config))
    assert isinstance(provider, LocalVolume)
    assert provider.path == tmp_path / "vol" and provider.root == tmp_path / "state" / "volume-snapshots"
    assert provider.describe()["exists"] is False
