"""Volume snapshots wired into upgrade and rollback: the local provider end to end with the reference
Engine (its brain inside the volume folder), the EBS provider's plan in `rollback --dry-run` against
moto's EC2 server on 127.0.0.1, and the GCP provider's against a recorded Compute Engine exchange."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from backout_cli import backout, backout_json
from gcp_replay import replaying
from rollback_setup import ENV, counts, init_process, turns
from test_volume_ebs import ec2, moto_url  # noqa: F401 (fixtures)

LOCAL = """
[deployments.{name}.volume]
provider = "local"
path = "data"
use = "instead"
"""


def _local_deployment(folder: Path) -> Path:
    (folder / "data").mkdir()
    config = init_process(folder, LOCAL)
    config.write_text(config.read_text().replace('brain = "brain.sqlite"', 'brain = "data/brain.sqlite"'))
    return config


def test_upgrade_and_rollback_with_the_local_volume_provider(tmp_path: Path) -> None:
    config = _local_deployment(tmp_path)
    cfg = ["--config", str(config)]
    try:
        assert backout_json("switch", "2.3.1", "--yes", *cfg, env=ENV)["healthy"]
        turns(config, "before")
        out = backout("upgrade", "2.4.0-errors", "--watch", "0s", "--yes", "--json", *cfg, env=ENV, timeout=300)
        assert out.returncode == 0, out.stderr
        events = [json.loads(line) for line in out.stdout.splitlines()]
        upgraded = next(e for e in events if e["event"] == "upgraded")
        volume_snapshot = next(e for e in events if e.get("step") == "volume-snapshot")
        assert volume_snapshot["outcome"] == "ok" and upgraded["restore_point"]
        assert backout_json("volume", "list", *cfg)[0]["tags"]["restore-point"] == upgraded["snapshot_final"]["id"]
        before = upgraded["snapshot_final"]["tables"]  # the restore point, rows per table
        written = turns(config, "during", 10, strict=False)

        plan = backout_json("rollback", "--dry-run", *cfg, env=ENV)["plan"]
        restore = next(s for s in plan["steps"] if s["name"] == "restore")
        assert plan["layer"] == "brain" and plan["volume"]["provider"] == "local"
        assert "data" in json.dumps(restore["commands"])  # the folder it swaps, as commands

        out = backout("rollback", "--yes", "--json", *cfg, env=ENV, timeout=300)
        assert out.returncode == 0, out.stderr
        result = json.loads(out.stdout)["result"]
        assert result["layer"] == "brain" and result["outcome"] == "rolled-back"
        now = counts(tmp_path / "data" / "brain.sqlite")
        assert all(now[t] >= n for t, n in before.items())  # the restore point's rows are back
        assert result["salvage"]["tables"].get("knowledge_store", 0) >= written > 0  # from the displaced folder
        displaced = Path(result["quarantine"])
        assert displaced.exists() and (displaced / "brain.sqlite").exists()
        status = backout_json("status", *cfg, env=ENV)
        assert status["running"]["version"] == "2.3.1" and status["health"]["ok"]
    finally:
        backout("stop", "--yes", *cfg, env=ENV)


EBS = """
[deployments.{{name}}.volume]
provider = "ebs"
use = "instead"
volume_id = "{volume}"
region = "us-east-1"
instance_id = "{instance}"
device = "/dev/xvdf"
endpoint_url = "{url}"
"""


def test_rollback_dry_run_shows_the_ebs_steps_with_their_ids(
        tmp_path: Path, moto_url: str, ec2: Any) -> None:  # noqa: F811 (the fixtures imported above)
    from test_volume_ebs import ACCESS_KEY, SECRET_KEY, _machine

    instance, volume = _machine(ec2)
    config = init_process(tmp_path, EBS.format(volume=volume, instance=instance, url=moto_url))
    cfg = ["--config", str(config)]
    env = {**ENV, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
           "AWS_DEFAULT_REGION": "us-east-1"}
    try:
        assert backout_json("switch", "2.3.1", "--yes", *cfg, env=env)["healthy"]
        backout_json("stop", "--yes", *cfg, env=env)
        snap = backout_json("volume", "snapshot", "--version-running", "2.3.1", "--yes", *cfg, env=env)
        assert snap["state"] == "completed" and snap["tags"]["deployment"] == "engine"
        assert backout_json("switch", "2.4.0", "--yes", *cfg, env=env)["healthy"]  # forward-only migration
        plan = backout_json("rollback", "--dry-run", "--to", "2.3.1", *cfg, env=env)["plan"]
        assert plan["layer"] == "brain" and plan["volume"]["snapshot"] == snap["id"]
        argv = [c["argv"] for s in plan["steps"] if s["name"] == "restore" for c in s["commands"]]
        flat = json.dumps(argv)
        assert snap["id"] in flat and volume in flat and instance in flat and "/dev/xvdf" in flat
        assert any(a[:3] == ["aws", "ec2", "create-volume"] for a in argv)
        assert any(a[:3] == ["aws", "ec2", "attach-volume"] for a in argv)
        assert ACCESS_KEY not in json.dumps(plan)
    finally:
        backout("stop", "--yes", *cfg, env=env)


GCP = """
[deployments.{{name}}.volume]
provider = "gcp"
use = "instead"
project = "acme-prod"
zone = "us-central1-a"
disk = "engine-brain"
instance = "engine-vm-1"
device_name = "brain"
endpoint_url = "{url}"
"""


def test_rollback_dry_run_shows_the_gcp_steps_with_their_names(tmp_path: Path) -> None:
    """The same as the EBS test, for GCP persistent disks. The Engine and backout are real (backout runs as
    a subprocess with the factory's provider); the GCP side is a RECORDED EXCHANGE, not the live API nor
    an emulator: tests/recordings/gcp/rollback_plan.json, served on 127.0.0.1 (tests/gcp_replay.py), holds
    exactly the requests the snapshot and the dry run make, in order. It proves the wiring (endpoint_url,
    anonymous credentials for a local endpoint, the snapshot chosen by its version tag, describe and
    plan_restore in the plan), not that Compute Engine answers this way today."""
    with replaying("rollback_plan") as server:
        config = init_process(tmp_path, GCP.format(url=server.url))
        cfg = ["--config", str(config)]
        # ADC would fail on this missing key file: a local http endpoint gets anonymous credentials
        env = {**ENV, "GOOGLE_APPLICATION_CREDENTIALS": str(tmp_path / "absent.json")}
        try:
            assert backout_json("switch", "2.3.1", "--yes", *cfg, env=env)["healthy"]
            backout_json("stop", "--yes", *cfg, env=env)
            snap = backout_json("volume", "snapshot", "--version-running", "2.3.1", "--yes", *cfg, env=env)
            assert snap["state"] == "completed" and snap["provider"] == "gcp" and snap["volume"] == "engine-brain"
            assert snap["tags"]["deployment"] == "engine" and snap["tags"]["version"] == "2.3.1"
            assert backout_json("switch", "2.4.0", "--yes", *cfg, env=env)["healthy"]  # forward-only migration
            plan = backout_json("rollback", "--dry-run", "--to", "2.3.1", *cfg, env=env)["plan"]
        finally:
            backout("stop", "--yes", *cfg, env=env)
    assert plan["layer"] == "brain" and plan["volume"]["provider"] == "gcp"
    assert plan["volume"]["snapshot"] == snap["id"] == server.bound["snapshot"]  # not the older 2.3.0 one
    assert plan["volume"]["volume"]["device_name"] == "brain" and plan["volume"]["volume"]["attached"]
    argv = [c["argv"] for s in plan["steps"] if s["name"] == "restore" for c in s["commands"]]
    where = ["--zone=us-central1-a", "--project=acme-prod"]
    create = next(a for a in argv if a[:4] == ["gcloud", "compute", "disks", "create"])
    assert create[5:] == [f"--source-snapshot={snap['id']}", "--type=pd-balanced", "--size=20GB", *where]
    assert create[4].startswith("engine-brain-r")  # the new disk, named after the old one
    assert ["gcloud", "compute", "instances", "detach-disk", "engine-vm-1", "--disk=engine-brain", *where] in argv
    assert ["gcloud", "compute", "instances", "attach-disk", "engine-vm-1", f"--disk={create[4]}",
            "--device-name=brain", *where] in argv
    assert any(a[:5] == ["gcloud", "compute", "disks", "add-labels", "engine-brain"] for a in argv)
    assert not any(e.startswith("DELETE") for e in server.events)
