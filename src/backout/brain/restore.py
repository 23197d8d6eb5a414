"""Atomic, journaled restore of a snapshot over a brain, the displaced brain kept in quarantine.

Steps (each idempotent; the journal records which are done):
  (refusals first: deployment, integrity at creation, the service not running)
  stage       copy it next to the brain, hashing the snapshot meanwhile; fsync; check the copy
  checkpoint  fold the old brain's WAL into it, so nothing of it lives only in a sidecar
  quarantine  hard-link the old brain (and any sidecars) into quarantine/<time>-<reason>/
  swap        drop the live sidecars (kept in quarantine), rename the staged copy over the brain
There is never a moment without a brain file at the brain's path: the old one is replaced by an
atomic rename. `kill -9` anywhere, then the same restore again, finishes the job.

The brain keeps its journal mode: snapshots are single files in rollback-journal mode, so the
staged copy is put back into WAL mode when the brain was in it (the manifest says, or for older
manifests the displaced brain's header). A brain reached through a symlink is restored in its
target, beside which SQLite keeps the sidecars; the link stays.
"""

from __future__ import annotations

import errno
import json
import os
import re
import sqlite3
import threading
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from backout.brain.liveness import lock_holders
from backout.brain.manifest import Manifest, SnapshotError, SnapshotStore, same_brain, utcnow
from backout.brain.snapshot import SIDE_CARS, brain_file, require_no_sidecars, verify_snapshot
from backout.brain.tables import connect_readonly
from backout.commands import Command
from backout.fsutil import (copy_fd, create_private, describe_os_error, ensure_private_dir, free_bytes,
                            fsync_dir, fsync_fd, fsync_path, sha256_file, atomic_write_json)
from backout.errors import EXIT_ENVIRONMENT, EXIT_REFUSED
from backout.journal import Journal, fault_point
from backout.plan import Plan, execute, steps_of
from backout.progress import NO_PROGRESS, Progress

__all__ = ["RestoreRequest", "RestoreResult", "restore_snapshot", "stage_snapshot", "staged_path", "newest_passing",
           "pending_restore", "restore_journals", "checkpoint_wal", "restore_commands", "restore_journal_path",
           "restore_plan"]

STEPS = {
    "stage": "Copy the snapshot beside the brain, hashing it meanwhile; fsync; check the copy",
    "checkpoint": "Fold the current brain's WAL into it, so nothing of it lives only in a sidecar",
    "quarantine": "Keep the current brain (and any sidecars) in quarantine: hard links, never a move",
    "swap": "Drop the live sidecars (kept in quarantine), rename the staged copy over the brain",
}


@dataclass(frozen=True)
class RestoreRequest:
    """What to restore where, and why."""

    store: SnapshotStore
    snapshot_id: str
    brain: Path
    deployment: str
    state_dir: Path
    reason: str = "restore"
    service_stopped: bool = False  # the caller vouches the service is stopped when the lock probe cannot tell
    finish_with: str = ""  # the command that finishes an interrupted run (default: the same snapshot restore)


@dataclass
class RestoreResult:
    """What a restore did."""

    snapshot_id: str
    brain: Path
    quarantine: Path | None
    resumed: bool
    steps: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"snapshot": self.snapshot_id, "brain": str(self.brain),
                "quarantine": str(self.quarantine) if self.quarantine else None,
                "resumed": self.resumed, "steps": self.steps}


def staged_path(brain: Path, snapshot_id: str) -> Path:
    """Where a snapshot is staged beside the brain (same filesystem, so the swap is a rename)."""
    brain = brain_file(brain)
    return brain.with_name(f".{brain.name}.restore-{snapshot_id}.tmp")


def restore_journals(state_dir: Path) -> list[Path]:
    """Journals of every unfinished restore (of any brain) kept in `state_dir`."""
    folder = state_dir / "journals"
    return sorted(folder.glob("restore-*.json")) if folder.is_dir() else []


def pending_restore(state_dir: Path, brain: Path) -> bool:
    """True when an interrupted restore over `brain` has left its journal (finish it first)."""
    return restore_journal_path(state_dir, brain).exists()


def restore_journal_path(state_dir: Path, brain: Path) -> Path:
    """Where the journal of a restore over `brain` is kept (it exists only while a restore is unfinished)."""
    return Journal.slot_path(state_dir, "restore", str(brain_file(brain)))


def newest_passing(store: SnapshotStore, deployment: str, exclude: str | None = None,
                   brain: Path | None = None) -> str | None:
    """Id of the newest snapshot of `deployment` (of `brain` when given) that passes verification, if any."""
    for manifest in store.of(deployment, brain):
        if manifest.id != exclude and verify_snapshot(store, manifest.id).ok:
            return manifest.id
    return None


def _refuse(req: RestoreRequest, reason: str) -> SnapshotError:
    better = newest_passing(req.store, req.deployment, exclude=req.snapshot_id, brain=req.brain)
    hint = f"; the newest snapshot that would pass is {better}" if better else "; no other snapshot of this deployment passes"
    return SnapshotError(reason + hint, EXIT_REFUSED)


def _check_not_running(req: RestoreRequest) -> None:
    """What the kernel knows wins: a brain someone holds is never replaced, whatever the caller says."""
    try:
        pids = lock_holders(req.brain) if req.brain.exists() else []
    except OSError as exc:
        if req.service_stopped:
            return  # the probe cannot tell, and the caller vouches the service is stopped
        raise SnapshotError(f"cannot tell whether anything has the brain {req.brain} open ({exc.strerror}); make "
                            "sure the service is stopped, then pass --service-stopped", EXIT_REFUSED) from None
    if pids:
        raise SnapshotError(
            f"the brain {req.brain} is open by process {', '.join(map(str, pids))}: stop the service "
            "(drained, e.g. `backout stop`) before restoring", EXIT_REFUSED,
        )


def _preflight(req: RestoreRequest) -> Manifest:
    """Cheap refusals first; the snapshot's bytes are verified while it is staged."""
    manifest = req.store.load(req.snapshot_id)
    if manifest.deployment != req.deployment:
        raise _refuse(req, f"snapshot {req.snapshot_id} was taken from deployment {manifest.deployment!r}, "
                           f"not {req.deployment!r}")
    if manifest.source and not same_brain(manifest.source, req.brain):
        raise _refuse(req, f"snapshot {req.snapshot_id} was taken from the brain {manifest.source}, not from "
                           f"{req.brain}: restore it over its own brain")
    if manifest.integrity_check != "ok":
        raise _refuse(req, f"snapshot {req.snapshot_id} did not pass integrity_check when it was taken")
    return manifest


class SnapshotMismatch(SnapshotError):
    """The snapshot's bytes do not hash to its manifest's sha256."""


def _stamp_path(staged: Path) -> Path:
    return staged.with_name(staged.name + ".verified")


def _staged_ok(staged: Path, manifest: Manifest) -> bool:
    """True when `staged` is the verified copy recorded at staging time (same inode, size, mtime)."""
    try:
        record = json.loads(_stamp_path(staged).read_text(encoding="utf-8"))
        st = staged.stat()
    except (OSError, ValueError):
        return False
    return record == {"sha256": manifest.sha256, "size": st.st_size, "inode": st.st_ino,
                      "mtime_ns": st.st_mtime_ns} and st.st_size == manifest.size


def _header_mode(brain: Path) -> str | None:
    """'wal' or 'delete' from the brain's header (byte 18 is 2 in WAL mode), None without a readable one."""
    try:
        with brain.open("rb") as f:
            header = f.read(20)
    except OSError:
        return None
    if len(header) < 20 or not header.startswith(b"SQLite format 3\x00"):
        return None
    return "wal" if header[18] == 2 else "delete"


def _keep_journal_mode(staged: Path, manifest: Manifest, brain: Path) -> None:
    """Put the staged copy in the brain's journal mode: WAL is recorded in the file, rollback modes are not."""
    mode = manifest.journal_mode or _header_mode(brain)
    if mode != "wal" or _header_mode(staged) == "wal":
        return
    conn = sqlite3.connect(staged, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
    finally:
        conn.close()  # the last connection: removes the copy's -wal and -shm
    require_no_sidecars(staged, "putting the staged copy in WAL mode")
    fsync_path(staged)


def stage_snapshot(store: SnapshotStore, snapshot_id: str, brain: Path, progress: Progress = NO_PROGRESS) -> Path:
    """Copy a snapshot beside the brain and verify it, so a later restore is only a rename."""
    brain = brain_file(brain)
    manifest = store.load(snapshot_id)
    staged = staged_path(brain, snapshot_id)
    if _staged_ok(staged, manifest):
        return staged
    staged.unlink(missing_ok=True)
    _stamp_path(staged).unlink(missing_ok=True)
    if free_bytes(brain.parent) < manifest.size:
        raise SnapshotError(f"not enough space beside {brain} to stage {manifest.size // 2**20} MiB; free space first",
                            EXIT_ENVIRONMENT)
    progress.phase("stage", manifest.size)
    source = store.db_path(snapshot_id)
    # Verify the snapshot (hash of the store's file) while the kernel copies it; then the copy.
    source_hash = _hash_in_thread(source)
    src = os.open(source, os.O_RDONLY)
    try:
        dst = create_private(staged)
        try:
            copy_fd(src, dst, progress.advance)
            fsync_fd(dst, staged)
        finally:
            os.close(dst)
    finally:
        os.close(src)
    if source_hash() != manifest.sha256:
        staged.unlink(missing_ok=True)
        raise SnapshotMismatch(f"snapshot {snapshot_id} fails verification (sha256 differs from its manifest)",
                               EXIT_REFUSED)
    if sha256_file(staged) != manifest.sha256:
        staged.unlink(missing_ok=True)
        raise SnapshotError(f"the staged copy of {snapshot_id} does not match its manifest; disk trouble? "
                            "nothing was changed", EXIT_ENVIRONMENT)
    _keep_journal_mode(staged, manifest, brain)
    st = staged.stat()
    atomic_write_json(_stamp_path(staged), {"sha256": manifest.sha256, "size": st.st_size, "inode": st.st_ino,
                                            "mtime_ns": st.st_mtime_ns})
    return staged


def _hash_in_thread(path: Path) -> Callable[[], str]:
    """Start hashing `path` in a thread; the returned function waits for the digest."""
    result: dict[str, str | BaseException] = {}

    def work() -> None:
        try:
            result["sha256"] = sha256_file(path)
        except OSError as exc:
            result["error"] = exc

    worker = threading.Thread(target=work, daemon=True)
    worker.start()

    def wait() -> str:
        worker.join()
        if "error" in result:
            raise result["error"]  # type: ignore[misc]
        return str(result["sha256"])

    return wait


def _stage_for_restore(req: RestoreRequest, progress: Progress) -> None:
    try:
        stage_snapshot(req.store, req.snapshot_id, req.brain, progress)
    except SnapshotMismatch as exc:
        raise _refuse(req, str(exc)) from None


def checkpoint_wal(brain: Path) -> bool | None:
    """Fold the WAL into the brain so the file alone holds everything (best effort): True when complete,
    False when writers kept part of it back, None when there is no readable brain."""
    if not brain.exists():
        return None
    try:
        conn = sqlite3.connect(brain, isolation_level=None, timeout=5)
        try:
            busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.DatabaseError:
        return None  # not readable as SQLite: quarantine keeps every file as it is
    return not busy


def _quarantine_dir(req: RestoreRequest, journal: Journal) -> Path:
    name = journal.facts.get("quarantine")
    if name is None:
        stamp = utcnow().strftime("%Y%m%dT%H%M%SZ")
        slug = re.sub(r"[^a-z0-9]+", "-", req.reason.lower()).strip("-")[:40] or "restore"
        name, n = f"{stamp}-{slug}", 1
        while (req.state_dir / "quarantine" / name).exists():  # never mix two displaced brains
            n += 1
            name = f"{stamp}-{slug}-{n}"
        journal.remember(quarantine=name)
    return req.state_dir / "quarantine" / str(name)


def _keep(src: Path, dst: Path) -> None:
    """Hard-link `src` as `dst`; across filesystems, copy durably instead (never move)."""
    if dst.exists():
        if os.path.samefile(src, dst) or sha256_file(src) == sha256_file(dst):
            return
        raise SnapshotError(f"{dst} exists and differs from {src}; inspect the quarantine before retrying",
                            EXIT_REFUSED)
    try:
        os.link(src, dst)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            raise
        tmp = dst.with_name(dst.name + ".partial")
        tmp.unlink(missing_ok=True)
        s, d = os.open(src, os.O_RDONLY), create_private(tmp)
        try:
            copy_fd(s, d)
            fsync_fd(d, tmp)
        finally:
            os.close(s)
            os.close(d)
        os.rename(tmp, dst)


def _quarantine(req: RestoreRequest, qdir: Path, manifest: Manifest) -> None:
    present = [p for p in (req.brain.with_name(req.brain.name + s) for s in ("", *SIDE_CARS)) if p.exists()]
    if not present:
        return  # nothing to displace: restoring into an empty place
    ensure_private_dir(qdir)
    kept = []
    for src in present:
        _keep(src, qdir / src.name)
        kept.append(src.name)
    fsync_dir(qdir)
    atomic_write_json(qdir / "quarantine.json", {
        "displaced_brain": str(req.brain), "deployment": req.deployment, "reason": req.reason,
        "replaced_by_snapshot": manifest.id, "files": kept,
        "at": datetime.now().astimezone().isoformat(timespec="seconds"),
        "note": "backout never deletes quarantine; salvage reads the bad window's rows from here",
    })


def _swapped(req: RestoreRequest, journal: Journal, manifest: Manifest) -> bool:
    """True when the staged copy was renamed over the brain before a crash (it may differ from the snapshot's
    bytes by its journal mode, so the inode recorded before the rename decides, else the sha256)."""
    if not req.brain.exists():
        return False
    if journal.facts.get("swapped_inode") == req.brain.stat().st_ino:
        return True
    return sha256_file(req.brain) == manifest.sha256


def _swap(req: RestoreRequest, staged: Path, manifest: Manifest, journal: Journal) -> None:
    if not staged.exists():
        if _swapped(req, journal, manifest):
            _stamp_path(staged).unlink(missing_ok=True)
            return  # the rename happened before a crash
        staged = stage_snapshot(req.store, req.snapshot_id, req.brain)  # removed meanwhile: stage it again
    for suffix in SIDE_CARS:  # a stale WAL beside the restored brain would be replayed into it
        req.brain.with_name(req.brain.name + suffix).unlink(missing_ok=True)
    journal.remember(swapped_inode=staged.stat().st_ino)
    fault_point("inside:swap")
    os.rename(staged, req.brain)
    _stamp_path(staged).unlink(missing_ok=True)
    fsync_dir(req.brain.parent)


def _check_restored(brain: Path) -> None:
    """The restored file is byte-for-byte a verified snapshot; check only that it opens as one."""
    conn = connect_readonly(brain)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as exc:
        raise SnapshotError(f"restored brain does not open ({exc}); the old brain is in quarantine") from None
    finally:
        conn.close()


def restore_snapshot(req: RestoreRequest, progress: Progress = NO_PROGRESS) -> RestoreResult:
    """Restore `req.snapshot_id` over `req.brain`, resuming an interrupted run of the same restore."""
    req = replace(req, brain=brain_file(req.brain))  # a link stays; the file SQLite opens is replaced
    journal = Journal.for_slot(req.state_dir, "restore", str(req.brain), {
        "kind": "restore", "snapshot": req.snapshot_id, "brain": str(req.brain), "deployment": req.deployment,
        "reason": req.reason})
    resumed = bool(journal.data["done"])
    if journal.operation["snapshot"] != req.snapshot_id:
        raise SnapshotError(
            f"an interrupted restore of snapshot {journal.operation['snapshot']} over {req.brain} is pending; "
            f"finish it first (backout snapshot restore {journal.operation['snapshot']}), journal: {journal.path}",
            EXIT_REFUSED,
        )
    try:
        return _run(req, journal, resumed, progress)
    except OSError as exc:
        _drop_if_untouched(journal)
        finish = req.finish_with or f"`backout snapshot restore {req.snapshot_id}`"
        then = (f"the brain is partly restored: fix that, then {finish} finishes it" if journal.path.exists()
                else "nothing was changed: fix that and run it again")
        raise SnapshotError(f"restore stopped: {describe_os_error(exc, req.brain.parent)}; {then}",
                            EXIT_ENVIRONMENT) from None
    except BaseException:
        _drop_if_untouched(journal)
        raise


def _drop_if_untouched(journal: Journal) -> None:
    """Refused or failed before changing anything: leave no pending restore behind."""
    if not journal.data["done"]:
        journal.finish()


def _run(req: RestoreRequest, journal: Journal, resumed: bool, progress: Progress) -> RestoreResult:
    if not journal.done("swap"):
        _check_not_running(req)
    manifest = _preflight(req)
    result = RestoreResult(req.snapshot_id, req.brain, None, resumed)
    staged = staged_path(req.brain, req.snapshot_id)
    qdir = _quarantine_dir(req, journal)
    actions: dict[str, Callable[[], object]] = {
        "stage": lambda: _stage_for_restore(req, progress),
        "checkpoint": lambda: checkpoint_wal(req.brain),
        "quarantine": lambda: _quarantine(req, qdir, manifest),
        "swap": lambda: _swap(req, staged, manifest, journal),
    }
    execute(restore_plan(req, actions), journal,
            lambda step, phase: result.steps.append(step.name) if phase == "done" else None)
    _check_restored(req.brain)
    result.quarantine = qdir if qdir.exists() else None
    journal.finish()
    return result


def restore_commands(req: RestoreRequest) -> list[Command]:
    """What a restore runs, step by step, as commands (for plans and dry-runs; the journal records the same)."""
    return [command for step in restore_plan(req).steps for command in step.commands]


def restore_plan(req: RestoreRequest, actions: dict[str, Callable[[], object]] | None = None) -> Plan:
    """A restore's steps with their commands; with `actions` (by step name), the code that carries each out."""
    target = brain_file(req.brain)  # a link stays: the file SQLite opens is what is replaced
    staged, brain = str(staged_path(target, req.snapshot_id)), str(target)
    sidecars = tuple(brain + suffix for suffix in SIDE_CARS)
    quarantine = f"{req.state_dir / 'quarantine'}/<time>-<reason>/"
    commands = {
        "stage": [Command(f"copy snapshot {req.snapshot_id} beside the brain, fsync, check its sha256 against the "
                          "manifest", ("cp", str(req.store.db_path(req.snapshot_id)), staged), files=(staged,),
                          kind="copy")],
        "checkpoint": [Command("fold the current brain's WAL into it, so nothing of it lives only in a sidecar",
                               ("sqlite3", brain, "PRAGMA wal_checkpoint(TRUNCATE)"), files=(brain,),
                               kind="checkpoint")],
        "quarantine": [Command("keep the current brain and the sidecars present in quarantine: hard links (a durable "
                               "copy across filesystems), never a move", ("ln", brain, *sidecars, quarantine),
                               files=(quarantine,), kind="link")],
        "swap": [Command("drop the live sidecars (kept in quarantine): a stale WAL would be replayed into the restored "
                         "brain", ("rm", "-f", *sidecars), files=sidecars, kind="remove"),
                 Command("put the staged copy in place of the brain: one atomic rename", ("mv", "-T", staged, brain),
                         files=(brain,), kind="rename")],
    }
    return Plan("restore", {"snapshot": req.snapshot_id, "brain": brain}, steps_of(STEPS, commands, actions))
