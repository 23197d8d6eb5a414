"""GCP persistent disks (backout.volumes.gcp) against a RECORDED EXCHANGE of the Compute Engine REST API.

This is neither the live API nor an emulator: Compute Engine has no local server, so (the one exception
DESIGN.md Principle 4 allows) each test replays a recording, tests/recordings/gcp/<name>.json, written by
hand from the Compute Engine REST v1 reference: the requests backout must make, in order (method, path,
selected query and body fields), and the answers the API gives (status and JSON body: disks with `users`,
instances with `disks[].deviceName`, operations that end `DONE` or with an `error`, snapshots that go
CREATING -> UPLOADING -> READY, 403/404/400 error bodies). A replay HTTP server on 127.0.0.1
(tests/gcp_replay.py) answers each request with the next recorded response, and fails the test with a
diff when a request does not match, or when the recording was not played to its end. The real
google-cloud-compute client (REST transport, anonymous credentials) talks to it through `api_endpoint`.

What it proves: backout sends the right calls with the right names, labels, zone and device name, in the
right order (snapshot then wait then poll; create, stop, detach, label quarantine, attach, start; the old
disk put back when the attach fails), never deletes anything, and turns the answers, including errors,
into the right results and messages.
What it does not prove: that the real API still answers this way today, that the permissions and
labels are accepted by a real project, how long real operations take, or anything about the data on the
disks. Those need a run against a real project (`backout volume snapshot` on a staging VM).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from google.auth.credentials import AnonymousCredentials

from backout.commands import recording
from backout.config import VolumeSettings
from backout.errors import EXIT_USAGE
from backout.volumes import Hooks, VolumeError
from backout.volumes.gcp import (GcpVolume, is_local_endpoint, label_value, labels_for,
                                 resource_name)
from gcp_replay import Replay, replaying

NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=timezone.utc)
SNAP = "backout-engine-20250301-120000"
OLD_SNAP = "backout-engine-20250214-093000"
NEW = "engine-brain-r20250301-120000"
TAGS = {"version": "2.3.1", "restore-point": "20250301T115955Z-1a2b", "schema-head": "0007_learning_signals"}


# -- helpers --------------------------------------------------------------------------------------


SETTINGS: dict[str, Any] = {"provider": "gcp", "project": "acme-prod", "zone": "us-central1-a",
                            "disk": "engine-brain", "instance": "engine-vm-1", "device_name": "brain"}


def gcp_volume(server: Replay, state_dir: Path, progress: list[str] | None = None, now: datetime = NOW,
               **settings: Any) -> GcpVolume:
    """The provider as the factory makes it, pointed at the replay server with anonymous credentials."""
    messages = progress if progress is not None else []
    return GcpVolume(VolumeSettings(**(SETTINGS | settings)), "engine", state_dir, endpoint=server.url,
                     credentials=AnonymousCredentials(), progress=messages.append, now=lambda: now,
                     poll_seconds=0.01)


def hooks_for(server: Replay) -> Hooks:
    """Callbacks that note themselves among the requests, so their order can be checked."""
    return Hooks(stop_service=lambda: server.events.append("hook: stop_service"),
                 start_service=lambda: server.events.append("hook: start_service"))


# -- the full cycle -------------------------------------------------------------------------------


def test_snapshot_then_restore_swaps_disks_and_keeps_the_old_one(tmp_path: Path) -> None:
    progress: list[str] = []
    with replaying("cycle") as server:
        volume = gcp_volume(server, tmp_path, progress)
        facts = volume.describe()
        assert facts["id"] == "engine-brain" and facts["zone"] == "us-central1-a"
        assert (facts["device_name"], facts["attached"], facts["size_gb"]) == ("brain", True, 20)
        assert facts["users"] == ["engine-vm-1"] and facts["type"] == "pd-balanced"

        snap = volume.snapshot(TAGS)
        assert (snap.id, snap.state, snap.volume, snap.provider) == (SNAP, "completed", "engine-brain", "gcp")
        assert snap.tags == {**TAGS, "deployment": "engine"}  # exact, though the labels are sanitised
        assert snap.created_at == "2025-03-01T12:00:00.518000+00:00" and snap.size_bytes == 20 * 1024**3
        assert any("uploading" in line for line in progress) and progress[-1].endswith("ready")

        listed = volume.snapshots("engine")
        assert [s.id for s in listed] == [SNAP, OLD_SNAP]  # newest first
        assert listed[1].tags["restore-point"] == "20250214T092955Z-9f8e"

        commands = volume.plan_restore(SNAP)  # the new disk is named when the restore runs: `<time>` here
        plan, planned = [c.argv for c in commands], "engine-brain-r<time>"
        assert plan[0] == ("gcloud", "compute", "disks", "create", planned, f"--source-snapshot={SNAP}",
                           "--type=pd-balanced", "--size=20GB", "--zone=us-central1-a", "--project=acme-prod")
        assert plan[3] == ("gcloud", "compute", "instances", "attach-disk", "engine-vm-1", f"--disk={planned}",
                           "--device-name=brain", "--zone=us-central1-a", "--project=acme-prod")
        assert [argv[:4] for argv in plan] == [
            ("gcloud", "compute", "disks", "create"), ("gcloud", "compute", "instances", "detach-disk"),
            ("gcloud", "compute", "disks", "add-labels"), ("gcloud", "compute", "instances", "attach-disk")]

        with recording() as performed:
            done = volume.restore(SNAP, hooks_for(server))
        assert performed == commands  # what the plan showed is what ran
        assert (done.snapshot_id, done.new_volume, done.quarantined_volume) == (SNAP, NEW, "engine-brain")
        assert any("first read" in w for w in done.warnings)

        after = volume.describe()  # the state folder remembers the disk now in place
        assert (after["id"], after["device_name"]) == (NEW, "brain")

    events = server.events
    stop, start = events.index("hook: stop_service"), events.index("hook: start_service")
    create = events.index("POST /compute/v1/projects/acme-prod/zones/us-central1-a/disks")
    detach = events.index("POST /compute/v1/projects/acme-prod/zones/us-central1-a/instances/engine-vm-1/detachDisk")
    attach = events.index("POST /compute/v1/projects/acme-prod/zones/us-central1-a/instances/engine-vm-1/attachDisk")
    assert create < stop < detach < attach < start  # the service is down only for the swap
    assert not any(e.startswith("DELETE") for e in events)
    state = tmp_path / "deployments" / "engine" / "volume-gcp.json"
    assert json.loads(state.read_text())["disk"] == NEW and state.stat().st_mode & 0o777 == 0o600


_CHILD = """
import json, sys
from datetime import datetime
from pathlib import Path
from google.auth.credentials import AnonymousCredentials
from backout.config import VolumeSettings
from backout.volumes import Hooks
from backout.volumes.gcp import GcpVolume
settings, state, snapshot, endpoint, now = json.loads(sys.argv[1]), Path(sys.argv[2]), *sys.argv[3:]
volume = GcpVolume(VolumeSettings(**settings), "engine", state, endpoint=endpoint, credentials=AnonymousCredentials(),
                   now=lambda: datetime.fromisoformat(now), poll_seconds=0.01)
print(json.dumps(volume.restore(snapshot, Hooks(lambda: None, lambda: None)).to_dict()))
"""


@pytest.mark.parametrize(("point", "recording"), [("inside:gcp-detach", "crash_after_detach"),
                                                  ("before:gcp-attach", "crash_before_attach"),
                                                  ("inside:gcp-create", "crash_inside_create")])
def test_kill_9_during_a_restore_then_rerun_finishes_it_with_one_new_disk(tmp_path: Path, point: str,
                                                                          recording: str) -> None:
    """A child process restoring against the replay server is SIGKILLed at a named point (BACKOUT_FAULT_AT,
    the real code path), then the same restore runs again, seven minutes later by its clock, against the
    recording of that second run: it reuses the disk the first run made (one disks.insert in all), skips
    what the first run did (the real state is looked at), labels the old disk once, attaches the new one."""
    with replaying(recording) as server:
        argv = [sys.executable, "-c", _CHILD, json.dumps(SETTINGS), str(tmp_path), SNAP, server.url, NOW.isoformat()]
        crashed = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                                 env={**os.environ, "BACKOUT_FAULT_AT": point})
        assert crashed.returncode == -9, crashed.stdout + crashed.stderr
        [journal] = (tmp_path / "journals").glob("gcp-restore-*.json")
        assert json.loads(journal.read_text())["facts"]["new"] == NEW
        first_run = len(server.events)

        later = gcp_volume(server, tmp_path, now=NOW + timedelta(minutes=7))  # its clock would name another disk
        done = later.restore(SNAP, hooks_for(server))
        assert (done.new_volume, done.quarantined_volume) == (NEW, "engine-brain")
        after = later.describe()
        assert (after["id"], after["device_name"], after["attached"]) == (NEW, "brain", True)

    events, base = server.events, "/compute/v1/projects/acme-prod/zones/us-central1-a"
    assert events.count(f"POST {base}/disks") == 1  # no second disk
    assert events.count(f"POST {base}/instances/engine-vm-1/detachDisk") == 1
    assert events.count(f"POST {base}/disks/engine-brain/setLabels") == 1  # quarantine, once (body checked)
    assert events.count(f"POST {base}/instances/engine-vm-1/attachDisk") == 1
    second = events[first_run:]
    assert [e for e in second if e.startswith("hook:")] == ["hook: stop_service", "hook: start_service"]
    assert second.index(f"POST {base}/instances/engine-vm-1/attachDisk") < second.index("hook: start_service")
    assert not any(e.startswith("DELETE") for e in events)
    assert not journal.exists()  # ended with the restore
    state = tmp_path / "deployments" / "engine" / "volume-gcp.json"
    assert json.loads(state.read_text())["disk"] == NEW


# -- failures -------------------------------------------------------------------------------------


def test_snapshot_still_pending_at_the_timeout_is_reported_not_deleted(tmp_path: Path) -> None:
    with replaying("snapshot_pending") as server:
        volume = gcp_volume(server, tmp_path, timeout=timedelta(milliseconds=300))
        with pytest.raises(VolumeError) as caught:
            volume.snapshot(TAGS)
    message = str(caught.value)
    assert f"snapshot {SNAP} is still pending (CREATING)" in message and "not deleted" in message
    assert f"gcloud compute snapshots describe {SNAP} --project=acme-prod" in message


def test_attach_failure_puts_the_old_disk_back_and_starts_the_service(tmp_path: Path) -> None:
    with replaying("attach_failure") as server:
        volume = gcp_volume(server, tmp_path)
        with pytest.raises(VolumeError) as caught:
            volume.restore(OLD_SNAP, hooks_for(server))
    message = str(caught.value)
    assert "is not ready" in message and "old disk engine-brain is attached again" in message
    assert f"new disk {NEW} is kept" in message and not message.startswith("wrong zone")
    hooks = [e for e in server.events if e.startswith("hook:")]
    assert hooks == ["hook: stop_service", "hook: start_service"]
    assert server.events[-1] == "hook: start_service"  # after the old disk is back
    assert not (tmp_path / "deployments" / "engine" / "volume-gcp.json").exists()


def test_disk_in_another_zone_is_reported_as_wrong_zone(tmp_path: Path) -> None:
    with replaying("wrong_zone") as server:
        with pytest.raises(VolumeError) as caught:
            gcp_volume(server, tmp_path).describe()
    assert caught.value.exit_code == EXIT_USAGE
    assert str(caught.value).startswith("wrong zone: disk engine-brain is in zone us-central1-b, not us-central1-a")


def test_a_region_given_as_zone_is_reported_as_wrong_zone(tmp_path: Path) -> None:
    with replaying("bad_zone") as server:
        with pytest.raises(VolumeError) as caught:
            gcp_volume(server, tmp_path, zone="us-central1").describe()
    assert caught.value.exit_code == EXIT_USAGE
    assert str(caught.value).startswith("wrong zone:") and "Unknown zone" in str(caught.value)


def test_missing_permission_is_named_and_a_failed_detach_restarts_the_service(tmp_path: Path) -> None:
    with replaying("missing_permission") as server:
        volume = gcp_volume(server, tmp_path)
        with pytest.raises(VolumeError) as snapshot_denied:
            volume.snapshot(TAGS)
        with pytest.raises(VolumeError) as detach_denied:
            volume.restore(SNAP, hooks_for(server))
    assert str(snapshot_denied.value).startswith(
        "missing permission: compute.disks.createSnapshot (the service account backout runs as needs it)")
    assert str(detach_denied.value).startswith("missing permission: compute.instances.detachDisk")
    assert [e for e in server.events if e.startswith("hook:")] == ["hook: stop_service", "hook: start_service"]
    assert "127.0.0.1" not in str(snapshot_denied.value)  # the server's words, not the request line


def test_a_request_off_the_recording_fails_with_a_diff(tmp_path: Path) -> None:
    with pytest.raises(AssertionError) as caught:
        with replaying("bad_zone") as server:
            with pytest.raises(VolumeError):
                gcp_volume(server, tmp_path, zone="us-central1-f").describe()
    assert "-  \"path\": \"/compute/v1/projects/acme-prod/zones/us-central1/disks/engine-brain\"" in str(caught.value)
    assert "+  \"path\": \"/compute/v1/projects/acme-prod/zones/us-central1-f/disks/engine-brain\"" in str(caught.value)


# -- names and labels (pure functions) ------------------------------------------------------------


def test_labels_and_names_follow_gcp_rules() -> None:
    labels = labels_for("Engine Prod", {"version": "2.4.0-RC1", "restore_point": "X" * 80})
    assert labels == {"backout-version": "2-4-0-rc1", "backout-restore-point": "x" * 63,
                      "backout-deployment": "engine-prod"}
    assert label_value("Ünïcode/é") == "-n-code--"
    name = resource_name("backout-" + "Very_Long_Deployment_" * 5, "20250301-120000")
    assert len(name) <= 63 and name.endswith("-20250301-120000") and name[0].isalpha()
    assert resource_name("9lives", "r1") == "b-9lives-r1"


def test_only_a_plain_http_endpoint_on_this_host_counts_as_local() -> None:
    """Such an endpoint (a replay server, an emulator) gets anonymous credentials instead of ADC."""
    assert is_local_endpoint("http://127.0.0.1:8085") and is_local_endpoint("http://localhost:9000/")
    assert not is_local_endpoint("https://compute.googleapis.com") and not is_local_endpoint(None)
    assert not is_local_endpoint("https://127.0.0.1:8085")  # TLS: not a replay server of ours
    assert not is_local_endpoint("http://127.0.0.1.example.com") and not is_local_endpoint("http://[::1")
