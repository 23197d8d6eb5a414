"""`backout drill`: the self-contained default drill from a bare folder, its report and history, a
drill whose rollback is killed (red, saying where), and the refusal to drill production."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backout_cli import backout
from browser import artifacts_dir, chromium_path, run_browser
from rollback_setup import ENV, init_process


def _drill(folder: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, dict]:
    out = backout("drill", "--json", *args, cwd=folder, env=env, timeout=300)
    assert out.stdout, out.stderr
    return out.returncode, json.loads(out.stdout)


def test_the_default_drill_is_green_and_keeps_its_report(tmp_path: Path) -> None:
    code, result = _drill(tmp_path)
    assert code == 0 and result["passed"], result["checks"]
    assert result["break"] == "errors" and result["layer"] == "brain" and result["self_contained"]
    phases = [p["name"] for p in result["phases"]]
    assert phases == ["bring-up", "seed", "baseline", "pre-flight", "snapshot", "upgrade", "detect", "decide", "drain",
                      "restore", "start", "salvage", "verify", "notify", "checks"]
    spans = sorted((p["start"], p["start"] + p["seconds"], p["name"]) for p in result["phases"])
    reach = spans[0][1]
    for start, end, name in spans[1:]:  # every stretch of the drill is in a phase
        assert start - reach < 0.25, (name, start - reach)
        reach = max(reach, end)
    series, overs = result["traffic"]["series"], result["switch_overs"]
    assert [o["what"] for o in overs] == ["2.3.1 -> 2.4.0-errors", "2.4.0-errors -> 2.3.1"]
    bounds = [b["t"] for b in series] + [series[-1]["t_end"]]
    for t in [*result["marks"].values(), *(x for o in overs for x in (o["from"], o["to"]))]:
        assert any(abs(t - b) < 1e-5 for b in bounds), t  # every mark is a bucket boundary
    assert all(b["errors"] == 0 for b in series if b["t_end"] <= overs[0]["from"])  # 2.3.1 served well
    assert result["expected_trigger"] == "errors" and result["trigger"]
    assert {s["signal"] for s in result["signals"]} >= {"errors", "evals"}
    assert all(c["passed"] for c in result["checks"]) and len(result["checks"]) == 9
    assert result["targets"]["data_loss_rows"] == 0 and result["targets"]["recovery_s"] < 120
    assert result["traffic"]["total"] > 50 and result["traffic"]["series"]
    html, saved = Path(result["report"]["html"]), Path(result["report"]["json"])
    assert html.parent == tmp_path / ".backout" / "drills" and saved.exists()
    assert "timeline" in html.read_text() and (html.stat().st_mode & 0o077) == 0
    assert not Path(result["staging_folder"]).exists()  # the drill cleans up after itself
    incident = Path(result["incident"])  # ... keeping the incident beside the report
    assert incident.parent == html.parent and (incident / "postmortem.md").exists()
    listed = json.loads(backout("drill", "--history", "--json", cwd=tmp_path).stdout)
    assert [r["id"] for r in listed] == [result["id"]] and listed[0]["passed"]
    status = backout("status", "--brain", str(tmp_path / "none.sqlite"), cwd=tmp_path)
    assert "last drill" in status.stdout and "ago" in status.stdout


@pytest.mark.browser
def test_a_real_drill_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    chromium = chromium_path()
    code, result = _drill(tmp_path, "--break", "eval")
    assert code == 0, result["checks"]
    url = Path(result["report"]["html"]).resolve().as_uri()
    dom = run_browser(chromium, tmp_path / "profile-dom", "--dump-dom", url)
    for element_id in ("timeline", "errors-chart", "latency-chart", "trend-chart"):
        assert f'id="{element_id}"' in dom.stdout, element_id
    assert "switch" in dom.stdout and "detected" in dom.stdout and "recovered" in dom.stdout
    png = artifacts_dir() / "drill-real.png"
    shot = run_browser(chromium, tmp_path / "profile-shot", f"--screenshot={png}", url)
    assert shot.returncode == 0 and png.stat().st_size > 20_000


def test_a_drill_whose_rollback_is_killed_ends_red_and_says_where(tmp_path: Path) -> None:
    code, result = _drill(tmp_path, "--break", "crash", env={"BACKOUT_FAULT_AT": "before:restore"})
    assert code == 1 and not result["passed"]
    assert "rollback" in result["failure"]["where"] and "killed" in result["failure"]["why"]
    assert any("--resume" in step for step in result["failure"]["next"])
    assert result["summary"].startswith("RED") and Path(result["report"]["html"]).exists()


def test_a_deployment_not_marked_staging_is_refused(tmp_path: Path) -> None:
    config = init_process(tmp_path)
    out = backout("drill", "--yes", "--config", str(config), env=ENV)
    assert out.returncode == 3 and "--i-know-this-is-production" in out.stderr
    out = backout("drill", "--break", "sideways", cwd=tmp_path)
    assert out.returncode == 2
    plan = json.loads(backout("drill", "--dry-run", "--json", cwd=tmp_path).stdout)
    assert plan["dry_run"] and plan["broken_version"] == "2.4.0-errors"


@pytest.mark.slow
@pytest.mark.rehearsal
@pytest.mark.parametrize("mode, trigger", [("latency", "latency"), ("health", "not healthy at start"),
                                           ("eval", "evals"), ("crash", "not healthy at start"),
                                           ("drain", "forced stop at the drain")])
def test_a_drill_per_break_mode_is_green(tmp_path: Path, mode: str, trigger: str) -> None:
    code, result = _drill(tmp_path, "--break", mode)
    assert code == 0 and result["passed"], [c for c in result["checks"] if not c["passed"]]
    assert trigger in result["trigger"] and result["layer"] == "brain"


COMPOSE_DRILL = """
[deployments.engine.verdict]
window = "4s"
min_requests = 15
sustained_windows = 2
baseline_window = "30s"

[deployments.engine.evals]
command = "{python} -m engine.cli eval --url {{url}} --json {{out}} --quiet"
pass_env = ["ENGINE_API_KEY"]

[deployments.engine.upgrade]
check_every = "2s"

[deployments.engine.rollback]
verify_window = "3s"
"""


@pytest.mark.docker
def test_a_drill_on_a_compose_staging_deployment(project, docker_env) -> None:  # type: ignore[no-untyped-def]
    import sys

    from compose_setup import init_compose

    folder, _ = project
    config = init_compose(folder, docker_env)
    text = config.read_text().replace("staging = false", "staging = true").replace(
        "[deployments.engine]\n", '[deployments.engine]\napi_key = { env = "ENGINE_API_KEY" }\n', 1)
    config.write_text(text + COMPOSE_DRILL.format(python=sys.executable))
    out = backout("drill", "--yes", "--json", "--config", str(config), env=docker_env, timeout=400)
    assert out.stdout, out.stderr
    result = json.loads(out.stdout)
    assert out.returncode == 0 and result["passed"], [c for c in result["checks"] if not c["passed"]]
    assert result["runtime"] == "compose" and result["layer"] == "brain" and not result["self_contained"]
    assert Path(result["report"]["html"]).parent == folder / ".backout" / "drills"
