"""The EBS volume provider against moto's EC2 server: a real HTTP endpoint on 127.0.0.1 (moto's
ThreadedMotoServer, not the in-process mock), reached by a real boto3 client with fake credentials
from the environment. Each test says what is real and what is simulated.

What moto cannot do is simulated by a small HTTP proxy of ours in front of it (FaultProxy): it
forwards every request to moto unchanged, except the EC2 actions a test names, which it answers
itself (an AWS error document) or whose moto answer it rewrites (a snapshot shown as pending)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import parse_qs

import boto3
import httpx
import pytest
from moto.server import ThreadedMotoServer

from backout.commands import recording
from backout.config import VolumeSettings
from backout.errors import EXIT_USAGE
from backout.volumes import Hooks, VolumeError
from backout.volumes.ebs import EbsVolume, LAZY_LOAD_WARNING, initialize_file
from engine_proc import free_port

REGION, ZONE, DEVICE = "us-east-1", "us-east-1a", "/dev/xvdf"
ACCESS_KEY, SECRET_KEY = "AKIAZZCANARY00000001", "canary-secret-never-printed"
Rule = Callable[[dict[str, list[str]], str], tuple[int, str] | str | None]


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    """moto's EC2 as a real HTTP server on 127.0.0.1, with fake AWS credentials in the environment."""
    with pytest.MonkeyPatch.context() as env:
        for name, value in {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                            "AWS_DEFAULT_REGION": REGION, "AWS_EC2_METADATA_DISABLED": "true"}.items():
            env.setenv(name, value)
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
            env.delenv(name, raising=False)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port())
        server.start()
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
        server.stop()


class FaultProxy:
    """Forwards EC2 requests to moto; `rules[action]` may answer one itself or rewrite moto's answer."""

    def __init__(self, upstream: str) -> None:
        self.upstream, self.rules, self.seen = upstream, dict[str, Rule](), list[str]()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                params = parse_qs(body.decode())
                action = params.get("Action", [""])[0]
                proxy.seen.append(action)
                status, text = proxy.answer(action, params, self.path, dict(self.headers), body)
                data = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/xml")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def answer(self, action: str, params: dict[str, list[str]], path: str, headers: dict[str, str],
               body: bytes) -> tuple[int, str]:
        rule = self.rules.get(action)
        if rule is not None:
            own = rule(params, "")
            if isinstance(own, tuple):
                return own
        headers = {k: v for k, v in headers.items() if k.lower() not in ("host", "content-length")}
        resp = httpx.post(self.upstream + path, content=body, headers=headers, timeout=30)
        text = resp.text
        if rule is not None:
            rewritten = rule(params, text)
            text = rewritten if isinstance(rewritten, str) else text
        return resp.status_code, text

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def aws_error(code: str, message: str, status: int = 400) -> Callable[..., tuple[int, str] | None]:
    """A rule answering with EC2's error document (as AWS does), before moto sees the request."""
    xml = (f'<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error><Code>{code}</Code><Message>{message}'
           "</Message></Error></Errors><RequestID>fault-proxy</RequestID></Response>")
    return lambda params, text: (status, xml) if not text else None


@pytest.fixture
def proxy(moto_url: str) -> Iterator[FaultProxy]:
    """A FaultProxy in front of the module's moto server."""
    p = FaultProxy(moto_url)
    yield p
    p.close()


@pytest.fixture
def ec2(moto_url: str) -> Any:
    """A plain boto3 client on moto, for the test's own setup and checks."""
    return boto3.client("ec2", region_name=REGION, endpoint_url=moto_url)


def _machine(ec2: Any, instance_zone: str = ZONE, volume_zone: str = ZONE) -> tuple[str, str]:
    """A real (moto) instance and a 1 GiB gp3 volume attached to it at /dev/xvdf."""
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    instance = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1,
                                 Placement={"AvailabilityZone": instance_zone})["Instances"][0]["InstanceId"]
    volume = ec2.create_volume(Size=1, AvailabilityZone=volume_zone, VolumeType="gp3")["VolumeId"]
    ec2.attach_volume(VolumeId=volume, InstanceId=instance, Device=DEVICE)
    return instance, volume


def _provider(url: str, instance: str, volume: str, tmp_path: Path, deployment: str, **settings: Any) -> EbsVolume:
    config = VolumeSettings(provider="ebs", volume_id=volume, region=REGION, instance_id=instance, device=DEVICE,
                            endpoint_url=url, **{"timeout": "5s", **settings})
    return EbsVolume(config, deployment, tmp_path / "state", brain=Path("/data/brain.sqlite"), poll_interval=0.05)


def _tags(resource: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in resource.get("Tags", [])}


def _attachment(ec2: Any, volume: str) -> tuple[str, str | None, str | None, str]:
    v = ec2.describe_volumes(VolumeIds=[volume])["Volumes"][0]
    a = (v.get("Attachments") or [{}])[0]
    return v["State"], a.get("InstanceId"), a.get("Device"), v["AvailabilityZone"]


def _restored_from(ec2: Any, snapshot_id: str) -> list[dict[str, Any]]:
    return list(ec2.describe_volumes(Filters=[{"Name": "tag:backout:restored-from", "Values": [snapshot_id]}])
                ["Volumes"])


def test_snapshot_then_restore_swaps_the_volume_and_keeps_the_old_one(moto_url: str, ec2: Any,
                                                                      tmp_path: Path) -> None:
    """Real (moto over HTTP): every EC2 call, the snapshot, the new volume, detach, tags, attach."""
    instance, old = _machine(ec2)
    provider = _provider(moto_url, instance, old, tmp_path, "cycle")
    assert provider.describe() | {"id": old, "availability_zone": ZONE, "instance": instance, "device": DEVICE,
                                  "state": "in-use"} == provider.describe()

    snap = provider.snapshot({"version": "2.3.1", "restore-point": "20261126T221530Z-a1b2c3", "schema-head": "7"})
    assert snap.state == "completed" and snap.volume == old and snap.size_bytes == 2**30
    assert snap.tags == {"deployment": "cycle", "version": "2.3.1", "restore-point": "20261126T221530Z-a1b2c3",
                         "schema-head": "7"}
    raw = ec2.describe_snapshots(SnapshotIds=[snap.id])["Snapshots"][0]
    assert _tags(raw)["backout:deployment"] == "cycle" and _tags(raw)["backout:schema-head"] == "7"
    later = provider.snapshot({"version": "2.4.0"})
    assert [s.id for s in provider.snapshots("cycle")][:2] in ([later.id, snap.id], [snap.id, later.id])
    assert {s.id for s in provider.snapshots("cycle")} == {snap.id, later.id} and provider.snapshots("nobody") == []

    plan = provider.plan_restore(snap.id)
    shells = [c.shell() for c in plan]
    assert [c.argv[2] for c in plan] == ["create-volume", "wait", "detach-volume", "wait", "create-tags",
                                         "attach-volume", "wait"]  # the caller stops and starts the service
    assert any(f"create-volume --snapshot-id {snap.id} --availability-zone {ZONE}" in s for s in shells)
    assert any(f"detach-volume --volume-id {old} --instance-id {instance} --device {DEVICE}" in s for s in shells)
    assert any(f"--instance-id {instance} --device {DEVICE}" in s and "attach-volume" in s for s in shells)
    assert all(f"--endpoint-url {moto_url}" in s for s in shells if s.startswith("aws "))

    seen: list[str] = []

    def stop() -> None:  # the new volume is ready before the service stops: the downtime is only the swap
        made = _restored_from(ec2, snap.id)
        assert len(made) == 1 and made[0]["State"] == "available" and made[0]["AvailabilityZone"] == ZONE
        assert _attachment(ec2, old)[:3] == ("in-use", instance, DEVICE)
        seen.append("stop")

    with recording() as performed:
        result = provider.restore(snap.id, Hooks(stop, lambda: seen.append("start"), seen.append))
    assert performed == plan  # what the plan showed is what ran
    new = result.new_volume
    assert [s for s in seen if s in ("stop", "start")] == ["stop", "start"]
    assert result.steps == ["create", "detach", "tag", "attach"] and result.quarantined_volume == old
    assert _attachment(ec2, new) == ("in-use", instance, DEVICE, ZONE)
    assert _attachment(ec2, old) == ("available", None, None, ZONE)  # kept, not deleted
    old_tags = _tags(ec2.describe_volumes(VolumeIds=[old])["Volumes"][0])
    assert old_tags["backout:replaced-by"] == new and old_tags["backout:quarantine"].endswith("Z")
    assert _tags(ec2.describe_volumes(VolumeIds=[new])["Volumes"][0])["backout:restored-from"] == snap.id
    assert any(LAZY_LOAD_WARNING in w for w in result.warnings)
    assert any("/data/brain.sqlite" in w and "initialize_file" in w for w in result.warnings)
    assert any(f"volume_id = '{old}'" in w for w in result.warnings)
    assert provider.describe()["id"] == new  # found by its attachment, not by the stale volume_id
    assert not list((tmp_path / "state" / "journals").glob("*.json"))


def test_a_snapshot_still_pending_at_the_timeout_is_reported_and_kept(moto_url: str, proxy: FaultProxy, ec2: Any,
                                                                      tmp_path: Path) -> None:
    """Real: CreateSnapshot in moto. Simulated: moto completes snapshots at once, so the proxy shows the
    snapshot as `pending` at 42% in every DescribeSnapshots answer (the rest of moto's answer kept)."""
    proxy.rules["DescribeSnapshots"] = lambda params, text: text.replace(
        "<status>completed</status>", "<status>pending</status>").replace(
        "<progress>100%</progress>", "<progress>42%</progress>") if text else None
    instance, volume = _machine(ec2)
    said: list[str] = []
    provider = _provider(proxy.url, instance, volume, tmp_path, "slow", timeout="1s")
    provider.progress = said.append
    with pytest.raises(VolumeError) as err:
        provider.snapshot({"version": "2.3.1"})
    message = str(err.value)
    snapshot_id = message.split()[1]
    assert snapshot_id.startswith("snap-") and "still pending (42%)" in message and "not deleted" in message
    assert ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0]["VolumeId"] == volume  # still there
    assert any(line.endswith(": 42%") for line in said)


def test_a_failed_attach_puts_the_old_volume_back_and_starts_the_service(moto_url: str, ec2: Any,
                                                                         tmp_path: Path) -> None:
    """Real (moto over HTTP): the attach fails with moto's own InvalidVolume.NotFound, because the test's
    stop hook deletes the new volume (the stand-in for a volume that cannot be attached); the
    re-attach of the old volume and the removal of its quarantine tags are real calls too."""
    instance, old = _machine(ec2)
    provider = _provider(moto_url, instance, old, tmp_path, "attach-fails")
    snap = provider.snapshot({})
    calls: list[str] = []

    def stop() -> None:
        calls.append("stop")
        ec2.delete_volume(VolumeId=_restored_from(ec2, snap.id)[0]["VolumeId"])

    with pytest.raises(VolumeError) as err:
        provider.restore(snap.id, Hooks(stop, lambda: calls.append("start")))
    message = str(err.value)
    assert "InvalidVolume.NotFound" in message and f"{old} was attached again and the service started" in message
    assert calls == ["stop", "start"]
    assert _attachment(ec2, old) == ("in-use", instance, DEVICE, ZONE)
    tags = _tags(ec2.describe_volumes(VolumeIds=[old])["Volumes"][0])
    assert "backout:quarantine" not in tags and "backout:replaced-by" not in tags
    assert not list((tmp_path / "state" / "journals").glob("*.json"))


def test_wrong_zones_are_refused_before_anything_changes(moto_url: str, proxy: FaultProxy, ec2: Any,
                                                         tmp_path: Path) -> None:
    """Real (moto): a config naming another zone than the volume's, and an instance in another zone than
    its volume (moto attaches across zones; AWS would not). Simulated: AWS refusing CreateVolume with
    InvalidParameterValue for the zone (the proxy answers it)."""
    calls: list[str] = []
    hooks = Hooks(lambda: calls.append("stop"), lambda: calls.append("start"))
    instance, volume = _machine(ec2)
    snap = _provider(moto_url, instance, volume, tmp_path, "zones").snapshot({})
    with pytest.raises(VolumeError) as err:
        _provider(moto_url, instance, volume, tmp_path, "zones", availability_zone="us-east-1b").restore(snap.id, hooks)
    assert err.value.exit_code == EXIT_USAGE and "wrong zone" in str(err.value) and ZONE in str(err.value)

    far, near = _machine(ec2, instance_zone="us-east-1b")
    far_snap = _provider(moto_url, far, near, tmp_path, "zones").snapshot({})
    with pytest.raises(VolumeError) as err:
        _provider(moto_url, far, near, tmp_path, "zones").restore(far_snap.id, hooks)
    assert "wrong zone: instance" in str(err.value) and "us-east-1b" in str(err.value)

    proxy.rules["CreateVolume"] = aws_error("InvalidParameterValue", f"Invalid availability zone: [{ZONE}]")
    with pytest.raises(VolumeError) as err:
        _provider(proxy.url, instance, volume, tmp_path, "zones").restore(snap.id, hooks)
    assert err.value.exit_code == EXIT_USAGE and str(err.value).startswith("wrong zone for a volume from")
    assert calls == [] and _restored_from(ec2, snap.id) == [] and _restored_from(ec2, far_snap.id) == []
    assert _attachment(ec2, volume)[:3] == ("in-use", instance, DEVICE)


def test_missing_permission_names_the_action_and_no_secret(moto_url: str, proxy: FaultProxy, ec2: Any,
                                                           tmp_path: Path) -> None:
    """Simulated: moto does not enforce IAM, so the proxy answers CreateSnapshot with AWS's 403
    UnauthorizedOperation document, and DescribeVolumes with an AuthFailure that quotes the access key
    id; everything else is real moto."""
    instance, volume = _machine(ec2)
    provider = _provider(proxy.url, instance, volume, tmp_path, "denied")
    proxy.rules["CreateSnapshot"] = aws_error("UnauthorizedOperation",
                                              "You are not authorized to perform this operation.", 403)
    with pytest.raises(VolumeError) as err:
        provider.snapshot({"version": "2.3.1"})
    assert str(err.value).startswith("missing permission: ec2:CreateSnapshot (the AWS identity backout runs as "
                                     "needs it)")
    proxy.rules["DescribeVolumes"] = aws_error("AuthFailure", f"Credential {ACCESS_KEY} was not valid", 401)
    with pytest.raises(VolumeError) as err:
        provider.describe()
    assert "AuthFailure" in str(err.value)
    for message in (str(err.value), *(str(e) for e in [err.value.__cause__, err.value.__context__] if e)):
        assert ACCESS_KEY not in message and SECRET_KEY not in message


def test_unknown_ids_are_usage_errors_naming_the_id(moto_url: str, ec2: Any, tmp_path: Path) -> None:
    """Real (moto): InvalidSnapshot.NotFound and InvalidVolume.NotFound."""
    instance, volume = _machine(ec2)
    provider = _provider(moto_url, instance, volume, tmp_path, "unknown")
    with pytest.raises(VolumeError) as err:
        provider.plan_restore("snap-0123456789abcdef0")
    assert err.value.exit_code == EXIT_USAGE and "snap-0123456789abcdef0" in str(err.value)
    ec2.detach_volume(VolumeId=volume, InstanceId=instance, Device=DEVICE)  # nothing at the device: the configured volume_id is used
    lost = _provider(moto_url, instance, "vol-0123456789abcdef0", tmp_path, "unknown")
    with pytest.raises(VolumeError) as err:
        lost.describe()
    assert err.value.exit_code == EXIT_USAGE and "vol-0123456789abcdef0" in str(err.value)


_CHILD = """
import json, sys
from pathlib import Path
from backout.config import VolumeSettings
from backout.volumes import Hooks
from backout.volumes.ebs import EbsVolume
settings, state, snapshot = json.loads(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
provider = EbsVolume(VolumeSettings(**settings), "crash", state, poll_interval=0.05)
print(json.dumps(provider.restore(snapshot, Hooks(lambda: None, lambda: None)).to_dict()))
"""


@pytest.mark.parametrize("point", ["before:ebs-create", "inside:ebs-create", "before:ebs-stop", "before:ebs-detach",
                                   "before:ebs-tag", "before:ebs-attach", "inside:ebs-attach", "after:ebs-attach"])
def test_kill_9_during_a_restore_then_rerun_finishes_it_with_one_new_volume(moto_url: str, ec2: Any, tmp_path: Path,
                                                                             point: str) -> None:
    """Real: a child process restoring against moto over HTTP is SIGKILLed at a named point
    (BACKOUT_FAULT_AT), then the same restore is run again: it reuses the volume it had made."""
    instance, old = _machine(ec2)
    settings = {"provider": "ebs", "volume_id": old, "region": REGION, "instance_id": instance, "device": DEVICE,
                "endpoint_url": moto_url, "timeout": "5s"}
    snap = EbsVolume(VolumeSettings(**settings), "crash", tmp_path / "state", poll_interval=0.05).snapshot({})
    argv = [sys.executable, "-c", _CHILD, json.dumps(settings), str(tmp_path / "state"), snap.id]
    crashed = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                             env={**os.environ, "BACKOUT_FAULT_AT": point})
    assert crashed.returncode == -9, crashed.stderr
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if k != "BACKOUT_FAULT_AT"})
    assert done.returncode == 0, done.stderr
    new = json.loads(done.stdout)["new_volume"]
    assert [v["VolumeId"] for v in _restored_from(ec2, snap.id)] == [new]
    assert _attachment(ec2, new)[:3] == ("in-use", instance, DEVICE)
    assert _attachment(ec2, old)[0] == "available"
    assert _tags(ec2.describe_volumes(VolumeIds=[old])["Volumes"][0])["backout:replaced-by"] == new


def test_the_factory_builds_an_ebs_provider_on_the_configured_endpoint(moto_url: str, ec2: Any,
                                                                      tmp_path: Path) -> None:
    """Real (moto): the provider the config asks for, talking to the configured endpoint."""
    from backout.config import resolve_target
    from backout.volumes.factory import volume_for

    instance, volume = _machine(ec2)
    config = tmp_path / "backout.toml"
    config.write_text(f'[deployments.engine]\nbrain = "/data/brain.sqlite"\n[deployments.engine.volume]\n'
                      f'provider = "ebs"\nvolume_id = "{volume}"\nregion = "{REGION}"\n'
                      f'instance_id = "{instance}"\ndevice = "{DEVICE}"\nendpoint_url = "{moto_url}"\n')
    provider = volume_for(resolve_target(config))
    assert isinstance(provider, EbsVolume) and provider.describe()["id"] == volume


def test_initialize_file_reads_every_block_once(tmp_path: Path) -> None:
    """Real file, real reads."""
    brain = tmp_path / "brain.sqlite"
    brain.write_bytes(b"x" * (3 * 2**20 + 5))

    class Seen:
        phases: list[tuple[str, int | None]] = []
        done = 0

        def phase(self, name: str, total: int | None = None) -> None:
            self.phases.append((name, total))

        def advance(self, amount: int) -> None:
            self.done += amount

    seen = Seen()
    assert initialize_file(brain, seen) == brain.stat().st_size == seen.done
    assert seen.phases == [("initialize brain.sqlite", brain.stat().st_size)]
