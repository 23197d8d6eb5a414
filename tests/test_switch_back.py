"""A switch whose target does not come up after production was stopped starts the previous version again:
a failed switch must not leave the service down when what served before can serve again. (Found by the
random operator scenarios: under load a proven target missed its boot timeout and nothing served.)"""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from backout_cli import backout
from test_config_files import _deploy


def test_a_forced_switch_to_a_build_that_cannot_start_switches_back(tmp_path: Path) -> None:
    config, port, _ = _deploy(tmp_path)
    cfg = ("--config", str(config))
    assert backout("switch", "1", "--yes", *cfg).returncode == 0
    assert httpx.post(f"http://127.0.0.1:{port}/items", json={"name": "before"}).status_code == 201

    # --force skips the proof (the operator insists), so the drain happens and the start fails for real.
    out = backout("switch", "9", "--yes", "--force", "--json", *cfg)
    assert out.returncode == 1, out.stderr
    result = json.loads(out.stdout)
    assert not result["healthy"] and result["switched_back"]["healthy"], result
    assert httpx.get(f"http://127.0.0.1:{port}/health").json()["release"] == "1"
    assert [i["name"] for i in httpx.get(f"http://127.0.0.1:{port}/items").json()["items"]] == ["before"]
    status = json.loads(backout("status", "--json", *cfg).stdout)
    assert status["running"]["version"] == "1"
    history = json.loads(backout("history", "--json", *cfg).stdout)
    last = history[-1] if isinstance(history, list) else history["changes"][-1]
    assert last["to_version"] == "1" and last["reason"] == "switched back: 9 did not become healthy"

    text = backout("switch", "9", "--yes", "--force", *cfg)
    assert text.returncode == 1
    assert "9 is NOT healthy" in text.stdout and "switched back: 1 serves again" in text.stdout
    backout("stop", "--yes", *cfg)
