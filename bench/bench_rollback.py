"""Rollback time: from `backout rollback --yes` to healthy, per step, for both layers, on a 1 GB brain.

Three scenarios, each in its own process deployment of the reference Engine (tests/rollback_setup.py)
on a copy of one seeded brain, each with a little traffic on the good and on the bad version:
  1. image layer        2.3.0 -> 2.3.1 (same schema), `backout rollback --yes --json`
  2. brain layer, cold  2.3.1 -> 2.4.0-errors (forward-only migration); the decision needs a trial
                        boot on a copy of the brain, the restore copies the snapshot
  3. brain layer, pre-armed  as 2, but the snapshot is staged beside the brain first and one
                        `backout rollback --dry-run` has cached the trial boot (what `backout
                        upgrade` does during its watch window)
and, in the same run, the runbook's manual commands on the same Engine and brain:
  image: SIGTERM the process group and wait, start the old version detached, poll `curl -fsS /health`
  brain: the same around `mv brain quarantine/` and `cp snapshot brain` + `sync brain` (and, as a
         second run, `sqlite3 snapshot ".backup brain"`), `rm -f brain-wal brain-shm`

Time to healthy = from the command's start until its `start` step ended (journal timeline), also seen
from outside by a /health poller (first 200 from the target version). "decision" = wall − Σ steps
(interpreter start, the plan, the trial boot). Targets: image ≤ drain + 5 s, brain pre-armed ≤
drain + 10 s (drain = the measured drain step), and both under the manual commands.

Usage: python bench/bench_rollback.py [--size 1GB] [--seed-brain PATH] [--work DIR] [--results bench/RESULTS.md]
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from backout_cli import backout, backout_json  # noqa: E402
from engine_proc import DEFAULT_KEY  # noqa: E402
from rollback_setup import init_process, prepare_bad_upgrade, turns, url_of  # noqa: E402

PY = sys.executable
BIN = Path(PY).parent
ENV = {"ENGINE_API_KEY": DEFAULT_KEY}
IMAGE_SLACK, BRAIN_SLACK = 5.0, 10.0  # targets: drain + this many seconds
MANUAL_RATIO = 1.0  # "well under the manual commands": time to healthy below this × the manual run
STEPS = ("announce", "diagnostics", "drain", "restore", "salvage", "start", "verify", "freeze", "notify",
         "postmortem", "record")


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def sh(*argv: str) -> None:
    out = subprocess.run(argv, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({out.returncode}): {out.stderr.strip()[-400:]}")


class HealthWatch:
    """Polls /health every 50 ms from outside; the first 200 answered by `version` after `since`."""

    def __init__(self, url: str) -> None:
        self.url = f"{url}/health"
        self.seen: list[tuple[float, int, str | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        with httpx.Client(timeout=0.5) as client:
            while not self._stop.is_set():
                at = time.time()
                try:
                    r = client.get(self.url)
                    version = r.json().get("version") if r.headers.get("content-type", "").startswith(
                        "application/json") else None
                    self.seen.append((at, r.status_code, version))
                except (httpx.HTTPError, ValueError):
                    self.seen.append((at, 0, None))
                self._stop.wait(0.05)

    def first_ok(self, version: str, since: float) -> float | None:
        for at, status, seen_version in self.seen:
            if at >= since and status == 200 and seen_version == version:
                return at
        return None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


class ManualEngine:
    """`engine serve` started by hand, detached (its own session), as the runbook does it."""

    def __init__(self, folder: Path, version: str, brain: Path, port: int) -> None:
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TZ", "VIRTUAL_ENV")}
        env.update(ENV, ENGINE_TURN_MS="20")
        self.log = open(folder / "manual.log", "ab")
        self.version = version
        self.proc = subprocess.Popen([str(BIN / "engine"), "serve", "--release", version, "--brain", str(brain),
                                      "--port", str(port)], env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)

    def term_and_wait(self) -> None:
        """`kill -TERM -- -PGID`, then wait until it has exited."""
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        while self.proc.poll() is None:
            time.sleep(0.05)
        self.log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)
        self.log.close()


def curl_until_healthy(url: str, limit: float = 120) -> None:
    """`until curl -fsS URL/health; do sleep 0.2; done` (0.2 s: the interval backout polls at)."""
    deadline = time.monotonic() + limit
    while subprocess.run(["curl", "-fsS", "-o", "/dev/null", "--max-time", "2", f"{url}/health"],
                         capture_output=True).returncode != 0:
        if time.monotonic() > deadline:
            raise SystemExit(f"{url} did not become healthy within {limit:g}s")
        time.sleep(0.2)


class Bench:
    def __init__(self, size: str, seed_brain: Path, work: Path) -> None:
        self.size, self.seed_brain, self.work = size, seed_brain, work
        self.configs: list[Path] = []
        self.manual: list[ManualEngine] = []
        self.results: dict[str, Any] = {"scenarios": {}, "manual": {}, "load": {}}

    # -- setup ---------------------------------------------------------------------------------

    def prepare(self) -> None:
        if not self.seed_brain.exists():
            print(f"seeding a {self.size} brain (once, about 70 s per GB)…", flush=True)
            self.seed_brain.parent.mkdir(parents=True, exist_ok=True)
            sh(str(BIN / "engine"), "seed", "--brain", str(self.seed_brain), "--size", self.size)
        conn = sqlite3.connect(self.seed_brain)  # one self-contained file to copy
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
        self.bytes = self.seed_brain.stat().st_size
        print(f"brain: {self.seed_brain} ({self.bytes / 2**30:.2f} GiB)", flush=True)

    def deployment(self, name: str) -> Path:
        folder = self.work / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        config = init_process(folder)
        self.configs.append(config)
        sh("cp", "--reflink=auto", str(self.seed_brain), str(folder / "brain.sqlite"))
        os.sync()  # the copy's writeback must not land inside a measurement
        return config

    def settle(self) -> None:
        """Let writeback of the setup finish, so the measurements start from a quiet disk."""
        os.sync()
        time.sleep(2)

    # -- measurements --------------------------------------------------------------------------

    def rollback(self, config: Path, to: str) -> dict[str, Any]:
        """`backout rollback --yes --json`, timed from outside, with its steps from the journal timeline."""
        watch = HealthWatch(url_of(config))
        try:
            time.sleep(0.3)
            load = loadavg()
            t0 = time.time()
            out = subprocess.run([PY, "-m", "backout", "rollback", "--yes", "--json", "-c", str(config)],
                                 capture_output=True, text=True, env={**os.environ, **ENV}, timeout=900)
            wall = time.time() - t0
            time.sleep(0.2)
        finally:
            watch.close()
        if out.returncode != 0:
            raise SystemExit(f"rollback failed ({out.returncode}): {out.stderr[-2000:]}\n{out.stdout[-2000:]}")
        data = json.loads(out.stdout)
        plan, result = data["plan"], data["result"]
        incident = json.loads((Path(result["incident_folder"]) / "incident.json").read_text())
        timeline = {e["step"]: e for e in incident["timeline"]}
        steps = {name: float(e["seconds"]) for name, e in timeline.items()}
        healthy = epoch(timeline["start"]["finished_at"]) - t0
        observed = watch.first_ok(to, t0)
        first_step = min(epoch(e["started_at"]) for e in timeline.values())
        trial = plan.get("trial") or {}
        return {
            "layer": result["layer"], "outcome": result["outcome"], "layer_reason": plan["layer_reason"],
            "wall_s": wall, "steps_s": steps, "decision_s": wall - sum(steps.values()),
            "until_decided_s": float(plan["decided_at"]) - t0, "until_first_step_s": first_step - t0,
            "healthy_s": healthy, "observed_healthy_s": (observed - t0) if observed else None,
            "trial": {k: trial.get(k) for k in ("healthy", "reason", "seconds", "how")} if trial else None,
            "drain": result.get("drain"), "load": load, "salvage": (result.get("salvage") or {}).get("total"),
            "timeline": incident["timeline"],
        }

    def manual_image(self, config: Path, bad: str, good: str) -> dict[str, Any]:
        """The runbook's image rollback on the same Engine, brain and port, idle after the same traffic."""
        backout_json("stop", "--yes", "-c", str(config), env=ENV)
        folder, url = config.parent, url_of(config)
        port = int(url.rsplit(":", 1)[1])
        old = self._manual(folder, bad, port, url)
        turns(config, "manual", strict=False)
        load = loadavg()
        t0 = time.time()
        old.term_and_wait()
        t_stopped = time.time()
        new = self._manual(folder, good, port, url, wait=False)
        curl_until_healthy(url)
        t_healthy = time.time()
        new.term_and_wait()
        return {"stop_s": t_stopped - t0, "start_s": t_healthy - t_stopped, "healthy_s": t_healthy - t0, "load": load}

    def manual_brain(self, config: Path, snapshot: Path, bad: str, good: str, copy: str) -> dict[str, Any]:
        """The runbook's brain rollback: stop, quarantine the brain, copy the snapshot over it, start, poll."""
        folder, url = config.parent, url_of(config)
        port = int(url.rsplit(":", 1)[1])
        brain = folder / "brain.sqlite"
        old = self._manual(folder, bad, port, url)  # migrates the restored brain forward again
        turns(config, "manual", strict=False)
        self.settle()
        load = loadavg()
        t0 = time.time()
        old.term_and_wait()
        t_stopped = time.time()
        quarantine = folder / "manual-quarantine" / f"{copy}-{int(t0)}"
        quarantine.mkdir(parents=True)
        sh("mv", *[str(p) for p in (brain, brain.with_name(brain.name + "-wal"), brain.with_name(brain.name + "-shm"))
                   if p.exists()], f"{quarantine}/")
        t_moved = time.time()
        if copy == "cp+sync":
            sh("cp", str(snapshot), str(brain))
            sh("sync", str(brain))
        else:
            sh("sqlite3", str(snapshot), f".backup '{brain}'")
        t_copied = time.time()
        sh("rm", "-f", f"{brain}-wal", f"{brain}-shm")
        new = self._manual(folder, good, port, url, wait=False)
        curl_until_healthy(url)
        t_healthy = time.time()
        new.term_and_wait()
        shutil.rmtree(quarantine.parent, ignore_errors=True)
        return {"stop_s": t_stopped - t0, "mv_s": t_moved - t_stopped, "copy_s": t_copied - t_moved,
                "start_s": t_healthy - t_copied, "healthy_s": t_healthy - t0, "load": load}

    def _manual(self, folder: Path, version: str, port: int, url: str, wait: bool = True) -> ManualEngine:
        engine = ManualEngine(folder, version, folder / "brain.sqlite", port)
        self.manual.append(engine)
        if wait:
            curl_until_healthy(url)
        return engine

    # -- scenarios -----------------------------------------------------------------------------

    def image(self) -> None:
        config = self.deployment("image")
        prepare_bad_upgrade(config, "2.3.0", "2.3.1")
        turns(config, "bad")
        self.settle()
        self.results["scenarios"]["image"] = r = self.rollback(config, "2.3.0")
        assert r["layer"] == "image", r["layer_reason"]
        self.results["manual"]["image"] = self.manual_image(config, "2.3.1", "2.3.0")
        self._drop(config)

    def brain(self, prearmed: bool) -> None:
        name = "brain-prearmed" if prearmed else "brain-cold"
        config = self.deployment(name)
        snap = prepare_bad_upgrade(config, "2.3.1", "2.4.0-errors")
        from backout.config import resolve_target

        target = resolve_target(config)
        if prearmed:
            from backout.brain.manifest import SnapshotStore
            from backout.brain.restore import stage_snapshot

            start = time.monotonic()
            stage_snapshot(SnapshotStore(target.snapshot_dir), snap["id"], target.brain)
            staged_s = time.monotonic() - start
            start = time.monotonic()
            dry = backout_json("rollback", "--dry-run", "-c", str(config), env=ENV, timeout=600)
            dry_s = time.monotonic() - start
            assert dry["plan"]["layer"] == "brain", dry["plan"]["layer_reason"]
        turns(config, "bad", strict=False)
        self.settle()
        self.results["scenarios"][name] = r = self.rollback(config, "2.3.1")
        assert r["layer"] == "brain", r["layer_reason"]
        if prearmed:
            r["prearm"] = {"stage_s": staged_s, "dry_run_s": dry_s}
        else:
            backout_json("stop", "--yes", "-c", str(config), env=ENV)
            snapshot = target.snapshot_dir / f"{snap['id']}.sqlite"
            for copy in ("cp+sync", ".backup"):
                self.results["manual"][f"brain {copy}"] = self.manual_brain(config, snapshot, "2.4.0-errors",
                                                                          "2.3.1", copy)
        self._drop(config)

    def _drop(self, config: Path) -> None:
        backout("stop", "--yes", "-c", str(config), env=ENV)
        shutil.rmtree(config.parent, ignore_errors=True)

    def cleanup(self) -> None:
        for config in self.configs:
            if config.exists():
                backout("stop", "--yes", "-c", str(config), env=ENV)
        for engine in self.manual:
            engine.kill()
        # Anything still serving a brain of this work folder (an interrupted trial boot, say).
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"serve" in cmdline and any(str(self.work).encode() in arg for arg in cmdline):
                try:
                    os.kill(int(proc.name), signal.SIGKILL)
                except ProcessLookupError:
                    pass
        shutil.rmtree(self.work, ignore_errors=True)


# -- report --------------------------------------------------------------------------------------

NAMES = {"image": "1. image layer (2.3.1 → 2.3.0)", "brain-cold": "2. brain layer, cold (2.4.0-errors → 2.3.1)",
         "brain-prearmed": "3. brain layer, pre-armed (2.4.0-errors → 2.3.1)"}


def machine(work: Path) -> str:
    mem = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
               if line.startswith("MemTotal"))
    df = subprocess.run(["df", "--output=source,fstype", str(work)], capture_output=True, text=True).stdout
    source, fstype = df.splitlines()[-1].split()
    git = ["git", "-C", str(HERE.parent)]
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run([*git, "status", "--porcelain", "--", "src"], capture_output=True, text=True).stdout.strip()
    return (f"{platform.node()}, {os.cpu_count()} cores (`nproc`), {mem / 2**20:.0f} GiB RAM, work folder on "
            f"{source} ({fstype}), {platform.platform()}, Python {platform.python_version()}, "
            f"SQLite {sqlite3.sqlite_version}, commit {commit or '?'}{' + uncommitted src/ changes' if dirty else ''}")


def report(b: Bench, work: Path) -> str:
    s, m = b.results["scenarios"], b.results["manual"]
    order = [k for k in NAMES if k in s]
    manual_brain = min((m[k] for k in ("brain cp+sync", "brain .backup") if k in m), key=lambda x: x["healthy_s"],
                       default=None)
    manual_for = {"image": m.get("image"), "brain-cold": manual_brain, "brain-prearmed": manual_brain}
    head = "| step | " + " | ".join(NAMES[k].split(" (")[0] for k in order) + " |"
    lines = [
        f"## {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC — rollback time to healthy (`bench/bench_rollback.py`), "
        f"brain {b.bytes / 2**30:.2f} GiB (`engine seed --size {b.size}`)", "",
        f"Machine: {machine(work)}. Load average (1/5/15 min) at the start {b.results['load']['start']}, at the end "
        f"{b.results['load']['end']}; at each rollback: " + ", ".join(f"{k} {s[k]['load']}" for k in order) + ". "
        "One run of each; process runtime, `drain_timeout = \"10s\"`, `verify_window = \"1s\"`, the Engine idle "
        "after a few turns (ENGINE_TURN_MS=20); page cache warm.", "",
        "Seconds per step of `backout rollback --yes --json` (journal timeline). \"decision\" = wall − Σ steps: "
        "interpreter start, the plan, the trial boot; \"time to healthy\" = from the command's start until its "
        "`start` step ended; \"seen healthy\" = first 200 from the target's /health, polled every 50 ms from outside.",
        "", head, "|---|" + "---:|" * len(order),
    ]

    def row(label: str, values: list[Any]) -> str:
        return f"| {label} | " + " | ".join("—" if v is None else f"{v:.2f}" for v in values) + " |"

    lines.append(row("decision (wall − Σ steps)", [s[k]["decision_s"] for k in order]))
    lines.append(row("  of which until the plan was decided", [s[k]["until_decided_s"] for k in order]))
    for step in STEPS:
        values = [s[k]["steps_s"].get(step) for k in order]
        if any(v is not None for v in values):
            lines.append(row(step, values))
        if step == "start":
            lines.append("| **time to healthy** | " + " | ".join(f"**{s[k]['healthy_s']:.2f}**" for k in order) + " |")
            lines.append(row("  seen healthy from outside", [s[k]["observed_healthy_s"] for k in order]))
    lines.append(row("wall (whole command)", [s[k]["wall_s"] for k in order]))
    lines += ["", "| scenario | drain | time to healthy | target | met | manual commands | × manual | met |",
              "|---|---:|---:|---|---|---:|---:|---|"]
    verdicts = {}
    for k in order:
        r, drain = s[k], s[k]["steps_s"]["drain"]
        slack = IMAGE_SLACK if k == "image" else BRAIN_SLACK
        man = manual_for[k]
        ratio = r["healthy_s"] / man["healthy_s"] if man else None
        target_ok = r["healthy_s"] <= drain + slack
        if k == "brain-cold":
            target, met = f"none (pre-armed's would be {drain + slack:.2f} s)", "—"
        else:
            target, met = f"≤ drain + {slack:g} s = {drain + slack:.2f} s", "PASS" if target_ok else "MISS"
        ratio_ok = ratio is not None and ratio < MANUAL_RATIO
        verdicts[k] = (target_ok, ratio_ok)
        lines.append(f"| {NAMES[k]} | {drain:.2f} | {r['healthy_s']:.2f} | {target} | {met} | "
                     f"{man['healthy_s']:.2f} | {ratio:.2f}× | {'PASS' if ratio_ok else 'MISS'} (< {MANUAL_RATIO:g}×) |")
    lines += ["", "Manual commands, timed in the same run on the same Engine, brain and port (stop = "
              "`kill -TERM -- -PGID` and wait for the exit; start = `setsid engine serve … &` and "
              "`until curl -fsS …/health; do sleep 0.2; done`):", "",
              "| manual run | stop (drain) | mv brain → quarantine | copy snapshot | start → healthy | total |",
              "|---|---:|---:|---:|---:|---:|"]
    for k, r in m.items():
        copy = {"brain cp+sync": "`cp` + `sync brain`", "brain .backup": "`sqlite3 snap .backup brain`"}.get(k)
        lines.append(f"| {k} | {r['stop_s']:.2f} | {r.get('mv_s', 0):.2f} | "
                     + (f"{r['copy_s']:.2f} ({copy})" if copy else "—") + f" | {r['start_s']:.2f} | {r['healthy_s']:.2f} |")
    notes = []
    for k in order:
        r = s[k]
        trial = r.get("trial")
        notes.append(f"- {NAMES[k]}: layer {r['layer']} ({r['layer_reason']})" +
                     (f"; trial boot: {trial['how']}, {trial['seconds']:.2f}s from start to its verdict"
                      if trial else "") +
                     (f"; pre-armed beforehand (not timed in the rollback): stage {r['prearm']['stage_s']:.2f}s, dry "
                      f"run {r['prearm']['dry_run_s']:.2f}s" if r.get("prearm") else "") +
                     (f"; salvaged {r['salvage']} rows" if r.get("salvage") is not None else "") + ".")
    lines += ["", *notes, ""]
    b.results["verdicts"] = verdicts
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="1GB")
    parser.add_argument("--seed-brain", type=Path, default=None,
                        help="seeded brain to copy (default bench/out/brain-<size>.sqlite, seeded once, shared "
                             "with bench_brain.py)")
    parser.add_argument("--work", type=Path, default=HERE / "out" / "rollback",
                        help="scratch folder on the repo's disk (removed at the end)")
    parser.add_argument("--scenarios", default="image,brain-cold,brain-prearmed")
    parser.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    args = parser.parse_args()
    work = args.work.resolve()
    seed = (args.seed_brain or HERE / "out" / f"brain-{args.size}.sqlite").resolve()
    work.mkdir(parents=True, exist_ok=True)
    b = Bench(args.size, seed, work)
    b.results["load"]["start"] = loadavg()
    try:
        b.prepare()
        for name in args.scenarios.split(","):
            print(f"{name}… (load {loadavg()})", flush=True)
            b.image() if name == "image" else b.brain(prearmed=name == "brain-prearmed")
        b.results["load"]["end"] = loadavg()
        (HERE / "out" / "rollback-last.json").write_text(json.dumps(b.results, indent=2, default=str))
        text = report(b, work)
    finally:
        b.cleanup()
    print(text)
    old = args.results.read_text(encoding="utf-8") if args.results.exists() else "# Benchmark results\n\n"
    head, _, rest = old.partition("\n## ")
    args.results.write_text(head.rstrip() + "\n\n" + text + "\n" + ("## " + rest if rest else ""), encoding="utf-8")


if __name__ == "__main__":
    main()
