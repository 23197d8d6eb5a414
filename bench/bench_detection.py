"""Detection latency: time from the switch to a broken build until `backout check` says roll-back.

Per trigger (errors, latency, health) at 5 requests/s against the reference Engine, plus a run on a
good release that must never say roll-back. Checks run every 5 s, as a watch window would.
Usage: python bench/bench_detection.py [--good-minutes 10] [--results bench/RESULTS.md]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from engine.traffic import TrafficPlan, run_traffic  # noqa: E402

PY = sys.executable
BIN = Path(PY).parent
KEY = "bench-key"
ENV = {**os.environ, "ENGINE_API_KEY": KEY}


def backout(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-m", "backout", *args], capture_output=True, text=True, cwd=cwd, env=ENV)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def deployment(folder: Path) -> str:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    out = backout("init", "--runtime", "process", "--port", str(port), "--brain", "brain.sqlite",
                  "--command", f"{BIN}/engine serve --release {{version}} --brain {{brain}} --port {{port}}",
                  "--check", f"{BIN}/engine releases --changelog {{version}}", "--health-url", f"{url}/health",
                  "--pass-env", "ENGINE_API_KEY", cwd=folder)
    assert out.returncode == 0, out.stderr
    config = folder / "backout.toml"
    config.write_text(config.read_text().replace(
        "frozen = []", f'frozen = []\nchangelog_command = "{BIN}/engine releases --changelog {{version}} --json"'))
    return url


def traffic(url: str, seconds: float, stop: threading.Event | None = None) -> threading.Thread:
    plan = TrafficPlan(url=url, key=KEY, rate=5, duration=seconds, seed=int(time.time()))
    t = threading.Thread(target=run_traffic, args=(plan,), daemon=True)
    t.start()
    return t


def detect(build: str, limit: float = 300) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        url = deployment(folder)
        try:
            assert json.loads(backout("switch", "2.3.1", "--yes", "--json", cwd=folder).stdout)["healthy"]
            traffic(url, 60).join()
            backout("baseline", "capture", "--no-evals", cwd=folder)
            switched = time.monotonic()
            # The switch waits for health up to the boot timeout; checks start at once beside it,
            # as a watch window does.
            switch = subprocess.Popen([PY, "-m", "backout", "switch", build, "--yes"], cwd=folder, env=ENV,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            traffic(url, limit)
            checks = 0
            while time.monotonic() - switched < limit:
                out = backout("check", "--no-evals", "--json", cwd=folder)
                checks += 1
                verdict = json.loads(out.stdout) if out.stdout else {"decision": "error"}
                if verdict.get("decision") == "roll-back":
                    seconds = round(time.monotonic() - switched, 1)  # before waiting out the switch's boot timeout
                    switch.wait()
                    return {"build": build, "seconds": seconds, "checks": checks,
                            "triggers": verdict["triggers"], "reason": verdict["reason"]}
                time.sleep(5)
            switch.wait()
            return {"build": build, "seconds": None, "checks": checks, "triggers": [], "reason": "not detected"}
        finally:
            backout("stop", "--yes", cwd=folder)


def good_run(minutes: float) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        url = deployment(folder)
        try:
            backout("switch", "2.3.1", "--yes", cwd=folder)
            traffic(url, 60).join()
            backout("baseline", "capture", "--no-evals", cwd=folder)
            backout("switch", "2.3.0", "--yes", cwd=folder)
            traffic(url, minutes * 60)
            counts: dict[str, int] = {}
            end = time.monotonic() + minutes * 60
            while time.monotonic() < end:
                out = backout("check", "--no-evals", "--json", cwd=folder)
                decision = json.loads(out.stdout)["decision"] if out.stdout else "error"
                counts[decision] = counts.get(decision, 0) + 1
                time.sleep(10)
            return {"minutes": minutes, "verdicts": counts}
        finally:
            backout("stop", "--yes", cwd=folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--good-minutes", type=float, default=10, help="0 skips the good-release run")
    parser.add_argument("--builds", default="2.4.0-errors,2.4.0-latency,2.4.0-health")
    parser.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    args = parser.parse_args()
    rows = [detect(b) for b in args.builds.split(",")]
    good = good_run(args.good_minutes) if args.good_minutes > 0 else None
    targets = {"2.4.0-errors": 60, "2.4.0-latency": 120, "2.4.0-health": 60}
    lines = [f"## {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC — detection latency (`bench/bench_detection.py`)", "",
             "5 requests/s of `engine traffic`, baseline of 60 s on 2.3.1, `backout check` every 5 s from the switch on; default verdict settings (20 s windows, 2 sustained; health 3 failures over 30 s).", "",
             "| broken build | trigger | switch → roll-back | target | met |", "|---|---|---:|---|---|"]
    for r in rows:
        secs = r["seconds"]
        ok = secs is not None and secs <= targets[str(r["build"])]
        lines.append(f"| {r['build']} | {', '.join(r['triggers']) or '-'} | {secs if secs is not None else 'not detected'} s "
                     f"| ≤ {targets[str(r['build'])]} s | {'yes' if ok else 'NO'} |")
    if good is not None:
        false = good["verdicts"].get("roll-back", 0)  # type: ignore[union-attr]
        lines += ["", f"Good release (2.3.1 → 2.3.0) for {args.good_minutes:g} minutes, a check every 10 s: verdicts "
                  f"{json.dumps(good['verdicts'])}; false roll-back: {false} ({'target met' if false == 0 else 'NOT met'}).", ""]
    text = "\n".join(lines)
    print(text)
    old = args.results.read_text(encoding="utf-8") if args.results.exists() else "# Benchmark results\n\n"
    head, _, rest = old.partition("\n## ")
    args.results.write_text(head.rstrip() + "\n\n" + text + "\n" + ("## " + rest if rest else ""), encoding="utf-8")


if __name__ == "__main__":
    main()
