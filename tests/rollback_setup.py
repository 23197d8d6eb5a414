"""A process deployment of the reference Engine for rollback tests: config, turns, row counts."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from backout_cli import backout, backout_json
from engine.client import EngineClient
from engine.traffic import TrafficPlan, run_traffic
from engine.turn import PEOPLE
from engine_proc import DEFAULT_KEY, free_port

BIN = Path(sys.executable).parent
ENV = {"ENGINE_API_KEY": DEFAULT_KEY}
SHORT_WATCH = """
[deployments.{name}.upgrade]
watch = "3s"
check_every = "1s"
"""
ROLLBACK_SETTINGS = """
api_key = {{ env = "ENGINE_API_KEY" }}

[deployments.{name}.rollback]
verify_window = "1s"

[deployments.{name}.notify]
file = "notifications.jsonl"
"""


def init_process(folder: Path, extra: str = "") -> Path:
    """`backout init` a process deployment named after the folder, with rollback settings; the config path."""
    port = free_port()
    command = f"{BIN}/engine serve --release {{version}} --brain {{brain}} --port {{port}}"
    out = backout("init", "--runtime", "process", "--profile", "engine", "--command", command,
                  "--check", f"{BIN}/engine releases --changelog {{version}}", "--port", str(port),
                  "--brain", "brain.sqlite", "--health-url", f"http://127.0.0.1:{port}/health",
                  "--pass-env", "ENGINE_API_KEY", "--env", "ENGINE_TURN_MS=20", cwd=folder)
    assert out.returncode == 0, out.stderr
    config = folder / "backout.toml"
    text = config.read_text().replace('drain_timeout = "30s"', 'drain_timeout = "10s"')
    name = text.split("[deployments.", 1)[1].split("]", 1)[0]
    insert_at = text.index(f"[deployments.{name}]") + len(f"[deployments.{name}]")
    text = text[:insert_at] + ROLLBACK_SETTINGS.split("\n[", 1)[0].format(name=name) + text[insert_at:]
    text += "\n[" + ROLLBACK_SETTINGS.split("\n[", 1)[1].format(name=name) + extra.format(name=name)
    config.write_text(text)
    return config


def url_of(config: Path) -> str:
    """The Engine's base URL from the config's health URL."""
    return config.read_text().split('health_url = "', 1)[1].split('"', 1)[0].removesuffix("/health")


def turns(config: Path, prefix: str, n: int = 6, strict: bool = True) -> int:
    """Turns that write knowledge, people, episodes and mcp_calls; how many succeeded.

    `strict=False` for broken builds, some of whose turns fail."""
    ok = 0
    with EngineClient(url_of(config), DEFAULT_KEY) as client:
        for i in range(n):
            a, b = PEOPLE[i % len(PEOPLE)], PEOPLE[(i + 1) % len(PEOPLE)]
            result = client.execute(f"{prefix}-{i}", f"{a} met {b}. Project {prefix} {i} is due on Friday. "
                                                     f"Please email {b}.")
            assert result.ok or not strict, result.describe()
            ok += result.ok
    return ok


def counts(brain: Path) -> dict[str, int]:
    """Rows per user table."""
    conn = sqlite3.connect(f"file:{brain}?mode=ro", uri=True)
    try:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' "
                                            "AND name NOT LIKE 'sqlite_%'")]
        return {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in names}
    finally:
        conn.close()


def rows_of(brain: Path, sql: str) -> list[tuple[Any, ...]]:
    """Run a read-only query on a brain."""
    conn = sqlite3.connect(f"file:{brain}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def prepare_bad_upgrade(config: Path, good: str, bad: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """good runs and writes; drained; quiescent snapshot (the restore point); bad starts and writes."""
    cfg, env = ["--config", str(config)], env or ENV
    assert backout_json("switch", good, "--yes", *cfg, env=env)["healthy"]
    turns(config, "before")
    backout_json("stop", "--yes", *cfg, env=env)
    snap = backout_json("snapshot", "create", "--version-running", good, *cfg, env=env)
    result = backout_json("switch", bad, "--yes", *cfg, env=env)
    assert result["healthy"], result
    return snap


def notifications(config: Path) -> list[dict[str, Any]]:
    """Messages the file channel recorded."""
    path = config.parent / "notifications.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


LIVE_SETTINGS = f"""
[deployments.{{name}}.verdict]
window = "8s"
min_requests = 25
sustained_windows = 2
health_failures = 2
health_duration = "4s"
baseline_window = "60s"

[deployments.{{name}}.upgrade]
watch = "{{watch}}"
check_every = "3s"
"""
LIVE_EVALS = f"""
[deployments.{{name}}.evals]
command = "{sys.executable} -m engine.cli eval --url {{{{url}}}} --json {{{{out}}}} --quiet"
pass_env = ["ENGINE_API_KEY"]
"""


def live_deployment(folder: Path, watch: str, evals: bool = True) -> Path:
    """A deployment for upgrades under traffic: short verdict windows, evals (unless not wanted), 200 ms turns;
    the config path."""
    settings = LIVE_SETTINGS + (LIVE_EVALS if evals else "")
    config = init_process(folder, settings.replace("{watch}", watch))
    config.write_text(config.read_text().replace("ENGINE_TURN_MS = \"20\"", "ENGINE_TURN_MS = \"200\""))
    return config


def traffic(url: str, seconds: float) -> threading.Thread:
    """`engine traffic` at 10 turns/s for `seconds`, in a thread (join it to wait)."""
    plan = TrafficPlan(url=url, key=DEFAULT_KEY, rate=10, duration=seconds, seed=int(time.time()))
    thread = threading.Thread(target=run_traffic, args=(plan,), daemon=True)
    thread.start()
    return thread


def upgrade_then_ctrl_c(config: Path, version: str) -> tuple[list[str], str]:
    """`backout upgrade VERSION --json --watch 40s`, interrupted (SIGINT) at its first verdict: the JSON lines it
    printed and its stderr. The window opens at the switch after the rollback's pre-arm (a trial boot with its smoke
    requests), which on two busy cores took most of a 20 s window: so 40 s."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKOUT_")} | ENV
    child = subprocess.Popen([sys.executable, "-m", "backout", "upgrade", version, "--yes", "--json", "--watch", "40s",
                              "--config", str(config)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    assert child.stdout is not None and child.stderr is not None
    seen = []
    for line in child.stdout:
        seen.append(line)
        if '"event": "check"' in line:
            break
    child.send_signal(signal.SIGINT)
    code = child.wait(60)
    stderr = child.stderr.read()
    assert code == 130, "".join(seen)[-3000:] + stderr
    return seen, stderr
