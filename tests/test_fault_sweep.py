"""Fault-injection sweep: `snapshot create`, `snapshot restore`, `rollback` and `upgrade` on the real
Engine, each hit by one fault, then re-run or resumed as an operator would, with the invariants
checked afterwards.

Faults: SIGKILL after a random delay, and strace syscall tampering (`-e inject=S:error=E:when=N`
or `signal=SIGKILL`) on one of the command's own file syscalls (fsync, fdatasync, rename,
renameat2, link, linkat, copy_file_range, pwrite64, openat, unlink) that touch the deployment's
folder. A first traced run of each command lists those calls; each trial picks one (and an
errno: EIO, ENOSPC, EXDEV). Invariants after the recovery: the brain passes integrity_check and
stays in WAL mode, no acknowledged turn is lost (or it sits in a quarantine / salvage bundle that
a command named), every listed snapshot is complete, every exit code is documented, and the
service serves again.

Env: BACKOUT_SWEEP_TRIALS (default 10), BACKOUT_SWEEP_SEED (fixed by default; printed),
BACKOUT_SWEEP_STATS (a JSON file the counts are added to; `make soak`)."""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from scenario_model import (Deployment, Model, Ran, Stats, brain_violations, burst, episode_ids, exit_violations,
                            salvaged_ids, snapshot_violations)

pytestmark = [pytest.mark.slow, pytest.mark.scenarios]

STRACE = shutil.which("strace")
SYSCALLS = ("fsync", "fdatasync", "rename", "renameat", "renameat2", "link", "linkat", "copy_file_range",
            "pwrite64", "openat", "unlink", "unlinkat")
ERRNOS = {"rename": ("EXDEV", "EIO", "ENOSPC"), "renameat": ("EXDEV", "EIO"), "renameat2": ("EXDEV", "EIO"),
          "link": ("EXDEV", "EIO", "ENOSPC"), "linkat": ("EXDEV", "EIO", "ENOSPC"),
          "copy_file_range": ("EXDEV", "EIO", "ENOSPC")}
SWEEP_SEED = 4242
KINDS = ("snapshot-create", "snapshot-restore", "rollback", "upgrade")
MODES = ("error", "signal", "error", "timer")  # an injected errno, SIGKILL at a syscall, SIGKILL after a delay


@dataclass
class Trial:
    """One prepared deployment, the command to hit, what the model knows."""

    kind: str
    dep: Deployment
    argv: tuple[str, ...]
    model: Model = field(default_factory=Model)

    def record(self, ran: Ran) -> Ran:
        """Keep a command's output (it may name quarantines) and its transcript line."""
        self.model.transcript.append(ran.brief())
        self.model.outputs.append(ran.out + "\n" + ran.err)
        return ran

    def turns(self, prefix: str, n: int = 3) -> None:
        """Send turns; the acknowledged ones join the model."""
        self.model.acked.update(burst(self.dep.url, prefix, n))


def prepare(kind: str, folder: Path) -> Trial:
    """A deployment in the state the command expects, with acknowledged turns in the brain."""
    dep = Deployment(folder)
    trial = Trial(kind, dep, ())
    ok = trial.record(dep.run("switch", "2.3.1", "--yes", "--json"))
    assert ok.code == 0, ok.brief()
    trial.turns("before")
    if kind == "snapshot-create":
        trial.argv = ("snapshot", "create", "--json")
    elif kind == "snapshot-restore":
        made = trial.record(dep.run("snapshot", "create", "--json"))
        assert made.code == 0, made.brief()
        trial.turns("after-snapshot")
        assert trial.record(dep.run("stop", "--yes", "--json")).code == 0
        trial.argv = ("snapshot", "restore", made.doc()["id"], "--yes", "--json")
    elif kind == "rollback":
        up = trial.record(dep.run("upgrade", "2.4.0", "--yes", "--json", "--watch", "0"))
        assert up.code == 0, up.brief() + up.out[-2000:]
        trial.turns("bad-window")
        trial.argv = ("rollback", "--yes", "--json")
    else:
        trial.argv = ("upgrade", "2.4.0", "--yes", "--json", "--watch", "0")
    return trial


def strace_argv(trace: str, inject: str | None, out: str = "/dev/null") -> list[str]:
    """strace following the command's threads (not the services it starts: -b execve detaches them)."""
    assert STRACE is not None
    argv = [STRACE, "-f", "-qq", "-b", "execve", "-y", "-o", out, "-e", f"trace={trace}"]
    if inject:
        argv += ["-e", f"inject={inject}"]
    return argv


def run_traced(trial: Trial, prefix: list[str], timeout: float = 300) -> Ran:
    """Run the trial's command under `prefix` (strace) in the deployment's folder."""
    from rollback_setup import ENV

    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKOUT_")} | ENV
    argv = [*trial.argv, "--config", str(trial.dep.config)]
    started = time.monotonic()
    try:
        done = subprocess.run([*prefix, sys.executable, "-m", "backout", *argv], capture_output=True, text=True,
                              env=env, cwd=trial.dep.folder, timeout=timeout, stdin=subprocess.DEVNULL)
        code, out, err = done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired:
        code, out, err = -999, "", f"timed out after {timeout}s"
    return Ran(list(trial.argv), code, out, err, time.monotonic() - started)


def run_killed_after(trial: Trial, delay: float) -> Ran:
    """Start the command and SIGKILL it after `delay` seconds (if it still runs)."""
    from rollback_setup import ENV

    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKOUT_")} | ENV
    started = time.monotonic()
    child = subprocess.Popen([sys.executable, "-m", "backout", *trial.argv, "--config", str(trial.dep.config)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                             cwd=trial.dep.folder, stdin=subprocess.DEVNULL)
    try:
        child.wait(delay)
    except subprocess.TimeoutExpired:
        child.send_signal(signal.SIGKILL)
    out, err = child.communicate(timeout=60)
    return Ran(list(trial.argv), child.returncode, out, err, time.monotonic() - started, fault=f"kill@{delay:.2f}s")


_CALL = re.compile(r"^\d+\s+([a-z0-9_]+)\((.*)$")


def relevant_calls(trace: Path, folder: Path) -> dict[str, list[int]]:
    """Per syscall, the ordinals (strace's `when=N`) of the calls that touch the deployment's folder."""
    counts: dict[str, int] = {}
    found: dict[str, list[int]] = {}
    for line in trace.read_text(errors="replace").splitlines():
        match = _CALL.match(line)
        if not match or "resumed>" in line:
            continue
        name = match.group(1)
        counts[name] = counts.get(name, 0) + 1
        if str(folder) in match.group(2):
            found.setdefault(name, []).append(counts[name])
    return found


def recover(trial: Trial, ran: Ran) -> list[Ran]:
    """What an operator does next: the command `status` prints for a pending operation, else a re-run."""
    runs = []
    for _ in range(3):
        status = trial.dep.run("status", "--json")
        pending = (status.doc() or {}).get("pending") or [] if status.code == 0 else []
        if pending:
            runs.append(trial.record(trial.dep.run_printed(pending[0]["finish"])))
            continue
        if ran.code == 0 or (runs and runs[-1].code == 0):
            break
        last = runs[-1] if runs else ran
        if last.code in (3, 5):  # refused or advised: nothing left to finish
            break
        runs.append(trial.record(trial.dep.run(*trial.argv)))
    return runs


def violations_after(trial: Trial, ran: Ran, recovery: list[Ran]) -> list[str]:
    """The invariants once the operator has recovered."""
    dep, found = trial.dep, []
    for r in recovery:
        found += exit_violations(r)
    if ran.code >= 0 and ran.code != -999:
        found += [v for v in exit_violations(ran) if "traceback" not in v]  # injected errors may surface raw
    if ran.code == -999 or any(r.code == -999 for r in recovery):
        found.append(f"{' '.join(trial.argv)} hung")
    status = dep.run("status", "--json")
    state = status.doc() or {}
    if status.code != 0:
        return found + [f"`status` fails after recovery: {status.brief()}"]
    if state.get("pending"):
        found.append(f"still pending after recovery: {[p.get('detail') for p in state['pending']]}")
    if trial.kind == "snapshot-restore" and not (state.get("running") or {}).get("running"):
        trial.record(dep.run("switch", "2.3.1", "--yes", "--json"))
        state = dep.run("status", "--json").doc() or {}
    if not (state.get("health") or {}).get("ok"):
        found.append(f"nothing serves after recovery (running: {(state.get('running') or {}).get('version')})")
    found += brain_violations(dep.brain)
    listing = dep.run("snapshot", "list", "--json")
    found += snapshot_violations(listing, dep.state_dir / "snapshots" / "engine")
    missing = trial.model.acked - episode_ids(dep.brain)
    for folder in dep.salvage_folders():
        if trial.model.named(folder.parent.name):
            missing -= salvaged_ids(folder)
    for folder in dep.quarantines():
        if trial.model.named(folder.name):
            for brain in folder.glob("*.sqlite"):
                missing -= episode_ids(brain, copy=True)
    if missing:
        found.append(f"{len(missing)} acknowledged turns lost: {sorted(missing)[:5]}")
    return found


def sweep(trials: int, rng: random.Random, stats: Stats) -> list[str]:
    """Run `trials` faulted commands (kinds in turn); every violation, with how to reproduce it."""
    root = Path(tempfile.mkdtemp(prefix="fault-sweep-"))
    problems: list[str] = []
    try:
        targets: dict[str, dict[str, list[int]]] = {}
        durations: dict[str, float] = {}
        for kind in KINDS:  # one traced, unfaulted run per kind: which calls touch the folder, how long it takes
            trial = prepare(kind, root / f"count-{kind}")
            trace = root / f"trace-{kind}.txt"
            ran = run_traced(trial, strace_argv(",".join(SYSCALLS), None, str(trace)))
            assert ran.code == 0, ran.brief() + ran.out[-1000:]
            targets[kind] = relevant_calls(trace, trial.dep.folder)
            durations[kind] = ran.seconds
            trial.dep.close()
        for i in range(trials):
            kind = KINDS[i % len(KINDS)]
            trial = prepare(kind, root / f"trial-{i}")
            try:
                mode = MODES[(i + i // len(KINDS)) % len(MODES)]
                if mode == "timer":
                    delay = rng.uniform(0.3, max(0.6, durations[kind]))
                    ran, fault = run_killed_after(trial, delay), f"SIGKILL after {delay:.2f}s"
                else:
                    syscall = rng.choice(sorted(targets[kind]))
                    when = rng.choice(targets[kind][syscall])
                    errno = rng.choice(ERRNOS.get(syscall, ("EIO", "ENOSPC")))
                    fault = f"{syscall}:{'signal=SIGKILL' if mode == 'signal' else f'error={errno}'}:when={when}"
                    ran = run_traced(trial, strace_argv(syscall, fault))
                trial.record(ran)
                stats.faults_injected += 1
                stats.steps += 1
                if ran.code == -9:
                    stats.crashes_injected += 1
                recovery = recover(trial, ran)
                stats.steps += len(recovery)
                if ran.code == -9 and recovery and recovery[-1].code == 0:
                    stats.crashes_resumed += 1
                outcome = f"{ran.code}->" + ",".join(str(r.code) for r in recovery)
                stats.paths[f"{kind}:{outcome}"] += 1
                stats.fault_points[f"{kind} {fault.split(':when=')[0]}"] += 1
                found = violations_after(trial, ran, recovery)
                print(f"trial {i} {kind} {fault}: {outcome} {'VIOLATION' if found else 'ok'}", file=sys.stderr,
                      flush=True)
                if found:
                    stats.violations += len(found)
                    for v in found:
                        stats.violation_kinds[f"{kind}: {v.split(':')[0][:70]}"] += 1
                    problems.append(f"trial {i} {kind}, fault {fault}:\n    " + "\n    ".join(found) +
                                    "\n  transcript:\n    " + "\n    ".join(trial.model.transcript))
            finally:
                trial.dep.close()
                stats.scenarios += 1
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return problems


@pytest.mark.timeout(2400)
@pytest.mark.skipif(STRACE is None, reason="strace is not installed (scripts/install-system-packages.sh)")
def test_faults_during_snapshot_restore_rollback_and_upgrade_keep_the_invariants() -> None:
    """Each faulted command, once re-run or resumed, leaves the brain whole and every turn kept."""
    trials = int(os.environ.get("BACKOUT_SWEEP_TRIALS", "10"))
    chosen = int(os.environ.get("BACKOUT_SWEEP_SEED") or SWEEP_SEED)
    print(f"fault sweep: {trials} trials, seed {chosen} (repeat with BACKOUT_SWEEP_SEED={chosen})",
          file=sys.stderr, flush=True)
    stats = Stats()
    started = time.monotonic()
    try:
        problems = sweep(trials, random.Random(chosen), stats)
    finally:
        stats.seconds = time.monotonic() - started
        out = os.environ.get("BACKOUT_SWEEP_STATS")
        if out:
            stats.save(Path(out))
    assert not problems, f"{len(problems)} of {trials} trials broke an invariant (seed {chosen}):\n" + \
        "\n".join(problems)

