"""GCP persistent disks as the brain's data volume: labelled snapshots, and a restore that swaps disks.

Talks to the Compute Engine REST API through google-cloud-compute with the library's standard
credentials (Application Default Credentials: GOOGLE_APPLICATION_CREDENTIALS, the metadata server,
`gcloud auth application-default login`), never with credentials from backout.toml. `[volume]
endpoint_url` points it at another endpoint; a plain-http one on 127.0.0.1 or localhost (a replay
server or an emulator, never Google) is spoken to with anonymous credentials.

A restore creates a new disk from the snapshot in the old disk's zone, stops the service, detaches
the old disk, labels it `backout-quarantine` (it is never deleted) and attaches the new disk under the
same device name. If that attach fails, the old disk goes back and the service is started again. The
disk now in place is remembered in the deployment's state folder, so later snapshots take the new disk.

The restore is journaled in <state>/journals/gcp-restore-<key>.json: the new disk's name (fixed once,
not from the clock on each run), the old disk and its device, and the steps done (gcp-create,
gcp-detach, gcp-label, gcp-attach; gcp-stop, between the first two, runs every time). Re-running the
same restore after a crash reuses the disk it made, skips the detach when the old disk is no longer
attached, labels the old disk once, and skips the attach when the new disk is already at the device;
the journal goes away when the restore ends.
"""

from __future__ import annotations

import json
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, NoReturn
from urllib.parse import urlsplit

import requests
from google.api_core import exceptions as gexc
from google.auth import exceptions as auth_exc
from google.auth.credentials import AnonymousCredentials, Credentials
from google.cloud import compute_v1

from backout.config import VolumeSettings
from backout.errors import EXIT_REFUSED, EXIT_USAGE
from backout.fsutil import atomic_write_json, ensure_private_dir
from backout.history import deployment_state
from backout.journal import Journal, fault_point
from backout.commands import Command
from backout.plan import Plan, Step, execute, failed_step, steps_of
from backout.volumes.base import Hooks, VolumeError, VolumeProvider, VolumeRestore, VolumeSnapshot

__all__ = ["GcpClients", "GcpVolume", "is_local_endpoint", "label_key", "label_value", "labels_for",
           "resource_name"]

GIB = 1024**3
_DONE = compute_v1.Operation.Status.DONE
_STATES = {"READY": "completed", "CREATING": "pending", "UPLOADING": "pending", "FAILED": "error",
           "DELETING": "error"}
_PERMISSION = re.compile(r"compute\.[A-Za-z]+\.[A-Za-z]+")
_SECRETS = re.compile(r"(ya29\.[\w.-]+|Bearer\s+\S+|access_token=[^&\s]+)")
_RESOURCE_PATH = re.compile(r"\S*projects/\S+")
_ZONE_WORD = re.compile(r"\bzones?\b", re.IGNORECASE)
_RESTORED_SUFFIX = re.compile(r"-r\d{8}-\d{6}$")
_STATE_FILE = "volume-gcp.json"
_LOCAL_HOSTS = {"127.0.0.1", "localhost"}


# -- names and labels ---------------------------------------------------------------------------


def label_value(text: str) -> str:
    """A GCP label value: lowercase, [a-z0-9_-] only (anything else becomes '-'), at most 63 characters."""
    return re.sub(r"[^a-z0-9_-]", "-", text.lower())[:63]


def label_key(tag: str) -> str:
    """The label key for a tag: `backout-<tag>`, sanitised like a value (it starts with a letter)."""
    return label_value(f"backout-{tag.replace('_', '-')}")


def labels_for(deployment: str, tags: dict[str, str]) -> dict[str, str]:
    """A snapshot's labels: `backout-<tag>` for each tag, and always `backout-deployment`."""
    labels = {label_key(key): label_value(value) for key, value in tags.items()}
    labels[label_key("deployment")] = label_value(deployment)
    return labels


def resource_name(prefix: str, suffix: str) -> str:
    """A valid GCP resource name `<prefix>-<suffix>` ([a-z]([-a-z0-9]*[a-z0-9])?, at most 63 characters)."""
    clean = re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", prefix.lower())).strip("-") or "backout"
    if not clean[0].isalpha():
        clean = f"b-{clean}"
    return f"{clean[:62 - len(suffix)].rstrip('-')}-{suffix}"


def _last(link: str) -> str:
    """The last segment of a resource URL (`.../zones/us-central1-a` -> `us-central1-a`)."""
    return link.rstrip("/").rsplit("/", 1)[-1]


def _relative(link: str) -> str:
    """A resource URL from `projects/` on, to compare full and partial links."""
    return link[link.find("projects/"):] if "projects/" in link else link


def _utc(stamp: str) -> str:
    """A Compute Engine timestamp (RFC 3339 with an offset) as ISO 8601 in UTC."""
    try:
        return datetime.fromisoformat(stamp).astimezone(timezone.utc).isoformat()
    except ValueError:
        return stamp


def _redact(text: str) -> str:
    """Drop anything that looks like a token (the API never echoes one; this is a belt and braces)."""
    return _SECRETS.sub("[redacted]", text)


# -- errors -------------------------------------------------------------------------------------


def _server_message(exc: gexc.GoogleAPICallError) -> str:
    """What the API said, without the request line the client prefixes."""
    for item in exc.errors or []:
        if isinstance(item, dict) and item.get("message"):
            return _redact(str(item["message"]))
    return _redact(re.sub(r"^[A-Z]+ \S+: ", "", str(exc.message)))


def _is_permission(exc: gexc.GoogleAPICallError, message: str) -> bool:
    reasons = {str(e.get("reason", "")) for e in exc.errors or [] if isinstance(e, dict)}
    if reasons & {"rateLimitExceeded", "userRateLimitExceeded", "quotaExceeded"}:
        return False
    return bool(_PERMISSION.search(message)) or "permission" in message.lower() or "forbidden" in reasons


def _about_zone(message: str) -> bool:
    """Does a 400 complain about a zone (not merely name a resource path that has /zones/ in it)?"""
    return bool(_ZONE_WORD.search(_RESOURCE_PATH.sub("", message)))


def api_error(exc: gexc.GoogleAPICallError, what: str, permission: str, zone: str) -> VolumeError:
    """A VolumeError that says what failed and what to do: missing permission, not found, wrong zone."""
    message = _server_message(exc).rstrip(".")
    if exc.code == 403 and _is_permission(exc, message):
        found = _PERMISSION.search(message)
        return VolumeError(f"missing permission: {found.group(0) if found else permission} (the service "
                           f"account backout runs as needs it) to {what}: {message}")
    if exc.code == 401:
        return VolumeError(f"Google credentials were refused while trying to {what}: {message}; check "
                           "GOOGLE_APPLICATION_CREDENTIALS or run `gcloud auth application-default login`")
    if exc.code == 404:
        return VolumeError(f"not found: {what}: {message}; check the [volume] section of backout.toml",
                           EXIT_USAGE)
    if exc.code == 400 and _about_zone(message):
        return VolumeError(f"wrong zone: cannot {what}: {message}; the disk, its instance and a restored "
                           f"disk must all be in one zone (volume zone = {zone!r})", EXIT_USAGE)
    return VolumeError(f"GCP error {exc.code} while trying to {what}: {message}")


def operation_error(op: compute_v1.Operation, what: str, permission: str, zone: str) -> VolumeError:
    """The error a finished operation reports, mapped like an API error."""
    errors = [{"message": e.message, "reason": e.code} for e in op.error.errors]
    text = "; ".join(f"{e.code}: {e.message}" for e in op.error.errors)
    exc = gexc.from_http_status(op.http_error_status_code or 500, text, errors=errors)  # type: ignore[no-untyped-call]
    return api_error(exc, what, permission, zone)


# -- clients ------------------------------------------------------------------------------------


def is_local_endpoint(endpoint: str | None) -> bool:
    """A plain-http endpoint on this host (a replay server or an emulator): never Google's API."""
    if not endpoint:
        return False
    try:
        url = urlsplit(endpoint)
        return url.scheme == "http" and url.hostname in _LOCAL_HOSTS
    except ValueError:
        return False


@dataclass
class GcpClients:
    """The Compute Engine clients a GcpVolume uses (injectable to talk to another endpoint)."""

    disks: compute_v1.DisksClient
    instances: compute_v1.InstancesClient
    snapshots: compute_v1.SnapshotsClient
    zone_operations: compute_v1.ZoneOperationsClient
    global_operations: compute_v1.GlobalOperationsClient

    @classmethod
    def connect(cls, endpoint: str | None = None, credentials: Credentials | None = None) -> "GcpClients":
        """REST clients for the real API with ADC, or for `endpoint` (e.g. a replay server on 127.0.0.1)."""
        if credentials is None and is_local_endpoint(endpoint):
            # http://127.0.0.1 or http://localhost is a local replay server or emulator, never Google:
            # anonymous credentials, so no ADC lookup and no Google token is ever sent to it
            credentials = AnonymousCredentials()  # type: ignore[no-untyped-call]
        options = {"api_endpoint": endpoint} if endpoint else None
        kwargs: dict[str, Any] = {"transport": "rest", "client_options": options, "credentials": credentials}
        try:
            return cls(compute_v1.DisksClient(**kwargs), compute_v1.InstancesClient(**kwargs),
                       compute_v1.SnapshotsClient(**kwargs), compute_v1.ZoneOperationsClient(**kwargs),
                       compute_v1.GlobalOperationsClient(**kwargs))
        except auth_exc.DefaultCredentialsError:
            raise VolumeError("no Google credentials: set GOOGLE_APPLICATION_CREDENTIALS to a service account "
                              "key file, run on a VM with a service account, or run `gcloud auth "
                              "application-default login`") from None


# -- the provider -------------------------------------------------------------------------------


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


def _no_progress(message: str) -> None:
    return None


class GcpVolume(VolumeProvider):
    """A zonal GCP persistent disk attached to one instance, holding the deployment's brain."""

    name = "gcp"

    def __init__(self, settings: VolumeSettings, deployment: str, state_dir: Path, *,
                 endpoint: str | None = None, credentials: Credentials | None = None,
                 clients: GcpClients | None = None, progress: Callable[[str], None] = _no_progress,
                 now: Callable[[], datetime] = _utc_now, poll_seconds: float = 5.0) -> None:
        assert settings.project and settings.zone and settings.disk and settings.instance
        self.settings = settings
        self.deployment = deployment
        self.state_dir = state_dir
        self.project, self.zone, self.instance = settings.project, settings.zone, settings.instance
        self.progress = progress
        self.now = now
        self.poll_seconds = poll_seconds
        self._endpoint, self._credentials, self._clients = endpoint, credentials, clients

    # -- plumbing

    @property
    def clients(self) -> GcpClients:
        """The API clients, made on first use (so a plan needs no credentials until it calls the API)."""
        if self._clients is None:
            self._clients = GcpClients.connect(self._endpoint, self._credentials)
        return self._clients

    @contextmanager
    def _api(self, what: str, permission: str) -> Iterator[None]:
        """Turn API, transport and credential failures into VolumeErrors that say what to do."""
        try:
            yield
        except gexc.GoogleAPICallError as exc:
            raise api_error(exc, what, permission, self.zone) from None
        except auth_exc.GoogleAuthError as exc:
            raise VolumeError(f"Google credentials failed while trying to {what}: {_redact(str(exc))}") from None
        except requests.RequestException as exc:
            raise VolumeError(f"cannot reach the Compute Engine API to {what}: {type(exc).__name__}") from None

    def _deadline(self) -> float:
        return time.monotonic() + self.settings.timeout.total_seconds()

    def _timeout_text(self) -> str:
        return f"{self.settings.timeout.total_seconds():g}s"

    def _stamp(self) -> str:
        return self.now().astimezone(timezone.utc).strftime("%Y%m%d-%H%M%S")

    @property
    def disk(self) -> str:
        """The disk in place now: the configured one, or the one a restore put in its place."""
        state = self._state()
        if state.get("configured") == self.settings.disk and state.get("zone") == self.zone:
            return str(state["disk"])
        assert self.settings.disk is not None
        return self.settings.disk

    def _state_path(self) -> Path:
        return deployment_state(self.state_dir, self.deployment) / _STATE_FILE

    def _state(self) -> dict[str, Any]:
        try:
            data = json.loads(self._state_path().read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _remember(self, new_disk: str, old_disk: str, snapshot_id: str) -> None:
        """Record which disk is in place now (0600, in the deployment's state folder)."""
        path = self._state_path()
        ensure_private_dir(path.parent)
        atomic_write_json(path, {"configured": self.settings.disk, "zone": self.zone, "disk": new_disk,
                                 "replaced": old_disk, "snapshot": snapshot_id, "at": self.now().isoformat()})

    # -- operations

    def _wait(self, op: compute_v1.Operation, what: str, permission: str, deadline: float) -> compute_v1.Operation:
        """Wait until a zonal or global operation is DONE; VolumeError on its error or at the deadline."""
        while op.status != _DONE:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise VolumeError(f"{what}: operation {op.name} is still pending ({op.status.name}, "
                                  f"{op.progress}%) after {self._timeout_text()}; nothing was deleted and it "
                                  "goes on in GCP; raise [volume] timeout if this is normal for the disk's size")
            self.progress(f"{what}: {op.status.name.lower()} {op.progress}%")
            op = self._wait_once(op, what, permission, remaining)
        if op.error.errors:
            raise operation_error(op, what, permission, self.zone)
        return op

    def _wait_once(self, op: compute_v1.Operation, what: str, permission: str, remaining: float) -> compute_v1.Operation:
        """One `operations.wait` call (the API answers when the operation is done, or after ~2 minutes)."""
        timeout = min(remaining, 150.0)
        scope = "zoneOperations" if op.zone else "globalOperations"
        with self._api(f"wait for {what}", f"compute.{scope}.get"):
            try:
                if op.zone:
                    return self.clients.zone_operations.wait(project=self.project, zone=_last(op.zone),
                                                             operation=op.name, timeout=timeout)
                return self.clients.global_operations.wait(project=self.project, operation=op.name,
                                                           timeout=timeout)
            except requests.Timeout:
                return op  # our own request timed out: the deadline check decides

    # -- reads

    def _get_disk(self, name: str) -> compute_v1.Disk:
        """The disk in the configured zone; a clear 'wrong zone' when it lives in another one."""
        with self._api(f"get disk {name} in zone {self.zone}", "compute.disks.get"):
            try:
                return self.clients.disks.get(project=self.project, zone=self.zone, disk=name)
            except gexc.NotFound:
                self._raise_if_elsewhere("disk", name)
                raise

    def _get_instance(self) -> compute_v1.Instance:
        """The instance the disk is attached to, in the configured zone."""
        with self._api(f"get instance {self.instance} in zone {self.zone}", "compute.instances.get"):
            try:
                return self.clients.instances.get(project=self.project, zone=self.zone, instance=self.instance)
            except gexc.NotFound:
                self._raise_if_elsewhere("instance", self.instance)
                raise

    def _raise_if_elsewhere(self, kind: str, name: str) -> None:
        """After a 404: when a disk or instance of that name exists in another zone, say so."""
        client: Any = self.clients.disks if kind == "disk" else self.clients.instances
        request_type: Any = (compute_v1.AggregatedListDisksRequest if kind == "disk"
                             else compute_v1.AggregatedListInstancesRequest)
        try:
            with self._api(f"look for {kind} {name} in other zones", f"compute.{kind}s.list"):
                pages = client.aggregated_list(request=request_type(project=self.project,
                                                                    filter=f'name = "{name}"'))
                zones = [_last(scope) for scope, listed in pages
                         if any(item.name == name for item in getattr(listed, f"{kind}s"))]
        except VolumeError:
            return  # the lookup is a courtesy: the original "not found" stands
        if zones:
            raise VolumeError(f"wrong zone: {kind} {name} is in zone {', '.join(zones)}, not {self.zone}; set "
                              f"[volume] zone = \"{zones[0]}\" in backout.toml", EXIT_USAGE)

    def _get_snapshot(self, name: str) -> compute_v1.Snapshot:
        with self._api(f"get snapshot {name}", "compute.snapshots.get"):
            return self.clients.snapshots.get(project=self.project, snapshot=name)

    def _facts(self) -> tuple[compute_v1.Disk, compute_v1.Instance, compute_v1.AttachedDisk | None]:
        """The disk, its instance, and the disk's attachment on that instance (None when not attached)."""
        disk = self._get_disk(self.disk)
        instance = self._get_instance()
        link = _relative(disk.self_link)
        attached = next((d for d in instance.disks if _relative(d.source) == link), None)
        return disk, instance, attached

    def describe(self) -> dict[str, Any]:
        """The disk (name, zone, size, status, users) and its attachment on the instance (device name)."""
        disk, instance, attached = self._facts()
        return {"provider": self.name, "id": disk.name, "project": self.project, "zone": _last(disk.zone),
                "disk": disk.name, "size_gb": disk.size_gb, "status": disk.status, "type": _last(disk.type_),
                "users": [_last(u) for u in disk.users], "instance": instance.name,
                "device_name": attached.device_name if attached else None, "attached": attached is not None,
                "mode": attached.mode if attached else None, "labels": dict(disk.labels)}

    # -- snapshots

    def snapshot(self, tags: dict[str, str]) -> VolumeSnapshot:
        """Snapshot the disk with backout-* labels; wait until READY (VolumeError at the timeout)."""
        deadline = self._deadline()
        disk = self.disk
        tags = {**tags, "deployment": self.deployment}
        name = resource_name(f"backout-{self.deployment}", self._stamp())
        body = compute_v1.Snapshot(
            name=name, source_disk=f"projects/{self.project}/zones/{self.zone}/disks/{disk}",
            labels=labels_for(self.deployment, tags),
            description=json.dumps({"backout": tags}, sort_keys=True, separators=(",", ":")))
        what = f"snapshot disk {disk} as {name}"
        with self._api(what, "compute.snapshots.create"):
            op = self.clients.snapshots.insert_unary(project=self.project, snapshot_resource=body)
        self._wait(op, what, "compute.snapshots.create", deadline)
        return self._to_snapshot(self._until_ready(name, deadline))

    def _until_ready(self, name: str, deadline: float) -> compute_v1.Snapshot:
        """Poll the snapshot until READY; VolumeError when it failed or is still pending at the deadline."""
        started = time.monotonic()
        while True:
            snap = self._get_snapshot(name)
            if snap.status == "READY":
                self.progress(f"snapshot {name}: ready")
                return snap
            if _STATES.get(snap.status) == "error":
                raise VolumeError(f"snapshot {name} is {snap.status}: GCP could not create it")
            if time.monotonic() >= deadline:
                raise VolumeError(f"snapshot {name} is still pending ({snap.status}) after {self._timeout_text()}: "
                                  "it was not deleted and goes on in GCP; check it with `gcloud compute "
                                  f"snapshots describe {name} --project={self.project}` and raise [volume] "
                                  "timeout if snapshots of this disk take longer")
            self.progress(f"snapshot {name}: {snap.status.lower()} ({time.monotonic() - started:.0f}s)")
            time.sleep(max(0.0, min(self.poll_seconds, deadline - time.monotonic())))

    def _to_snapshot(self, snap: compute_v1.Snapshot) -> VolumeSnapshot:
        return VolumeSnapshot(id=snap.name, provider=self.name, volume=_last(snap.source_disk),
                              created_at=_utc(snap.creation_timestamp), state=_STATES.get(snap.status, "pending"),
                              tags=_tags_of(snap), size_bytes=snap.disk_size_gb * GIB if snap.disk_size_gb else None)

    def snapshots(self, deployment: str) -> list[VolumeSnapshot]:
        """The deployment's snapshots (by the backout-deployment label), newest first."""
        query = f'labels.{label_key("deployment")} = "{label_value(deployment)}"'
        request = compute_v1.ListSnapshotsRequest(project=self.project, filter=query)
        with self._api(f"list the snapshots of {deployment}", "compute.snapshots.list"):
            found = [self._to_snapshot(s) for s in self.clients.snapshots.list(request=request)]
        return sorted(found, key=lambda s: s.created_at, reverse=True)

    # -- restore

    def _new_disk_name(self, stamp: str | None = None) -> str:
        return resource_name(_RESTORED_SUFFIX.sub("", self.disk), f"r{stamp or self._stamp()}")

    def plan_restore(self, snapshot_id: str) -> list[Command]:
        """The restore as gcloud commands with the real names (the disk's type, size, zone and device); the new
        disk's name and the quarantine label carry the time of the restore, `<time>` here. The caller stops the
        service before the detach and starts it after."""
        disk, _, attached = self._facts()
        device = attached.device_name if attached else self.settings.device_name or "?"
        return self._commands(snapshot_id, disk, device)

    def _commands(self, snapshot_id: str, disk: compute_v1.Disk, device: str) -> list[Command]:
        return restore_commands(self.project, _last(disk.zone), self.instance, disk, snapshot_id,
                                self._new_disk_name("<time>"), device)

    def restore(self, snapshot_id: str, hooks: Hooks) -> VolumeRestore:
        """Swap in a disk made from the snapshot; the old disk is labelled quarantine, never deleted."""
        report, self.progress = self.progress, hooks.progress
        try:
            return self._restore(snapshot_id, hooks)
        finally:
            self.progress = report

    def _journal(self, snapshot_id: str) -> Journal:
        """The restore's journal in the state folder: one per disk slot (project, zone, instance, disk)."""
        operation = {"kind": "gcp-restore", "snapshot": snapshot_id, "project": self.project, "zone": self.zone,
                     "instance": self.instance, "disk": self.settings.disk}
        journal = Journal.for_slot(self.state_dir, "gcp-restore",
                                   f"{self.project}:{self.zone}:{self.instance}:{self.settings.disk}", operation)
        journal.rename_steps({step: _STEP + step for step in _STEPS})
        if journal.operation.get("snapshot") != snapshot_id:
            raise VolumeError(f"an interrupted restore of {journal.operation.get('snapshot')} on instance "
                              f"{self.instance} is pending; run it again to finish it first, journal: {journal.path}",
                              EXIT_REFUSED)
        return journal

    def _restore(self, snapshot_id: str, hooks: Hooks) -> VolumeRestore:
        journal = self._journal(snapshot_id)
        resumed = "new" in journal.facts  # an earlier run fixed the names and may have changed things
        try:
            checked = None if journal.done(_STEP + "create") else self._check(snapshot_id, journal)
            plan = self._plan(snapshot_id, journal, hooks, resumed, checked)
            done = self._run(snapshot_id, journal, plan, hooks)
        except BaseException:
            if not journal.data["done"]:
                journal.finish()  # refused or failed before anything changed
            raise
        self._remember(done.new_volume, str(done.quarantined_volume), snapshot_id)
        journal.finish()
        hooks.start_service()
        done.steps.append("service started")
        return done

    def _check(self, snapshot_id: str, journal: Journal) -> tuple[compute_v1.Snapshot, compute_v1.Disk]:
        """Refusals before anything changes; fixes the new disk's name once (a re-run keeps it)."""
        snap = self._get_snapshot(snapshot_id)
        if snap.status != "READY":
            raise VolumeError(f"snapshot {snapshot_id} is {snap.status}, not READY: nothing was changed", EXIT_REFUSED)
        old, _, attached = self._facts()
        attached = self._usable_attachment(old, attached)
        fixed = {} if "new" in journal.facts else {"new": self._new_disk_name(), "stamp": self._stamp()}
        planned = {} if "commands" in journal.facts else {  # what plan_restore() shows: noted as each step runs
            "commands": [c.to_dict() for c in self._commands(snapshot_id, old, attached.device_name)]}
        journal.remember(old=old.name, old_link=old.self_link, device=attached.device_name,
                         mode=attached.mode or "READ_WRITE", **fixed, **planned)
        return snap, old

    def _usable_attachment(self, disk: compute_v1.Disk, attached: compute_v1.AttachedDisk | None) -> compute_v1.AttachedDisk:
        """Refuse before anything changes when the disk is not attached to the instance, or is its boot disk."""
        if attached is None:
            raise VolumeError(f"disk {disk.name} is not attached to instance {self.instance} (users: "
                              f"{', '.join(_last(u) for u in disk.users) or 'none'}): nothing was changed",
                              EXIT_REFUSED)
        if attached.boot:
            raise VolumeError(f"disk {disk.name} is the boot disk of {self.instance}: put the brain on a data "
                              "disk to restore it by volume", EXIT_REFUSED)
        return attached

    def _warnings(self, device: str) -> list[str]:
        warm = ("volume initialize = true: read the brain once after the restore, before traffic returns"
                if self.settings.initialize else "volume initialize = false: nothing warms it, expect slow first requests")
        warnings = ["a persistent disk restored from a snapshot fetches its blocks from the snapshot on first "
                    f"read, so the first reads of the brain are slow until every block was read once; {warm}"]
        if self.settings.device_name and device != self.settings.device_name:
            warnings.append(f"the disk is attached as device {device!r}, not {self.settings.device_name!r} "
                            "as backout.toml says: the new disk gets the device name actually in use")
        return warnings

    def _create_disk(self, name: str, snap: compute_v1.Snapshot, old: compute_v1.Disk, look_first: bool) -> str:
        """Create the new disk from the snapshot (same zone, type, size); return its link. After a crash
        (`look_first`) a disk of that name made by the earlier run is reused once READY."""
        if look_first and (made := self._find_disk(name)) is not None:
            self.progress(f"disk {name} was made by an interrupted run of this restore: reusing it")
            return self._until_disk_ready(made).self_link or f"projects/{self.project}/zones/{self.zone}/disks/{name}"
        body = compute_v1.Disk(name=name, source_snapshot=snap.self_link or f"global/snapshots/{snap.name}",
                               type_=old.type_, size_gb=max(old.size_gb, snap.disk_size_gb),
                               labels={label_key("deployment"): label_value(self.deployment),
                                       label_key("restored-from"): label_value(snap.name)})
        what = f"create disk {name} from snapshot {snap.name} in zone {self.zone}"
        with self._api(what, "compute.disks.create"):
            op = self.clients.disks.insert_unary(project=self.project, zone=self.zone, disk_resource=body)
        fault_point("inside:gcp-create")
        op = self._wait(op, what, "compute.disks.create", self._deadline())
        return op.target_link or f"projects/{self.project}/zones/{self.zone}/disks/{name}"

    def _find_disk(self, name: str) -> compute_v1.Disk | None:
        """The disk of that name in the zone, or None."""
        with self._api(f"get disk {name} in zone {self.zone}", "compute.disks.get"):
            try:
                return self.clients.disks.get(project=self.project, zone=self.zone, disk=name)
            except gexc.NotFound:
                return None

    def _until_disk_ready(self, disk: compute_v1.Disk) -> compute_v1.Disk:
        """Poll a disk until READY (one an interrupted run made may still be restoring)."""
        deadline = self._deadline()
        while disk.status != "READY":
            if disk.status in ("FAILED", "DELETING"):
                raise VolumeError(f"disk {disk.name}, made by an interrupted run of this restore, is {disk.status}: "
                                  "look at it in the console; once it is gone, run the restore again")
            if time.monotonic() >= deadline:
                raise VolumeError(f"disk {disk.name} is still {disk.status} after {self._timeout_text()}; nothing "
                                  "was deleted: run the restore again to go on")
            self.progress(f"disk {disk.name}: {disk.status.lower()}")
            time.sleep(max(0.0, min(self.poll_seconds, deadline - time.monotonic())))
            disk = self._get_disk(disk.name)
        return disk

    def _attached_at(self, link: str, device: str) -> bool:
        """Is the disk attached to the instance under that device name right now?"""
        return any(_relative(d.source) == _relative(link) and d.device_name == device
                   for d in self._get_instance().disks)

    def _plan(self, snapshot_id: str, journal: Journal, hooks: Hooks, resumed: bool,
              checked: tuple[compute_v1.Snapshot, compute_v1.Disk] | None) -> Plan:
        """The journaled steps, each with the command kept in the journal when the restore was checked, and the
        service's stop (every run). A re-run (`resumed`) checks the real state before a step not marked done."""
        facts = journal.facts
        old, device, planned = str(facts["old"]), str(facts["device"]), facts.get("commands") or []
        actions: dict[str, Callable[[], object]] = {
            "create": lambda: self._create(snapshot_id, journal, hooks, resumed, checked),
            "detach": lambda: self._detach_or_start(old, str(facts["old_link"]), device, hooks, resumed),
            "label": lambda: self._set_labels(old, self._quarantine_labels(str(facts["new"]), str(facts["stamp"]))),
            "attach": lambda: self._attach_new(facts, resumed)}
        steps = steps_of(_STEPS, {name: [Command.from_dict(c)] for name, c in zip(_STEPS, planned)}, actions, _STEP)
        steps.insert(1, Step(_STEP + "stop", "Stop the service (every run: a resumed one finds it stopped, or stops "
                             "it again)", action=hooks.stop_service, always=True))
        return Plan("gcp-restore", {"snapshot": snapshot_id, "old": old, "new": facts["new"]}, steps)

    def _create(self, snapshot_id: str, journal: Journal, hooks: Hooks, resumed: bool,
                checked: tuple[compute_v1.Snapshot, compute_v1.Disk] | None) -> dict[str, Any]:
        """Create the new disk (a re-run reuses the one it made); its link is kept in the journal."""
        assert checked is not None  # the restore is checked whenever the create is not done
        new = str(journal.facts["new"])
        link = self._create_disk(new, *checked, look_first=resumed)
        hooks.progress(f"created disk {new} from {snapshot_id}")
        return {"new_link": link}

    def _detach_or_start(self, old: str, old_link: str, device: str, hooks: Hooks, resumed: bool) -> None:
        """Detach the old disk (unless a re-run finds it detached); when that fails, start the service again."""
        try:
            if not resumed or self._attached_at(old_link, device):
                self._detach(old, device)
        except VolumeError:
            hooks.start_service()  # the old disk is still attached
            raise
        fault_point("inside:gcp-detach")

    def _attach_new(self, facts: dict[str, Any], resumed: bool) -> None:
        """Attach the new disk under the old one's device name (unless a re-run finds it there)."""
        link, device = str(facts["new_link"]), str(facts["device"])
        if not (resumed and self._attached_at(link, device)):
            self._attach(link, compute_v1.AttachedDisk(device_name=device, mode=str(facts["mode"])))
        fault_point("inside:gcp-attach")

    def _run(self, snapshot_id: str, journal: Journal, plan: Plan, hooks: Hooks) -> VolumeRestore:
        """Run the plan: create, stop, detach the old disk, label it quarantine, attach the new one; put the old
        one back when the label or the attach fails."""
        try:
            execute(plan, journal)
        except VolumeError as exc:
            if failed_step(journal) not in (_STEP + "label", _STEP + "attach"):
                raise
            labelled = journal.done(_STEP + "label")
            journal.finish()  # settled below, one way or the other: nothing to resume
            self._put_back(exc, journal.facts, labelled, hooks)
        facts = journal.facts
        new, old, device = str(facts["new"]), str(facts["old"]), str(facts["device"])
        return VolumeRestore(snapshot_id, new, old, warnings=self._warnings(device), steps=[
            f"created disk {new} from snapshot {snapshot_id} in {self.zone}", "service stopped",
            f"detached {old} (device {device})", f"labelled {old} backout-quarantine (kept, not deleted)",
            f"attached {new} as device {device}"])

    def _quarantine_labels(self, new_disk: str, stamp: str) -> dict[str, str]:
        return {label_key("quarantine"): label_value(stamp), label_key("replaced-by"): label_value(new_disk)}

    def _detach(self, disk: str, device: str) -> None:
        what = f"detach disk {disk} (device {device}) from instance {self.instance}"
        with self._api(what, "compute.instances.detachDisk"):
            op = self.clients.instances.detach_disk_unary(project=self.project, zone=self.zone,
                                                          instance=self.instance, device_name=device)
        self._wait(op, what, "compute.instances.detachDisk", self._deadline())

    def _attach(self, link: str, like: compute_v1.AttachedDisk) -> None:
        """Attach a disk under the device name (and mode) of the attachment it replaces."""
        body = compute_v1.AttachedDisk(source=link, device_name=like.device_name, mode=like.mode or "READ_WRITE")
        what = f"attach disk {_last(link)} to instance {self.instance} as device {like.device_name}"
        with self._api(what, "compute.instances.attachDisk"):
            op = self.clients.instances.attach_disk_unary(project=self.project, zone=self.zone,
                                                          instance=self.instance, attached_disk_resource=body)
        self._wait(op, what, "compute.instances.attachDisk", self._deadline())

    def _set_labels(self, disk: str, extra: dict[str, str] | None, drop: tuple[str, ...] = ()) -> None:
        """Add labels to a disk (and drop some), with its current label fingerprint."""
        current = self._get_disk(disk)
        labels = {k: v for k, v in current.labels.items() if k not in drop} | (extra or {})
        body = compute_v1.ZoneSetLabelsRequest(labels=labels, label_fingerprint=current.label_fingerprint)
        what = f"label disk {disk}"
        with self._api(what, "compute.disks.setLabels"):
            op = self.clients.disks.set_labels_unary(project=self.project, zone=self.zone, resource=disk,
                                                     zone_set_labels_request_resource=body)
        self._wait(op, what, "compute.disks.setLabels", self._deadline())

    def _put_back(self, cause: VolumeError, facts: dict[str, Any], labelled: bool, hooks: Hooks) -> NoReturn:
        """Re-attach the old disk and start the service again, then raise; the new disk is kept."""
        old, device = str(facts["old"]), str(facts["device"])
        try:
            self._attach(str(facts["old_link"]), compute_v1.AttachedDisk(device_name=device, mode=str(facts["mode"])))
        except VolumeError as again:
            raise VolumeError(f"{cause}; putting the old disk {old} back failed too ({again}): the service "
                              f"is stopped; attach it by hand: `gcloud compute instances attach-disk {self.instance} "
                              f"--disk={old} --device-name={device} --zone={self.zone} "
                              f"--project={self.project}`, then start the service") from None
        if labelled:
            self._unlabel(old)
        hooks.start_service()
        raise VolumeError(f"{cause}; the old disk {old} is attached again and the service started; the new "
                          f"disk {facts['new']} is kept (delete it when you no longer need it)") from None

    def _unlabel(self, disk: str) -> None:
        """Best effort: the old disk is in use again, so it is not in quarantine any more."""
        try:
            self._set_labels(disk, None, drop=(label_key("quarantine"), label_key("replaced-by")))
        except VolumeError:
            pass  # a stale label misleads but loses nothing


def _tags_of(snap: compute_v1.Snapshot) -> dict[str, str]:
    """The tags as given (kept in the description: labels are lossy), else from the backout-* labels."""
    try:
        tags = json.loads(snap.description).get("backout")
        if isinstance(tags, dict):
            return {str(k): str(v) for k, v in tags.items()}
    except (ValueError, AttributeError):
        pass
    return {k.removeprefix("backout-"): v for k, v in snap.labels.items() if k.startswith("backout-")}


_STEPS = {  # the restore's journaled steps, one command each, in order (`gcp-<step>` in its journal and fault points)
    "create": "Create the new disk from the snapshot (type and size of the old one)",
    "detach": "Detach the old disk from the instance",
    "label": "Label the old disk quarantine (kept, never deleted)",
    "attach": "Attach the new disk under the same device name (on failure the old one goes back)",
}
_STEP = "gcp-"  # the prefix of the restore's step names


def restore_commands(project: str, zone: str, instance: str, disk: compute_v1.Disk, snapshot_id: str,
                     new_disk: str, device: str) -> list[Command]:
    """A restore as gcloud commands, one per step of its journal, in order (`<time>`: when it runs)."""
    where = (f"--zone={zone}", f"--project={project}")
    quarantine = f"{label_key('quarantine')}=<time>,{label_key('replaced-by')}={new_disk}"
    return [
        Command(f"create disk {new_disk} from snapshot {snapshot_id} (type and size of {disk.name})",
                ("gcloud", "compute", "disks", "create", new_disk, f"--source-snapshot={snapshot_id}",
                 f"--type={_last(disk.type_)}", f"--size={disk.size_gb}GB", *where), kind="api"),
        Command(f"detach the old disk {disk.name} (device {device}) from {instance}",
                ("gcloud", "compute", "instances", "detach-disk", instance, f"--disk={disk.name}", *where), kind="api"),
        Command(f"label {disk.name} quarantine (kept, never deleted)",
                ("gcloud", "compute", "disks", "add-labels", disk.name, f"--labels={quarantine}", *where), kind="api"),
        Command(f"attach {new_disk} to {instance} under the same device name",
                ("gcloud", "compute", "instances", "attach-disk", instance, f"--disk={new_disk}",
                 f"--device-name={device}", *where), kind="api"),
    ]