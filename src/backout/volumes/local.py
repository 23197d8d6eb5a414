"""A directory on this host as the volume: snapshots are verified private copies (a reflink per file
where the filesystem can) in <state>/volume-snapshots/<id>/, and a restore swaps the directory for
a staged copy of one, the displaced directory kept beside it as quarantine.

Snapshot layout: <id>/data/ (files 0600, folders 0700: they hold conversations and credentials;
the source's modes and owners are recorded and given back on restore) and <id>/manifest.json,
written last: a folder without it is an interrupted snapshot and is not listed.

Restore order, journaled in <state>/journals/volume-restore-<key>.json (re-running the same restore
after a crash finishes it):
  verify  every file of the snapshot against its manifest, and the free space, before anything
          is stopped
  stage   copy the snapshot beside the directory (<parent>/.<name>.restore-<id>.tmp, the same
          filesystem), give it the recorded modes and owners, verify it, note its inode. The
          service still runs meanwhile: the copy is of the snapshot, not of the live data, so the
          downtime is only the renames below, however large the volume
  stop    hooks.stop_service()
  swap    renameat2(RENAME_EXCHANGE) of the staged copy and the directory: one atomic step, so
          the path holds the old or the new directory and never neither; then the displaced one
          (now under the staging name) is renamed to <path>.quarantine-<time>. On a filesystem
          without RENAME_EXCHANGE: directory -> quarantine, then staged -> directory; a crash
          between the two leaves no directory at the path until the restore is re-run (the
          inodes in the journal tell which folder is which, so every rename is done once).
  record  quarantine.json in the quarantine folder (nothing in quarantine is ever deleted)
  start   hooks.start_service()
The journal and the fault points name the steps `volume-stage`, `volume-stop` (run on every run, a
resumed one too), `volume-swap` and `volume-record`.
A mount point (a bind-mounted volume) cannot be renamed: then the same happens to each top-level
entry inside it, with the staging and quarantine folders inside the mount (`.backout-*`, so every
rename stays on its filesystem); snapshots and swaps leave `.backout-*` entries alone. The old
entries that the snapshot lacks (a stale -wal beside the brain) are moved out first, so a
restored brain never sits beside a sidecar of the displaced one.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from backout.config import VolumeSettings
from backout.errors import EXIT_ENVIRONMENT, EXIT_REFUSED, EXIT_USAGE
from backout.fsutil import atomic_write_json, describe_os_error, ensure_private_dir, free_bytes, fsync_dir
from backout.journal import Journal, fault_point
from backout.commands import Command
from backout.plan import Plan, Step, steps_of
from backout.volumes.base import Hooks, VolumeError, VolumeProvider, VolumeRestore, VolumeSnapshot, run_restore
from backout.volumes.tree import (Entry, SourceChanged, apply_owners, can_reflink, copy_tree, exchange,
                                  file_bytes, is_mount_point, scan_tree, verify_tree)

__all__ = ["LocalVolume"]

FORMAT = "backout-volume-snapshot/1"
INTERNAL = ".backout-"  # prefix of backout's own folders inside a mounted volume
_ID = re.compile(r"^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{6}$")
_STEPS = {  # the restore's journaled steps (`volume-<step>` in its journal and its fault points)
    "stage": "Copy the snapshot beside the directory, with the recorded modes and owners; verify the copy",
    "swap": "Put the staged copy in place of the directory, the displaced data into quarantine",
    "record": "Say in the quarantine what it holds, for people and for salvage",
}
_STEP = "volume-"  # the prefix of the restore's step names
_log = logging.getLogger(__name__)


def _internal(name: str) -> bool:
    return name.startswith(INTERNAL)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _ino(path: Path) -> int | None:
    try:
        return os.lstat(path).st_ino
    except FileNotFoundError:
        return None


class LocalVolume(VolumeProvider):
    """A directory (or bind-mounted volume) on this host that holds the brain."""

    name = "local"

    def __init__(self, settings: VolumeSettings, deployment: str, state_dir: Path,
                 progress: Callable[[str], None] | None = None) -> None:
        if settings.path is None:
            raise VolumeError("volume provider 'local' needs `path` (the directory holding the brain)", EXIT_USAGE)
        self.settings = settings
        self.path = Path(os.path.abspath(settings.path))
        self.deployment = deployment
        self.state_dir = Path(os.path.abspath(state_dir))
        self.root = self.state_dir / "volume-snapshots"
        self.progress = progress or _log.info

    # -- facts and listing ---------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """The directory: path, whether it exists and is a mount point, bytes in it, free bytes there."""
        exists = self.path.is_dir()
        size = file_bytes(scan_tree(self.path, _internal)[0]) if exists else None
        return {"id": str(self.path), "provider": self.name, "path": str(self.path), "exists": exists,
                "mount_point": is_mount_point(self.path), "size_bytes": size,
                "free_bytes": free_bytes(self.path) if exists else None}

    def snapshot_dir(self, snapshot_id: str) -> Path:
        """Folder of one snapshot (VolumeError for anything that is not one of our ids)."""
        if not _ID.match(snapshot_id):
            raise VolumeError(f"{snapshot_id!r} is not a local volume snapshot id (they look like "
                              "20261126T221530Z-a1b2c3); see `backout volume list`", EXIT_USAGE)
        return self.root / snapshot_id

    def manifest(self, snapshot_id: str) -> dict[str, Any]:
        """A snapshot's manifest; VolumeError (usage) when there is no such snapshot."""
        path = self.snapshot_dir(snapshot_id) / "manifest.json"
        try:
            data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise VolumeError(f"no local volume snapshot {snapshot_id} in {self.root}; see `backout volume list`",
                              EXIT_USAGE) from None
        except ValueError:
            raise VolumeError(f"manifest {path} is corrupt; this snapshot cannot be used", EXIT_REFUSED) from None
        return data

    def snapshots(self, deployment: str) -> list[VolumeSnapshot]:
        """The deployment's complete snapshots (those with a manifest), newest first."""
        found = []
        for folder in self.root.glob("*/manifest.json") if self.root.is_dir() else []:
            try:
                data = self.manifest(folder.parent.name)
            except VolumeError:
                continue
            if data.get("tags", {}).get("deployment") == deployment:
                found.append(_to_snapshot(data))
        return sorted(found, key=lambda s: (s.created_at, s.id), reverse=True)

    # -- snapshot ------------------------------------------------------------------------------

    def snapshot(self, tags: dict[str, str]) -> VolumeSnapshot:
        """Copy the directory into a new snapshot, verify the copy, write the manifest last."""
        if not self.path.is_dir():
            raise VolumeError(f"the volume directory {self.path} does not exist; check `path` in "
                              f"[deployments.{self.deployment}.volume]", EXIT_USAGE)
        started, snapshot_id = time.monotonic(), _new_id()
        folder = self.snapshot_dir(snapshot_id)
        entries, skipped = scan_tree(self.path, _internal)
        ensure_private_dir(self.root)
        ensure_private_dir(folder)
        self._check_space(self.path, entries, folder, "snapshot")
        self.progress(f"snapshot {snapshot_id}: copying {file_bytes(entries) // 2**20} MiB from {self.path}")
        try:
            copied = copy_tree(self.path, folder / "data", entries)
        except SourceChanged as exc:
            shutil.rmtree(folder, ignore_errors=True)
            raise VolumeError(f"snapshot of {self.path} failed: {exc.strerror}; drain the service (or checkpoint "
                              f"its WAL with writers stopped) before a volume snapshot; the partial snapshot "
                              f"{folder} was removed", EXIT_REFUSED) from None
        except OSError as exc:
            shutil.rmtree(folder, ignore_errors=True)  # our partial copy, never a snapshot: no manifest yet
            raise VolumeError(f"snapshot of {self.path} failed: {describe_os_error(exc, folder)}; the partial "
                              f"snapshot {folder} was removed", EXIT_ENVIRONMENT) from None
        manifest = self._manifest(snapshot_id, {"deployment": self.deployment, **tags}, copied, skipped,
                                  time.monotonic() - started)
        atomic_write_json(folder / "manifest.json", manifest)  # the commit point
        fsync_dir(self.root)
        return _to_snapshot(manifest)

    def _check_space(self, source: Path, entries: list[Entry], folder: Path, what: str) -> None:
        """Refuse before copying when the copy cannot fit (a reflinked copy needs next to nothing)."""
        need = file_bytes(entries)
        sample = next((source / e.path for e in entries if e.kind == "file" and e.size), None)
        if need == 0 or can_reflink(sample, folder):
            return
        free = free_bytes(folder)
        if free < need + 2**20:
            if what == "snapshot":
                shutil.rmtree(folder, ignore_errors=True)  # the empty folder just made
            raise VolumeError(f"not enough space for the {what}: {need // 2**20} MiB needed, {free // 2**20} MiB "
                              f"free in {folder}; free space there first", EXIT_ENVIRONMENT)

    def _manifest(self, snapshot_id: str, tags: dict[str, str], entries: list[Entry], skipped: list[str],
                  seconds: float) -> dict[str, Any]:
        methods = sorted({e.method for e in entries if e.method})
        return {"format": FORMAT, "id": snapshot_id, "provider": self.name, "volume": str(self.path),
                "created_at": _now().isoformat(timespec="milliseconds"), "state": "completed", "tags": tags,
                "size_bytes": file_bytes(entries), "method": "+".join(methods) or "none",
                "duration_s": round(seconds, 3), "entries": [e.to_dict() for e in entries], "skipped": skipped}

    def verify(self, snapshot_id: str) -> list[str]:
        """What in a snapshot's data differs from its manifest; [] when it is intact."""
        manifest = self.manifest(snapshot_id)
        entries = [Entry.from_dict(e) for e in manifest["entries"]]
        data = self.snapshot_dir(snapshot_id) / "data"
        return verify_tree(data, [e for e in entries if e.path != "."])

    # -- restore -------------------------------------------------------------------------------

    def _staging(self, snapshot_id: str, contents: bool) -> Path:
        if contents:
            return self.path / f"{INTERNAL}restore-{snapshot_id}.tmp"
        return self.path.with_name(f".{self.path.name}.restore-{snapshot_id}.tmp")

    def _quarantine_for(self, contents: bool, stamp: str) -> Path:
        base = self.path / f"{INTERNAL}quarantine-{stamp}" if contents else \
            self.path.with_name(f"{self.path.name}.quarantine-{stamp}")
        candidate, n = base, 1
        while candidate.exists():  # never mix two displaced volumes
            n += 1
            candidate = base.with_name(f"{base.name}-{n}")
        return candidate

    def plan_restore(self, snapshot_id: str) -> list[Command]:
        """Stage a copy beside the directory, swap it in (the displaced data to quarantine), record; the caller
        stops the service before the swap and starts it after."""
        manifest = self.manifest(snapshot_id)
        return [command for step in self._plan(manifest, is_mount_point(self.path)).steps for command in step.commands]

    def _commands(self, manifest: dict[str, Any], contents: bool) -> dict[str, list[Command]]:
        """Each step's commands; `<time>` is the moment of the swap, which names the quarantine."""
        snapshot_id = manifest["id"]
        data, staged = self.snapshot_dir(snapshot_id) / "data", self._staging(snapshot_id, contents)
        quarantine = self.path / f"{INTERNAL}quarantine-<time>" if contents else \
            self.path.with_name(f"{self.path.name}.quarantine-<time>")
        stage = Command(f"copy snapshot {snapshot_id} (verified against its manifest first) beside the data, a reflink "
                        "per file where the filesystem can, with the recorded modes and owners; verify the copy",
                        ("cp", "-a", "--reflink=auto", f"{data}/.", str(staged)), files=(str(staged),), kind="copy")
        if contents:
            names = sorted({str(e["path"]).split("/", 1)[0] for e in manifest["entries"]} - {"."})
            swap = [Command(f"{self.path} is a mount point: first move the entries the snapshot lacks (a stale -wal "
                            "beside the brain) to quarantine", ("mv", "-t", str(quarantine),
                                                                f"{self.path}/<entries not in the snapshot>"),
                            files=(str(quarantine),), kind="rename")]
            swap += [Command(f"exchange {name} for its staged copy (renameat2), the displaced one into quarantine",
                             ("mv", "--exchange", "-T", str(staged / name), str(self.path / name)),
                             files=(str(self.path / name), str(quarantine / name)), kind="rename") for name in names]
            swap.append(Command("remove the empty staging folder", ("rmdir", str(staged)), kind="remove"))
        else:
            swap = [Command("exchange the staged copy and the directory: one atomic renameat2 (where the filesystem "
                            "cannot: the directory to quarantine first, then the copy in place)",
                            ("mv", "--exchange", "-T", str(staged), str(self.path)), files=(str(self.path),),
                            kind="rename"),
                    Command("the displaced directory to quarantine (kept, never deleted)",
                            ("mv", "-T", str(staged), str(quarantine)), files=(str(quarantine),), kind="rename")]
        record = Command("make the quarantine private and say in it what it holds, for people and for salvage",
                         ("chmod", "700", str(quarantine)), files=(str(quarantine / "quarantine.json"),), kind="write")
        return {"stage": [stage], "swap": swap, "record": [record]}

    def restore(self, snapshot_id: str, hooks: Hooks) -> VolumeRestore:
        """Verify, stage, stop, swap (the displaced directory to quarantine), start; re-run after a crash."""
        manifest = self.manifest(snapshot_id)
        journal = self._journal(snapshot_id)
        try:
            if not journal.done(_STEP + "stage"):
                self._preflight(manifest)
            result = self._run(manifest, journal, hooks)
        except OSError as exc:
            _drop_if_untouched(journal)
            raise VolumeError(f"volume restore stopped: {describe_os_error(exc, self.path)}; re-run the same "
                              "restore to finish it", EXIT_ENVIRONMENT) from None
        except BaseException:
            _drop_if_untouched(journal)
            raise
        journal.finish()
        hooks.progress(f"{self.path} restored from {snapshot_id}; starting the service")
        hooks.start_service()
        return result

    def _journal(self, snapshot_id: str) -> Journal:
        operation = {"kind": "volume-restore", "snapshot": snapshot_id, "path": str(self.path)}
        journal = Journal.for_slot(self.state_dir, "volume-restore", str(self.path), operation)
        journal.rename_steps({step: _STEP + step for step in _STEPS})
        if journal.operation["snapshot"] != snapshot_id:
            raise VolumeError(f"an interrupted restore of {journal.operation['snapshot']} over {self.path} is "
                              f"pending; finish it first (restore {journal.operation['snapshot']} again), "
                              f"journal: {journal.path}", EXIT_REFUSED)
        return journal

    def _preflight(self, manifest: dict[str, Any]) -> None:
        """Refusals before anything is stopped: a snapshot that fails verification, no room to stage it."""
        snapshot_id = manifest["id"]
        problems = self.verify(snapshot_id)
        if problems:
            shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
            raise VolumeError(f"snapshot {snapshot_id} fails verification ({shown}); nothing was stopped or "
                              "changed: choose another snapshot (`backout volume list`)", EXIT_REFUSED)
        entries = [Entry.from_dict(e) for e in manifest["entries"]]
        folder = self.path if is_mount_point(self.path) else self.path.parent
        folder.mkdir(parents=True, exist_ok=True)  # the user's folder: its mode is not ours to change
        self._check_space(self.snapshot_dir(snapshot_id) / "data", entries, folder, "restore")

    def _run(self, manifest: dict[str, Any], journal: Journal, hooks: Hooks) -> VolumeRestore:
        snapshot_id = manifest["id"]
        result = VolumeRestore(snapshot_id, str(self.path), None)
        actions: dict[str, Callable[[], dict[str, Any]]] = {
            "stage": lambda: self._stage(manifest, hooks),
            "swap": lambda: self._swap(snapshot_id, journal),
            "record": lambda: self._record(snapshot_id, journal),
        }
        plan = self._plan(manifest, bool(journal.facts.get("contents", is_mount_point(self.path))), actions)
        plan.steps.insert(1, Step(_STEP + "stop", "Stop the service (every run: a resumed one finds it stopped, or "
                                  "stops it again)", action=lambda: self._stop(snapshot_id, hooks), always=True))
        run_restore(plan, journal, result, _STEP)
        quarantine = journal.facts.get("quarantine")
        result.quarantined_volume = quarantine if quarantine and Path(quarantine).exists() else None
        result.warnings += journal.facts.get("owner_problems", [])
        return result

    def _plan(self, manifest: dict[str, Any], contents: bool,
              actions: dict[str, Callable[[], dict[str, Any]]] | None = None) -> Plan:
        """The journaled steps with their commands; with `actions` (by step), the code that carries each out."""
        return Plan("volume-restore", {"snapshot": manifest["id"], "path": str(self.path)},
                    steps_of(_STEPS, self._commands(manifest, contents), actions, _STEP))

    def _stop(self, snapshot_id: str, hooks: Hooks) -> None:
        hooks.progress(f"stopping the service to put {snapshot_id} in place of {self.path}")
        hooks.stop_service()

    def _stage(self, manifest: dict[str, Any], hooks: Hooks) -> dict[str, Any]:
        """Copy the snapshot beside the directory, with the recorded modes and owners, and verify the copy."""
        contents = is_mount_point(self.path)
        entries = [Entry.from_dict(e) for e in manifest["entries"]]
        staged = self._staging(manifest["id"], contents)
        if staged.exists():
            shutil.rmtree(staged)  # an interrupted staging (not marked done): our own partial copy
        hooks.progress(f"staging {manifest['id']} ({manifest['size_bytes'] // 2**20} MiB) at {staged}")
        try:
            copy_tree(self.snapshot_dir(manifest["id"]) / "data", staged, entries)
            owner_problems = apply_owners(staged, entries, with_root=not contents)
            problems = verify_tree(staged, [e for e in entries if e.path != "."])
        except OSError:
            shutil.rmtree(staged, ignore_errors=True)  # our partial copy (disk full...); the volume is untouched
            raise
        if problems:
            shutil.rmtree(staged, ignore_errors=True)
            raise VolumeError(f"the staged copy of {manifest['id']} does not match its manifest ({problems[0]}); "
                              "disk trouble? nothing was swapped", EXIT_ENVIRONMENT)
        fsync_dir(staged.parent)
        if contents:
            inodes = {name: _ino(staged / name) for name in sorted(os.listdir(staged))}
        else:
            inodes = {".": _ino(staged)}
        return {"contents": contents, "staged": str(staged), "inodes": inodes, "owner_problems": owner_problems}

    def _swap(self, snapshot_id: str, journal: Journal) -> dict[str, Any]:
        """Put the staged copy in place and the displaced data in quarantine (each rename done once)."""
        contents = bool(journal.facts["contents"])
        staged = Path(journal.facts["staged"])
        if "quarantine" not in journal.facts:
            stamp = _now().strftime("%Y%m%dT%H%M%SZ")
            journal.remember(quarantine=str(self._quarantine_for(contents, stamp)))
        quarantine = Path(journal.facts["quarantine"])
        inodes: dict[str, int] = journal.facts["inodes"]
        if not contents:
            _swap_entry(self.path, staged, quarantine, inodes["."])
            fsync_dir(self.path.parent)
            return {}
        ensure_private_dir(quarantine)
        old_only = [n for n in sorted(os.listdir(self.path)) if not _internal(n) and n not in inodes]
        for name in old_only:  # first: a stale -wal must never sit beside the restored brain
            _swap_entry(self.path / name, staged / name, quarantine / name, None)
        for name, ino in inodes.items():
            _swap_entry(self.path / name, staged / name, quarantine / name, ino)
        if staged.exists():
            os.rmdir(staged)  # empty now: every staged entry was moved in
        for folder in (quarantine, self.path):
            fsync_dir(folder)
        return {}

    def _record(self, snapshot_id: str, journal: Journal) -> dict[str, Any]:
        """Say in the quarantine what it is, for people and for salvage."""
        quarantine = Path(journal.facts["quarantine"])
        if quarantine.exists():
            mode = journal.facts.get("quarantine_mode", quarantine.stat().st_mode & 0o7777)
            journal.remember(quarantine_mode=mode)  # the displaced directory's own mode, before the chmod
            os.chmod(quarantine, 0o700)  # it holds the displaced brain: private, like every backout folder
            atomic_write_json(quarantine / "quarantine.json", {
                "displaced_volume": str(self.path), "deployment": self.deployment, "provider": self.name,
                "replaced_by_snapshot": snapshot_id, "contents_of_mount_point": bool(journal.facts["contents"]),
                **({} if journal.facts["contents"] else {"mode_before": oct(mode)}),
                "at": datetime.now().astimezone().isoformat(timespec="seconds"),
                "note": "backout never deletes quarantine; salvage reads the bad window's rows from here",
            })
        return {}


def _move(src: Path, dst: Path) -> None:
    """Rename, refusing to replace anything (a quarantine is never overwritten)."""
    if os.path.lexists(dst):
        raise VolumeError(f"{dst} exists already; inspect it before re-running the restore", EXIT_REFUSED)
    os.rename(src, dst)


def _swap_entry(live: Path, staged: Path, kept: Path, staged_ino: int | None) -> None:
    """Put the staged entry at `live` and the displaced one at `kept`; the inode says what is done already."""
    if staged_ino is not None and _ino(live) == staged_ino:  # the new one is in place
        if os.path.lexists(staged):
            _move(staged, kept)  # the displaced one, left under the staging name by an exchange
        return
    if staged_ino is None:  # only in the old data
        if os.path.lexists(live):
            _move(live, kept)
        return
    if not os.path.lexists(staged):
        raise VolumeError(f"the staged copy {staged} is gone and {live} is not the restored one; move the "
                          "restore journal aside and restore again", EXIT_REFUSED)
    if os.path.lexists(live):
        if os.path.lexists(kept):
            raise VolumeError(f"{kept} exists already; inspect it before re-running the restore", EXIT_REFUSED)
        if exchange(staged, live):
            fault_point("inside:volume-swap")
            _move(staged, kept)
            return
        _move(live, kept)
        fault_point("inside:volume-swap")
    os.rename(staged, live)


def _drop_if_untouched(journal: Journal) -> None:
    """Refused or failed before changing anything: leave no pending restore behind."""
    if not journal.data["done"]:
        journal.finish()


def _new_id() -> str:
    return f"{_now().strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(3)}"


def _to_snapshot(manifest: dict[str, Any]) -> VolumeSnapshot:
    return VolumeSnapshot(id=manifest["id"], provider="local", volume=manifest["volume"],
                          created_at=manifest["created_at"], state=manifest.get("state", "completed"),
                          tags=dict(manifest.get("tags", {})), size_bytes=manifest.get("size_bytes"))

