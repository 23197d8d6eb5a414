"""Random operator scenarios against the real reference Engine, driven through the `backout` CLI.

A Hypothesis state machine plays an operator: switch (good, broken, unknown, frozen versions),
upgrade with a short watch, rollback (auto, --to, repeated), snapshot create/restore/prune, stop,
traffic bursts (every acknowledged turn is recorded) and crashes (`BACKOUT_FAULT_AT` at a random
step) followed by the `--resume` or `--abandon` command `status` prints. After every step the
invariants of docs/safety.md are checked against the model the test keeps. A failure shrinks to
a minimal sequence; each one found is kept in tests/test_scenario_regressions.py.

Profiles (env BACKOUT_SCENARIO_PROFILE): `ci` (bounded, in `make test`), `soak` (`make soak`),
`compose` (the compose runtime, smaller). The seed is BACKOUT_SCENARIO_SEED, or fixed for `ci`
and random for `soak`; it is printed at the start so a run can be repeated."""

from __future__ import annotations

import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import pytest
from hypothesis import HealthCheck, Phase, seed, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule, \
    run_state_machine_as_test

from compose_setup import docker_env_vars
from scenario_model import (GOOD, ComposeDeployment, RESTORE_POINTS, ROLLBACK_POINTS, UPGRADE_POINTS, VERSIONS, Deployment, Model,
                            Observation, Ran, Stats, Traffic, brain_violations, burst, episode_ids,
                            exit_violations, salvaged_ids, snapshot_violations)

pytestmark = [pytest.mark.slow, pytest.mark.scenarios]

_COMMON = dict(deadline=None, suppress_health_check=list(HealthCheck), print_blob=True)
settings.register_profile("scenarios-ci", max_examples=8, stateful_step_count=10, database=None, **_COMMON)
settings.register_profile("scenarios-soak", max_examples=300, stateful_step_count=10, database=None, **_COMMON)
settings.register_profile("scenarios-compose", max_examples=4, stateful_step_count=8, database=None, **_COMMON)
settings.register_profile("scenarios-quick", max_examples=2, stateful_step_count=5, database=None, **_COMMON)
CI_SEED = 20261204
STATS = Stats()


def scenario_seed(profile: str) -> int:
    """BACKOUT_SCENARIO_SEED, or a fixed seed for the bounded profiles and a random one for soak."""
    given = os.environ.get("BACKOUT_SCENARIO_SEED")
    if given:
        return int(given)
    return random.SystemRandom().randrange(2**32) if profile == "soak" else CI_SEED


class OperatorScenarios(RuleBasedStateMachine):
    """An operator's random sequence of backout commands on one process deployment."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="scenario-"))
        self.dep = self.make_deployment(self.tmp)
        self.model = Model()
        self.obs: Observation | None = None
        self.expect: list[Callable[[Observation], list[str]]] = []
        self.step = 0
        self.crashed_from: str | None = None
        self.started = time.monotonic()
        STATS.scenarios += 1

    def make_deployment(self, folder: Path) -> Deployment:
        """The deployment under test (the compose variant overrides this)."""
        return Deployment(folder)

    # -- running commands ------------------------------------------------------------------------

    def cmd(self, *args: str, fault: str | None = None, traffic: bool = False, label: str | None = None) -> Ran:
        """Run one backout command (optionally under traffic), record it in the model and the stats."""
        self.step += 1
        STATS.steps += 1
        if traffic and self.obs is not None and self.obs.healthy:
            with Traffic(self.dep.url, f"t{self.step}") as load:
                ran = self.dep.run(*args, fault=fault)
            self.model.acked.update(load.acked)
        else:
            ran = self.dep.run(*args, fault=fault)
        self.model.transcript.append(ran.brief() + (" (under traffic)" if traffic else ""))
        self.model.outputs.append(ran.out + "\n" + ran.err)
        if fault:
            STATS.faults_injected += 1
            STATS.fault_points[f"{args[0]} {fault} -> {ran.code}"] += 1
        STATS.paths[f"{label or ' '.join(args[:2] if args[0] == 'snapshot' else args[:1])}:{ran.code}"] += 1
        problems = exit_violations(ran)
        self.expect.append(lambda _obs: problems)
        return ran

    @staticmethod
    def snapshot_id(obs: Observation, pick: int) -> str | None:
        """The listed snapshot at index `pick` modulo their number (an index keeps replays' draws stable)."""
        ids = [s["id"] for s in (obs.listing.doc() or {}).get("snapshots") or []]
        return ids[pick % len(ids)] if ids else None

    def before(self) -> Observation:
        """The observation made after the previous step."""
        assert self.obs is not None
        return self.obs

    def expect_moved_or_kept(self, ran: Ran, target: str, before: Observation, forced: bool = False) -> None:
        """The checks every switch/upgrade/rollback gets: refused -> unchanged, never onto a bad version."""
        bad_before, was_healthy, was_running = set(self.model.bad), before.healthy, before.running
        what = f"`backout {' '.join(ran.argv)}`"

        def check(after: Observation) -> list[str]:
            found = []
            if ran.code == 3 and was_running is not None and after.running != was_running:
                found.append(f"{what} refused (3) but the running version changed: {was_running} -> {after.running}")
            if ran.code == 3 and was_healthy and not after.healthy:
                found.append(f"{what} refused (3) but {was_running} no longer serves")
            moved_to = after.running if after.running != was_running else None
            if moved_to in bad_before and not forced:
                found.append(f"{what} moved the deployment onto {moved_to}, a version judged bad before")
            if ran.code not in (0, 3, -9) and was_healthy and not after.healthy and not after.pending and not forced:
                found.append(f"{what} exited {ran.code} and left nothing serving (before: {was_running} healthy); "
                             f"production was stopped for a target that cannot serve")
            return found

        self.expect.append(check)

    def traffic(self, n: int) -> None:
        """A burst of n turns; the acknowledged ones join the model."""
        self.step += 1
        acked = burst(self.dep.url, f"b{self.step}", n)
        self.model.acked.update(acked)
        self.model.transcript.append(f"traffic: {n} turns, {len(acked)} acknowledged")
        STATS.paths[f"traffic:{'acked' if acked else 'refused'}"] += 1

    # -- rules -------------------------------------------------------------------------------------

    @initialize(version=st.sampled_from(("2.3.0", "2.3.1")), n=st.integers(1, 4),
                upgraded_to=st.sampled_from((None, "2.4.0", "2.4.1")))
    def start(self, version: str, n: int, upgraded_to: str | None) -> None:
        """Start a good version and send a few turns; maybe upgrade at once (a restore point to go back to)."""
        ran = self.cmd("switch", version, "--yes", "--json")
        assert ran.code == 0, ran.brief()
        self.traffic(n)
        if upgraded_to:
            ran = self.cmd("upgrade", upgraded_to, "--yes", "--json", "--watch", "0")
            assert ran.code == 0, ran.brief()
            self.traffic(n)

    @rule(n=st.integers(1, 6))
    def send_turns(self, n: int) -> None:
        """A burst of turns; each acknowledged one must never be lost silently."""
        self.traffic(n)

    @rule(version=st.sampled_from(VERSIONS), traffic=st.booleans())
    def switch(self, version: str, traffic: bool) -> None:
        """`backout switch VERSION` (good, broken, unknown or frozen)."""
        before = self.before()
        ran = self.cmd("switch", version, "--yes", "--json", traffic=traffic)
        self.expect_moved_or_kept(ran, version, before)

    @precondition(lambda self: bool(self.model.bad))
    @rule(pick=st.integers(0, 5))
    def switch_forced(self, pick: int) -> None:
        """`backout switch VERSION --force` onto a version judged bad: allowed, and recorded in the history."""
        before = self.before()
        version = sorted(self.model.bad)[pick % len(self.model.bad)]
        ran = self.cmd("switch", version, "--force", "--yes", "--json", label="switch --force")
        if ran.code == 0:
            self.model.forced.add(version)
        self.expect_moved_or_kept(ran, version, before, forced=True)
        history = self.dep.run("history", "--json")

        def check(_after: Observation) -> list[str]:
            entries = history.doc() if history.code == 0 else None
            if ran.code == 0 and not (isinstance(entries, list) and entries and entries[-1].get("forced")):
                return [f"`switch {version} --force` is not recorded as forced in the history"]
            return []

        self.expect.append(check)

    @rule(version=st.one_of(st.sampled_from(GOOD), st.sampled_from(VERSIONS)), traffic=st.booleans())
    def upgrade(self, version: str, traffic: bool) -> None:
        """`backout upgrade VERSION --watch 2s`: promoted, rolled back by itself, or refused."""
        before = self.before()
        ran = self.cmd("upgrade", version, "--yes", "--json", "--watch", "2s", traffic=traffic)
        self.expect_moved_or_kept(ran, version, before)
        self.learn_from(ran, before)

    @rule(traffic=st.booleans())
    def rollback(self, traffic: bool) -> None:
        """`backout rollback` (to the restore point; repeated, it must refuse rather than go forward)."""
        self.do_rollback((), traffic)

    @rule(to=st.sampled_from(VERSIONS), traffic=st.booleans())
    def rollback_to(self, to: str, traffic: bool) -> None:
        """`backout rollback --to VERSION` (good, bad, unknown)."""
        self.do_rollback(("--to", to), traffic)

    def do_rollback(self, extra: tuple[str, ...], traffic: bool) -> None:
        """Run a rollback and expect it either to move onto a good version or to change nothing."""
        before = self.before()
        ran = self.cmd("rollback", "--yes", "--json", *extra, traffic=traffic,
                       label="rollback" + (" --to" if extra else ""))
        self.expect_moved_or_kept(ran, extra[-1] if extra else "", before)
        self.learn_from(ran, before)

    @precondition(lambda self: self.obs is not None and self.obs.running is not None)
    @rule()
    def stop(self) -> None:
        """`backout stop`: drained; every acknowledged turn is in the brain."""
        ran = self.cmd("stop", "--yes", "--json")

        def check(after: Observation) -> list[str]:
            if ran.code == 0 and after.running is not None:
                return [f"`backout stop` exited 0 but {after.running} still runs"]
            return []

        self.expect.append(check)

    @rule(pin=st.booleans())
    def snapshot_create(self, pin: bool) -> None:
        """`backout snapshot create` (online; the service keeps running)."""
        before = self.before()
        ran = self.cmd("snapshot", "create", "--json", *(("--pin",) if pin else ()))

        def check(after: Observation) -> list[str]:
            if ran.code == 0:
                made = (ran.doc() or {}).get("id")
                listed = {s["id"] for s in (after.listing.doc() or {}).get("snapshots") or []}
                if made not in listed:
                    return [f"snapshot {made} was created (exit 0) but is not listed"]
            if before.healthy and not after.healthy:
                return ["`backout snapshot create` stopped the service from serving"]
            return []

        self.expect.append(check)

    @rule(data=st.data())
    def snapshot_restore(self, data: st.DataObject) -> None:
        """`backout snapshot restore ID`: refused while the service runs; else the brain is the snapshot."""
        before = self.before()
        pick = data.draw(st.integers(0, 5), label="snapshot (index, newest first)")
        sid = self.snapshot_id(before, pick)
        if sid is None:
            return
        ran = self.cmd("snapshot", "restore", sid, "--yes", "--json")
        was_running = before.running

        def check(after: Observation) -> list[str]:
            if was_running is not None and ran.code == 0:
                return [f"`snapshot restore` ran (exit 0) while {was_running} was running"]
            return []

        self.expect.append(check)

    @rule(keep=st.integers(1, 2))
    def snapshot_prune(self, keep: int) -> None:
        """`backout snapshot prune --keep-last N`: never the restore point nor what a journal needs."""
        before = self.before()
        point = (before.state.get("restore_point") or {}).get("snapshot_id")
        ran = self.cmd("snapshot", "prune", "--keep-last", str(keep), "--yes", "--json")

        def check(after: Observation) -> list[str]:
            listed = {s["id"] for s in (after.listing.doc() or {}).get("snapshots") or []}
            if ran.code == 0 and point and point not in listed:
                return [f"`snapshot prune --keep-last {keep}` deleted the restore point's snapshot {point}"]
            return []

        self.expect.append(check)

    @rule(data=st.data())
    def crash_rollback(self, data: st.DataObject) -> None:
        """`backout rollback` killed at a random step."""
        self.crash(data, "rollback")

    @rule(data=st.data())
    def crash_upgrade(self, data: st.DataObject) -> None:
        """`backout upgrade` killed at a random step."""
        self.crash(data, "upgrade")

    @rule(data=st.data())
    def crash_restore(self, data: st.DataObject) -> None:
        """`backout snapshot restore` killed at a random step."""
        self.crash(data, "restore")

    def crash(self, data: st.DataObject, kind: str) -> None:
        """A command killed (SIGKILL) at a random step; `status` must then list what is pending."""
        before = self.before()
        if kind == "rollback":
            point = data.draw(st.sampled_from(ROLLBACK_POINTS), label="point")
            args: tuple[str, ...] = ("rollback", "--yes", "--json")
        elif kind == "upgrade":
            point = data.draw(st.sampled_from(UPGRADE_POINTS), label="point")
            version = data.draw(st.sampled_from(GOOD + ("2.4.0-crash", "2.4.0-errors")), label="version")
            args = ("upgrade", version, "--yes", "--json", "--watch", "2s")
        else:
            point = data.draw(st.sampled_from(RESTORE_POINTS), label="point")
            sid = self.snapshot_id(before, data.draw(st.integers(0, 5), label="snapshot (index, newest first)"))
            if sid is None:
                return
            args = ("snapshot", "restore", sid, "--yes", "--json")
        ran = self.cmd(*args, fault=point, label=f"crash {kind}")
        if ran.code == -9:
            STATS.crashes_injected += 1
            self.crashed_from = before.running
        else:
            self.expect_moved_or_kept(ran, "", before)
            self.learn_from(ran, before)
            return
        was_running = before.running

        def check(after: Observation) -> list[str]:
            if was_running is not None and after.running is None and not after.pending:
                return [f"`backout {' '.join(args)}` killed at {point} left nothing running and `status` "
                        f"lists nothing pending to finish it"]
            return []

        self.expect.append(check)
        then = data.draw(st.sampled_from(("finish", "abandon", "later")), label="then")
        if then != "later":  # the operator acts at once: check the crashed state, then finish or abandon
            self.invariants_hold()
            if self.before().pending:
                self.finish_pending(then)

    @precondition(lambda self: self.obs is not None and bool(self.obs.pending))
    @rule(how=st.sampled_from(("finish", "abandon")))
    def finish_pending(self, how: str) -> None:
        """Run the command `status` prints to finish (`--resume`) or abandon an interrupted operation."""
        before = self.before()
        item = before.pending[0]
        if not item.get(how):  # a restore is finished by running it again; it need not offer an abandon
            how = "abandon" if how == "finish" else "finish"
        command = item.get(how)
        if not command:
            self.expect.append(lambda _obs: [f"`status` lists a pending {item.get('kind')} without a command "
                                             f"that finishes or abandons it: {item}"])
            return
        self.step += 1
        STATS.steps += 1
        ran = self.dep.run_printed(command, json_output=True)
        self.model.transcript.append(ran.brief() + f" (as printed by status: {command})")
        self.model.outputs.append(ran.out + "\n" + ran.err)
        STATS.paths[f"{how} {item.get('kind')}:{ran.code}"] += 1
        if ran.code == 0:
            if how == "finish":
                STATS.crashes_resumed += 1
            else:
                STATS.crashes_abandoned += 1
        problems = exit_violations(ran)
        if ran.code == 2:
            problems.append(f"`{command}`, as `status` prints it, fails with a usage error: "
                            f"{ran.err.strip()[-200:]}")
        if ran.code == 3 and "is pending" in ran.err:
            problems.append(f"`{command}`, as `status` prints it, refuses because another operation is pending "
                            f"(two operations were let in at once): {ran.err.strip()[-200:]}")
        self.expect.append(lambda _obs: problems)
        if how == "finish":
            self.expect_moved_or_kept(ran, "", before)
            self.learn_from(ran, before)

    # -- what the model learns -------------------------------------------------------------------

    def learn_from(self, ran: Ran, before: Observation) -> None:
        """A version rolled back from is judged bad: after `rollback`, and after an upgrade's own rollback."""
        if ran.argv[:1] == ["rollback"] and ran.code == 0:
            doc = ran.doc()
            result = (doc.get("result") or {}) if isinstance(doc, dict) else {}
            # a resumed rollback left from what ran when the killed one started, not from what runs now
            gone = result.get("from_version") or (self.crashed_from if "--resume" in ran.argv else before.running)
            if gone and result.get("outcome", "rolled-back") == "rolled-back":
                self.model.bad.add(gone)
        for event in ran.events():
            rollback = event.get("rollback") if isinstance(event.get("rollback"), dict) else None
            if rollback and rollback.get("outcome") == "rolled-back" and rollback.get("from_version"):
                self.model.bad.add(rollback["from_version"])
            if event.get("event") == "upgrade-failed" and event.get("outcome") == "rolled-back":
                self.model.bad.add(event["to_version"])

    # -- invariants --------------------------------------------------------------------------------

    @invariant()
    def invariants_hold(self) -> None:
        """Every invariant, after every step."""
        obs = self.dep.observe()
        found: list[str] = []
        for check in self.expect:
            found += check(obs)
        self.expect = []
        found += self.general(obs)
        self.obs = obs
        ignore = [w for w in os.environ.get("BACKOUT_SCENARIO_IGNORE", "").split(",") if w]
        if ignore:  # exploring past violations already recorded in tests/test_scenario_regressions.py
            for problem in [p for p in found if any(w in p for w in ignore)]:
                found.remove(problem)
                STATS.violation_kinds["ignored: " + problem.split(":")[0][:80]] += 1
        if found:
            STATS.violations += len(found)
            for problem in found:
                STATS.violation_kinds[problem.split(":")[0][:80]] += 1
            raise AssertionError("invariant violated:\n  " + "\n  ".join(found) + "\nsequence:\n  " +
                                 "\n  ".join(self.model.transcript))

    def general(self, obs: Observation) -> list[str]:
        """The invariants that hold whatever the step was."""
        found = exit_violations(obs.status) + exit_violations(obs.dry_run) + exit_violations(obs.listing)
        if obs.status.code != 0:
            return found + [f"`backout status --json` failed: {obs.status.brief()}"]
        found += brain_violations(self.dep.brain)
        found += snapshot_violations(obs.listing, self.dep.state_dir / "snapshots" / "engine")
        found += self.agreement(obs)
        running = obs.running
        if obs.healthy and obs.serving and running != obs.serving:
            found.append(f"`status` says {running or 'nothing'} runs while /health is answered by {obs.serving}")
        if running in self.model.bad and running not in self.model.forced:
            found.append(f"{running} runs although it was judged bad (rolled back from or frozen)")
        forgotten = self.model.bad - obs.judged_bad
        if forgotten:
            found.append(f"the version ledger forgot that {sorted(forgotten)} were judged bad "
                         f"(frozen: {obs.state.get('frozen')})")
        if not obs.pending:
            found += self.rows_kept()
        return found

    def agreement(self, obs: Observation) -> list[str]:
        """`status --json` and `rollback --dry-run --json` agree on the rollback target and restore point."""
        if obs.pending:
            return []
        target = (obs.state.get("rollback_target") or {}).get("version")
        dry = obs.dry_run
        if dry.code not in (0, 2, 3):
            return [f"`rollback --dry-run` exited {dry.code}: {dry.brief()}"]
        if dry.code != 0:
            if target is not None:
                return [f"`status` says the rollback target is {target} but `rollback --dry-run` refuses: "
                        f"{dry.err.strip()[-200:]}"]
            return []
        plan = (dry.doc() or {}).get("plan") or {}
        found = []
        if plan.get("to_version") != target:
            found.append(f"`status` says the rollback target is {target}, `rollback --dry-run` plans "
                         f"{plan.get('to_version')}")
        point = (obs.state.get("restore_point") or {}).get("snapshot_id")
        planned = (plan.get("restore_point") or {}).get("snapshot_id")
        if plan.get("restore_point") is not None and planned != point:
            found.append(f"`status` says the restore point's snapshot is {point}, `rollback --dry-run` uses {planned}")
        return found

    def rows_kept(self) -> list[str]:
        """Every acknowledged turn is in the brain, or in a quarantine/salvage bundle a command named."""
        missing = self.model.acked - episode_ids(self.dep.brain)
        if not missing:
            return []
        for folder in self.dep.salvage_folders():
            if self.model.named(folder.parent.name):
                missing -= salvaged_ids(folder)
        unnamed: set[str] = set()
        for folder in self.dep.quarantines():
            held = set()
            for brain in folder.glob("*.sqlite"):
                held |= episode_ids(brain, copy=True)
            if self.model.named(folder.name):
                missing -= held
            else:
                unnamed |= missing & held
        if not missing:
            return []
        where = f" ({len(unnamed)} only in a quarantine no command named)" if unnamed else ""
        return [f"{len(missing)} acknowledged turns are lost{where}: {sorted(missing)[:6]}"]

    def teardown(self) -> None:
        """Stop what runs and delete the folder."""
        if os.environ.get("BACKOUT_SCENARIO_VERBOSE"):
            print("scenario:\n  " + "\n  ".join(self.model.transcript), file=sys.stderr, flush=True)
        try:
            self.dep.close()
        finally:
            STATS.seconds += time.monotonic() - self.started
            shutil.rmtree(self.tmp, ignore_errors=True)


def run_profile(machine: type[RuleBasedStateMachine], profile: str) -> None:
    """Run a state machine under one profile with the printed seed; save the counts if asked."""
    chosen = scenario_seed(profile)
    print(f"scenario profile {profile}, seed {chosen} (repeat with BACKOUT_SCENARIO_SEED={chosen})",
          file=sys.stderr, flush=True)
    chosen_settings = settings.get_profile(f"scenarios-{profile}")
    examples, steps = os.environ.get("BACKOUT_SCENARIO_EXAMPLES"), os.environ.get("BACKOUT_SCENARIO_STEPS")
    if examples or steps:
        chosen_settings = settings(chosen_settings, max_examples=int(examples or chosen_settings.max_examples),
                                   stateful_step_count=int(steps or chosen_settings.stateful_step_count))
    if os.environ.get("BACKOUT_SCENARIO_NO_SHRINK"):  # exploring: report the first failure as found
        chosen_settings = settings(chosen_settings, phases=[Phase.explicit, Phase.generate])
    try:
        run_state_machine_as_test(seed(chosen)(machine), settings=chosen_settings)
    finally:
        out = os.environ.get("BACKOUT_SCENARIO_STATS")
        if out:
            STATS.save(Path(out))


# A soak runs as long as its 300 scenarios take (about two hours on two cores); the bounded profiles stop at 40 min.
@pytest.mark.timeout(0 if os.environ.get("BACKOUT_SCENARIO_PROFILE") == "soak" else 2400)
def test_operator_scenarios_keep_the_invariants() -> None:
    """Random operator sequences on the process runtime keep every invariant."""
    profile = os.environ.get("BACKOUT_SCENARIO_PROFILE", "ci")
    run_profile(OperatorScenarios, profile if profile in ("soak", "quick") else "ci")



class ComposeOperatorScenarios(OperatorScenarios):
    """The same operator, on the compose runtime (real Docker, engine:<version> images)."""

    def make_deployment(self, folder: Path) -> Deployment:
        """A compose project with the brain on a named volume."""
        return ComposeDeployment(folder, docker_env_vars())


@pytest.mark.docker
@pytest.mark.timeout(2400)
def test_operator_scenarios_on_compose_keep_the_invariants(docker_env: dict[str, str]) -> None:
    """Random operator sequences on the compose runtime keep every invariant (smaller profile)."""
    run_profile(ComposeOperatorScenarios, "compose")
