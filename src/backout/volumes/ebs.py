"""An AWS EBS volume as the volume: EC2 snapshots tagged `backout:*`, and a restore that creates a
volume from one in the current volume's zone and swaps it in at the same device, the old volume
detached and tagged `backout:quarantine` (never deleted).

Restore order, journaled in <state>/journals/ebs-restore-<key>.json (re-running the same restore
after a crash reuses the volume it created and skips what is done):
  check    snapshot completed, volume and instance found, in one zone (before anything changes)
  create   a volume from the snapshot in the current volume's zone, same type, tagged with a token
           kept in the journal (a crash right after the call finds it again); wait `available`
  stop     hooks.stop_service()
  detach   the old volume; wait `available`
  tag      the old volume backout:quarantine=<time>, backout:replaced-by=<new>
  attach   the new volume at the same device of the same instance; wait `in-use`. If that fails,
           the old volume is attached again, its quarantine tags removed, the service started,
           and the restore raises saying so.
  start    hooks.start_service()
The journal and the fault points name the steps `ebs-create` ... `ebs-attach`; `ebs-stop` (wait for the
new volume, then hooks.stop_service()) runs on every run, a resumed one too.
Credentials come from the AWS SDK's standard chain (environment, profile, instance role) only, and
never appear in a message: AWS error texts are passed through a redaction of access-key ids.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from backout.config import VolumeSettings
from backout.errors import EXIT_ENVIRONMENT, EXIT_REFUSED, EXIT_USAGE
from backout.journal import Journal, fault_point
from backout.progress import NO_PROGRESS, Progress
from backout.commands import Command
from backout.plan import Plan, Step, failed_step, steps_of
from backout.volumes.base import Hooks, VolumeError, VolumeProvider, VolumeRestore, VolumeSnapshot, run_restore

__all__ = ["EbsVolume", "LAZY_LOAD_WARNING", "initialize_file"]

PREFIX = "backout:"
LAZY_LOAD_WARNING = ("a volume restored from a snapshot loads its blocks lazily from S3: the first read of each "
                     "block is slow until every block has been read once")
_AWS_ENV = ("AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
_DENIED = {"UnauthorizedOperation", "AccessDenied", "AccessDeniedException", "Client.UnauthorizedOperation"}
_BAD_CREDENTIALS = {"AuthFailure", "InvalidClientTokenId", "UnrecognizedClientException", "ExpiredToken",
                    "RequestExpired", "SignatureDoesNotMatch"}
_ACCESS_KEY = re.compile(r"\b(AKIA|ASIA|AIDA|AROA)[A-Z0-9]{12,}\b")
_STEPS = {  # the restore's journaled steps (`ebs-<step>` in its journal and its fault points)
    "create": "Create a volume from the snapshot in the current volume's zone; wait until it is available",
    "detach": "Detach the current volume; wait until it is available",
    "tag": "Tag the old volume as quarantine (kept, never deleted)",
    "attach": "Attach the new volume at the same device (on failure the old one is attached again)",
}
_STEP = "ebs-"  # the prefix of the restore's step names
_log = logging.getLogger(__name__)


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def _redact(text: str) -> str:
    """AWS messages may quote an access-key id: never pass one on."""
    return _ACCESS_KEY.sub("<access key id>", text)


def aws_tags(tags: dict[str, str]) -> list[dict[str, str]]:
    """backout's tags as EC2 tags: `version` becomes `backout:version` (keys with a colon are kept)."""
    return [{"Key": k if ":" in k else PREFIX + k, "Value": str(v)} for k, v in tags.items()]


def from_aws_tags(tags: list[dict[str, str]] | None) -> dict[str, str]:
    """EC2 tags as backout's: `backout:version` becomes `version`; other tags keep their keys."""
    return {(t["Key"][len(PREFIX):] if t["Key"].startswith(PREFIX) else t["Key"]): t["Value"] for t in tags or []}


def initialize_file(path: Path, progress: Progress = NO_PROGRESS, chunk: int = 1 << 20) -> int:
    """Read a file once, sequentially, so a volume restored from a snapshot has fetched its blocks; bytes read."""
    size = path.stat().st_size
    progress.phase(f"initialize {path.name}", size)
    done = 0
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        while block := os.read(fd, chunk):
            done += len(block)
            progress.advance(len(block))
    finally:
        os.close(fd)
    return done


class EbsVolume(VolumeProvider):
    """The EBS volume attached at `device` of `instance_id` that holds the brain."""

    name = "ebs"

    def __init__(self, settings: VolumeSettings, deployment: str, state_dir: Path, client: Any = None, *,
                 brain: Path | None = None, poll_interval: float = 5.0,
                 progress: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self.deployment = deployment
        self.state_dir = Path(os.path.abspath(state_dir))
        self.brain = brain
        self.poll_interval = poll_interval
        self.progress = progress or _log.info
        self.timeout = settings.timeout.total_seconds()
        self.client = client if client is not None else _make_client(settings)

    # -- calls and errors ----------------------------------------------------------------------

    def _call(self, operation: str, subject: str, **kwargs: Any) -> Any:
        """One EC2 call; its failure as a VolumeError that names `subject` and what to do."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        try:
            return getattr(self.client, operation)(**kwargs)
        except ClientError as exc:
            error = self._error(exc, subject)
        except NoCredentialsError:
            error = VolumeError("no AWS credentials in backout's environment: set AWS_PROFILE, or AWS_ACCESS_KEY_ID "
                                "and AWS_SECRET_ACCESS_KEY, or run where an instance role applies")
        except BotoCoreError as exc:
            error = VolumeError(f"cannot reach EC2 in {self.settings.region} for {subject}: {_redact(str(exc))}")
        raise error  # outside the handler: the AWS exception (and what it quotes) is not chained to it

    def _error(self, exc: Any, subject: str) -> VolumeError:
        error = exc.response.get("Error", {})
        code, message = str(error.get("Code", "")), _redact(str(error.get("Message") or ""))
        action = exc.operation_name
        if code in _DENIED:
            return VolumeError(f"missing permission: ec2:{action} (the AWS identity backout runs as needs it), "
                               f"for {subject}", EXIT_ENVIRONMENT)
        if code in _BAD_CREDENTIALS:
            return VolumeError(f"AWS refused the credentials in backout's environment ({code}) for ec2:{action}; "
                               "check AWS_PROFILE or AWS_ACCESS_KEY_ID and the clock", EXIT_ENVIRONMENT)
        if code.endswith(".NotFound"):
            return VolumeError(f"{subject} not found in {self.settings.region} ({code}): check the id", EXIT_USAGE)
        if code == "InvalidAvailabilityZone" or (code == "InvalidParameterValue" and "zone" in message.lower()):
            return VolumeError(f"wrong zone for {subject}: {message or code}; a volume can only be attached to an "
                               "instance in its own availability zone", EXIT_USAGE)
        return VolumeError(f"ec2:{action} for {subject} failed: {code}: {message}", EXIT_ENVIRONMENT)

    # -- facts ---------------------------------------------------------------------------------

    def _volume(self, volume_id: str) -> dict[str, Any]:
        volumes = self._call("describe_volumes", f"volume {volume_id}", VolumeIds=[volume_id])["Volumes"]
        if not volumes:
            raise VolumeError(f"volume {volume_id} not found in {self.settings.region}", EXIT_USAGE)
        return dict(volumes[0])

    def current_volume(self) -> dict[str, Any]:
        """The volume attached at the configured device (after a restore it is no longer `volume_id`)."""
        s = self.settings
        attached = self._call("describe_volumes", f"the volume at {s.device} of {s.instance_id}", Filters=[
            {"Name": "attachment.instance-id", "Values": [s.instance_id]},
            {"Name": "attachment.device", "Values": [s.device]}])["Volumes"]
        if attached:
            return dict(attached[0])
        assert s.volume_id is not None
        return self._volume(s.volume_id)

    def describe(self) -> dict[str, Any]:
        """Volume id, zone, size, state, and where it is attached."""
        volume = self.current_volume()
        attachment = (volume.get("Attachments") or [{}])[0]
        return {"id": volume["VolumeId"], "provider": self.name, "region": self.settings.region,
                "availability_zone": volume["AvailabilityZone"], "size_gib": volume.get("Size"),
                "volume_type": volume.get("VolumeType"), "state": volume.get("State"),
                "instance": attachment.get("InstanceId"), "device": attachment.get("Device"),
                "configured_volume_id": self.settings.volume_id}

    def _instance_zone(self) -> str:
        instance = self.settings.instance_id
        found = self._call("describe_instances", f"instance {instance}", InstanceIds=[instance])["Reservations"]
        if not found or not found[0]["Instances"]:
            raise VolumeError(f"instance {instance} not found in {self.settings.region}", EXIT_USAGE)
        return str(found[0]["Instances"][0]["Placement"]["AvailabilityZone"])

    # -- snapshots -----------------------------------------------------------------------------

    def snapshot(self, tags: dict[str, str]) -> VolumeSnapshot:
        """EC2 CreateSnapshot of the current volume, tagged; waits for `completed` (VolumeError at the timeout)."""
        volume = self.current_volume()["VolumeId"]
        all_tags = {"deployment": self.deployment, **tags}
        created = self._call("create_snapshot", f"volume {volume}", VolumeId=volume,
                             Description=f"backout: {self.deployment} {all_tags.get('version', '')}".strip(),
                             TagSpecifications=[{"ResourceType": "snapshot", "Tags": aws_tags(all_tags)}])
        snapshot_id = created["SnapshotId"]
        self.progress(f"snapshot {snapshot_id} of {volume} started")
        return _to_snapshot(self._wait_snapshot(snapshot_id, volume))

    def _wait_snapshot(self, snapshot_id: str, volume: str) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        while True:
            snap = self._snapshot(snapshot_id)
            if snap["State"] == "completed":
                return snap
            if snap["State"] == "error":
                raise VolumeError(f"snapshot {snapshot_id} of {volume} failed: {snap.get('StateMessage') or 'error'}")
            self.progress(f"waiting for snapshot {snapshot_id} of {volume}: {snap.get('Progress') or '0%'}")
            if time.monotonic() >= deadline:
                raise VolumeError(
                    f"snapshot {snapshot_id} of {volume} is still {snap['State']} ({snap.get('Progress') or '0%'}) "
                    f"after {self.timeout:g}s; it is not deleted and may still complete: check it with "
                    f"`aws ec2 describe-snapshots --snapshot-ids {snapshot_id}` or raise `timeout`")
            time.sleep(self.poll_interval)

    def _snapshot(self, snapshot_id: str) -> dict[str, Any]:
        found = self._call("describe_snapshots", f"snapshot {snapshot_id}", SnapshotIds=[snapshot_id])["Snapshots"]
        if not found:
            raise VolumeError(f"snapshot {snapshot_id} not found in {self.settings.region}", EXIT_USAGE)
        return dict(found[0])

    def snapshots(self, deployment: str) -> list[VolumeSnapshot]:
        """The deployment's EBS snapshots (tag backout:deployment), newest first."""
        found: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            page = self._call("describe_snapshots", f"snapshots of {deployment}", OwnerIds=["self"],
                              Filters=[{"Name": f"tag:{PREFIX}deployment", "Values": [deployment]}],
                              **({"NextToken": token} if token else {}))
            found += page["Snapshots"]
            token = page.get("NextToken")
            if not token:
                break
        found.sort(key=lambda s: s["StartTime"], reverse=True)
        return [_to_snapshot(s) for s in found]

    # -- restore -------------------------------------------------------------------------------

    def _aws(self, *args: str) -> tuple[str, ...]:
        endpoint = ("--endpoint-url", self.settings.endpoint_url) if self.settings.endpoint_url else ()
        return ("aws", "ec2", *args, "--region", str(self.settings.region), *endpoint)

    def plan_restore(self, snapshot_id: str) -> list[Command]:
        """The aws CLI equivalents of a restore's API calls, with the real ids (the new volume's id is known only
        once it is made); the caller stops the service before the detach and starts it after."""
        snap, old = self._check(snapshot_id)
        return [command for step in self._plan(snapshot_id, self._facts_of(snap, old)).steps
                for command in step.commands]

    @staticmethod
    def _facts_of(snap: dict[str, Any], old: dict[str, Any]) -> dict[str, Any]:
        """What the restore's commands are built from (kept in its journal, so a resumed run shows the same)."""
        return {"old": old["VolumeId"], "zone": old["AvailabilityZone"], "volume_type": old.get("VolumeType"),
                "iops": old.get("Iops"), "throughput": old.get("Throughput"), "size_gib": snap.get("VolumeSize")}

    def _commands(self, snapshot_id: str, facts: dict[str, Any]) -> dict[str, list[Command]]:
        """Each step's API calls as aws CLI commands; `<new-volume-id>` and `<time>` are fixed when they run."""
        s, new, old, zone = self.settings, "<new-volume-id>", str(facts["old"]), str(facts["zone"])
        device, instance = str(s.device), str(s.instance_id)
        tags = ",".join(f"{{Key={t['Key']},Value={t['Value']}}}" for t in aws_tags(self._new_tags(snapshot_id)))
        quarantine = " ".join(f"Key={t['Key']},Value={t['Value']}" for t in aws_tags(
            {"quarantine": "<time>", "replaced-by": new, "deployment": self.deployment}))

        def cmd(purpose: str, *args: str) -> Command:
            return Command(purpose, self._aws(*args), _AWS_ENV, kind="api")

        return {
            "create": [cmd(f"create a volume from {snapshot_id} ({facts.get('size_gib')} GiB) in {zone}, the zone of "
                           f"{old}", "create-volume", "--snapshot-id", snapshot_id, "--availability-zone", zone,
                           "--volume-type", str(facts.get("volume_type") or "gp3"), "--tag-specifications",
                           f"ResourceType=volume,Tags=[{tags}]"),
                       cmd("wait until the new volume is available", "wait", "volume-available", "--volume-ids", new)],
            "detach": [cmd(f"detach the current volume {old}", "detach-volume", "--volume-id", old, "--instance-id",
                           instance, "--device", device),
                       cmd(f"wait until {old} is detached", "wait", "volume-available", "--volume-ids", old)],
            "tag": [cmd(f"mark {old} as quarantine (kept, never deleted)", "create-tags", "--resources", old,
                        "--tags", *quarantine.split(" "))],
            "attach": [cmd(f"attach the new volume at {device} of {instance} (on failure {old} is attached again)",
                           "attach-volume", "--volume-id", new, "--instance-id", instance, "--device", device),
                       cmd("wait until the new volume is in use", "wait", "volume-in-use", "--volume-ids", new)],
        }

    def _new_tags(self, snapshot_id: str) -> dict[str, str]:
        return {"deployment": self.deployment, "restored-from": snapshot_id}

    def _check(self, snapshot_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """Refusals before anything changes: the snapshot, the volume and the instance, and their zones."""
        snap = self._snapshot(snapshot_id)
        if snap["State"] != "completed":
            raise VolumeError(f"snapshot {snapshot_id} is {snap['State']} ({snap.get('Progress') or '0%'}), not "
                              "completed: it cannot be restored yet", EXIT_REFUSED)
        old = self.current_volume()
        zone, s = old["AvailabilityZone"], self.settings
        if s.availability_zone and s.availability_zone != zone:
            raise VolumeError(f"wrong zone: backout.toml says availability_zone = {s.availability_zone!r} but "
                              f"{old['VolumeId']} is in {zone}; fix the config", EXIT_USAGE)
        attachment = (old.get("Attachments") or [{}])[0]
        if attachment and (attachment.get("InstanceId"), attachment.get("Device")) != (s.instance_id, s.device):
            raise VolumeError(f"{old['VolumeId']} is attached at {attachment.get('Device')} of "
                              f"{attachment.get('InstanceId')}, not at {s.device} of {s.instance_id} as backout.toml "
                              "says; fix the config", EXIT_REFUSED)
        instance_zone = self._instance_zone()
        if instance_zone != zone:
            raise VolumeError(f"wrong zone: instance {s.instance_id} is in {instance_zone} but {old['VolumeId']} "
                              f"is in {zone}; a volume made there could not be attached", EXIT_USAGE)
        return snap, old

    def _journal(self, snapshot_id: str) -> Journal:
        s = self.settings
        operation = {"kind": "ebs-restore", "snapshot": snapshot_id, "instance": s.instance_id, "device": s.device}
        journal = Journal.for_slot(self.state_dir, "ebs-restore", f"{s.instance_id}:{s.device}", operation)
        journal.rename_steps({step: _STEP + step for step in _STEPS})
        if journal.operation["snapshot"] != snapshot_id:
            raise VolumeError(f"an interrupted restore of {journal.operation['snapshot']} at {s.device} of "
                              f"{s.instance_id} is pending; finish it first, journal: {journal.path}", EXIT_REFUSED)
        return journal

    def restore(self, snapshot_id: str, hooks: Hooks) -> VolumeRestore:
        """Create a volume from the snapshot, stop, swap it in at the same device, start (old one kept, tagged)."""
        journal = self._journal(snapshot_id)
        try:
            if not journal.done(_STEP + "create"):
                journal.remember(**self._facts_of(*self._check(snapshot_id)))
            result = self._run(snapshot_id, journal, hooks)
        except BaseException:
            if not journal.data["done"]:
                journal.finish()  # refused or failed before anything changed
            raise
        journal.finish()
        hooks.progress(f"{result.new_volume} attached at {self.settings.device}; starting the service")
        hooks.start_service()
        return result

    def _run(self, snapshot_id: str, journal: Journal, hooks: Hooks) -> VolumeRestore:
        facts = journal.facts
        result = VolumeRestore(snapshot_id, "", facts["old"])
        plan = self._plan(snapshot_id, facts, {
            "create": lambda: {"new": self._create(snapshot_id, journal, hooks)},
            "detach": lambda: self._detach(facts["old"], hooks),
            "tag": lambda: self._tag_quarantine(facts["old"], str(facts["new"])),
            "attach": lambda: self._attach(str(facts["new"]), hooks)})
        plan.steps.insert(1, Step(_STEP + "stop", "Wait until the new volume is available, then stop the service "
                                  "(every run: a resumed one finds it stopped, or stops it again)",
                                  action=lambda: self._stop(str(facts["new"]), str(facts["old"]), hooks), always=True))
        try:
            run_restore(plan, journal, result, _STEP)
        except VolumeError as exc:
            if failed_step(journal) != _STEP + "attach":
                raise
            journal.finish()  # settled below, one way or the other: nothing to resume
            raise self._put_back(str(facts["new"]), facts["old"], str(exc), hooks) from None
        result.new_volume = str(facts["new"])
        result.warnings += self._warnings(facts["old"], result.new_volume)
        return result

    def _plan(self, snapshot_id: str, facts: dict[str, Any],
              actions: dict[str, Callable[[], object]] | None = None) -> Plan:
        """The journaled steps with their commands; with `actions` (by step), the API calls that carry each out."""
        return Plan("ebs-restore", {"snapshot": snapshot_id, "old": facts["old"]},
                    steps_of(_STEPS, self._commands(snapshot_id, facts), actions, _STEP))

    def _stop(self, new: str, old: str, hooks: Hooks) -> None:
        self._wait_volume(new, "available", hooks, attached_ok=True)
        hooks.progress(f"stopping the service to swap {old} for {new}")
        hooks.stop_service()

    def _create(self, snapshot_id: str, journal: Journal, hooks: Hooks) -> str:
        """A volume from the snapshot in the old one's zone; a crash right after the call finds it by its token."""
        facts = journal.facts
        if "token" not in facts:
            journal.remember(token=secrets.token_hex(16))
        token = str(facts["token"])
        made = self._call("describe_volumes", f"volumes from {snapshot_id}",
                          Filters=[{"Name": f"tag:{PREFIX}restore-token", "Values": [token]}])["Volumes"]
        if made:
            return str(made[0]["VolumeId"])
        extra: dict[str, Any] = {}
        if facts.get("volume_type") in ("io1", "io2", "gp3") and facts.get("iops"):
            extra["Iops"] = facts["iops"]
        if facts.get("volume_type") == "gp3" and facts.get("throughput"):
            extra["Throughput"] = facts["throughput"]
        tags = aws_tags({**self._new_tags(snapshot_id), "restore-token": token})
        created = self._call("create_volume", f"a volume from {snapshot_id} in {facts['zone']}",
                             SnapshotId=snapshot_id, AvailabilityZone=facts["zone"], ClientToken=token,
                             VolumeType=facts.get("volume_type") or "gp3", **extra,
                             TagSpecifications=[{"ResourceType": "volume", "Tags": tags}])
        fault_point("inside:ebs-create")
        hooks.progress(f"created {created['VolumeId']} from {snapshot_id} in {facts['zone']}")
        return str(created["VolumeId"])

    def _wait_volume(self, volume_id: str, state: str, hooks: Hooks, attached_ok: bool = False) -> dict[str, Any]:
        """Poll until the volume is in `state` (VolumeError at the timeout, naming it and its state)."""
        deadline = time.monotonic() + self.timeout
        while True:
            volume = self._volume(volume_id)
            if volume["State"] == state or (attached_ok and self._attached_here(volume)):
                return volume
            if volume["State"] == "error":
                raise VolumeError(f"volume {volume_id} is in state error (AWS could not make it)")
            hooks.progress(f"waiting for {volume_id}: {volume['State']} (want {state})")
            if time.monotonic() >= deadline:
                raise VolumeError(f"volume {volume_id} is still {volume['State']} after {self.timeout:g}s "
                                  f"(want {state}); nothing was deleted")
            time.sleep(self.poll_interval)

    def _attached_here(self, volume: dict[str, Any]) -> bool:
        return any(a.get("InstanceId") == self.settings.instance_id and a.get("Device") == self.settings.device
                   and a.get("State") == "attached" for a in volume.get("Attachments") or [])

    def _detach(self, old: str, hooks: Hooks) -> None:
        if self._attached_here(self._volume(old)):
            self._call("detach_volume", f"volume {old}", VolumeId=old, InstanceId=self.settings.instance_id,
                       Device=self.settings.device)
        self._wait_volume(old, "available", hooks)

    def _tag_quarantine(self, old: str, new: str) -> None:
        self._call("create_tags", f"volume {old}", Resources=[old], Tags=aws_tags(
            {"quarantine": _now(), "replaced-by": new, "deployment": self.deployment}))

    def _attach(self, volume_id: str, hooks: Hooks) -> None:
        if not self._attached_here(self._volume(volume_id)):
            self._call("attach_volume", f"volume {volume_id}", VolumeId=volume_id,
                       InstanceId=self.settings.instance_id, Device=self.settings.device)
        fault_point("inside:ebs-attach")
        self._wait_volume(volume_id, "in-use", hooks)

    def _put_back(self, new: str, old: str, why: str, hooks: Hooks) -> VolumeError:
        """The attach failed: the old volume back where it was, the service started, and the error to raise."""
        where = f"{self.settings.device} of {self.settings.instance_id}"
        try:
            self._release(new, hooks)
            self._attach(old, hooks)
            self._call("delete_tags", f"volume {old}", Resources=[old],
                       Tags=[{"Key": f"{PREFIX}quarantine"}, {"Key": f"{PREFIX}replaced-by"}])
        except VolumeError as again:
            return VolumeError(f"attaching {new} at {where} failed ({why}), and attaching {old} again failed too "
                               f"({again}); the service was NOT started: attach {old} by hand (`aws ec2 "
                               f"attach-volume --volume-id {old} --instance-id {self.settings.instance_id} --device "
                               f"{self.settings.device}`), then start it")
        self._mark_failed(new)
        hooks.progress(f"{old} attached again at {where}; starting the service")
        hooks.start_service()
        return VolumeError(f"attaching {new} at {where} failed ({why}); {old} was attached again and the service "
                           f"started on it; {new} is kept (tagged {PREFIX}restore-failed) for you to inspect")

    def _release(self, new: str, hooks: Hooks) -> None:
        """Detach the new volume if the failed attach got that far (the device must be free for the old one)."""
        try:
            volume = self._volume(new)
        except VolumeError:
            return  # gone: nothing holds the device
        if volume.get("Attachments"):
            self._call("detach_volume", f"volume {new}", VolumeId=new, InstanceId=self.settings.instance_id,
                       Device=self.settings.device, Force=True)
            self._wait_volume(new, "available", hooks)

    def _mark_failed(self, new: str) -> None:
        try:
            self._call("create_tags", f"volume {new}", Resources=[new], Tags=aws_tags({"restore-failed": _now()}))
        except VolumeError:
            pass  # best effort: the volume may be what failed

    def _warnings(self, old: str, new: str) -> list[str]:
        warnings = [f"{new}: {LAZY_LOAD_WARNING}"]
        if self.settings.initialize:
            brain = self.brain or "the brain"
            warnings.append(f"read {brain} once before the service starts (backout.volumes.ebs.initialize_file, "
                            f"or `dd if={brain} of=/dev/null bs=1M` on the instance)")
        if self.settings.volume_id == old:
            warnings.append(f"backout.toml still names volume_id = {old!r}, now quarantine; {new} is at "
                            f"{self.settings.device}: update volume_id")
        return warnings


def _make_client(settings: VolumeSettings) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=10, read_timeout=60,
                    user_agent_extra="backout")
    return boto3.client("ec2", region_name=settings.region, endpoint_url=settings.endpoint_url, config=config)


def _to_snapshot(snap: dict[str, Any]) -> VolumeSnapshot:
    start = snap.get("StartTime")
    created = start.isoformat() if isinstance(start, datetime) else str(start)
    size = snap.get("VolumeSize")
    return VolumeSnapshot(id=snap["SnapshotId"], provider="ebs", volume=snap.get("VolumeId", ""),
                          created_at=created, state=snap["State"], tags=from_aws_tags(snap.get("Tags")),
                          size_bytes=size * 2**30 if isinstance(size, int) else None)
