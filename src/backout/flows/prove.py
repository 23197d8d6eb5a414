"""Before anything stops: prove that the target version exists, may be run, and starts.

`switch` and `upgrade` both call `prove_target` while the running version still serves. A version
judged bad (rolled back from, failed, frozen) is refused; then the runtime's availability check
proves the version exists when it is a real check (an image on the host or in the registry, a
process deployment's `check` command); otherwise a trial boot of the target on a throwaway copy
of the brain (migrations included) on a spare port proves it starts. Failing either: refused,
nothing was stopped, the target's own log lines quoted. `--force` is the only way past, and it is
recorded in the history.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from backout.config import Target
from backout.errors import EXIT_REFUSED, EXIT_USAGE, BackoutError
from backout.evidence import Redactor, secrets_of
from backout.ledger import Ledger
from backout.runtime.base import Runtime, port_free
from backout.runtime.trial import cached_trial, remember_trial, schema_key, trial_boot, trial_possible

__all__ = ["Proof", "TargetRefused", "prove_target"]


class TargetRefused(BackoutError):
    """The target could not be shown to serve: nothing was stopped."""

    def __init__(self, message: str, log_tail: list[str] | None = None) -> None:
        quoted = "".join(f"\n  | {line}" for line in (log_tail or [])[-8:])
        super().__init__(f"{message}; nothing was stopped{quoted}", EXIT_REFUSED)
        self.log_tail = log_tail or []


@dataclass
class Proof:
    """How the target was shown to be startable (or that --force skipped a check)."""

    how: str
    forced: list[str] = field(default_factory=list)  # what --force let through
    trial: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"how": self.how, "forced": self.forced, "trial": self.trial}


def prove_target(target: Target, runtime: Runtime, version: str, force: bool = False,
                 something_runs: bool = True) -> Proof:
    """Proof that `version` may run and starts on this brain, or TargetRefused (with --force: what was let
    through). The availability check proves the version exists; a trial boot, where one is possible,
    proves it starts on the brain as it is (an older version may refuse a brain migrated forward)."""
    forced: list[str] = []
    judged = Ledger(target).standing(version)
    if judged.standing == "bad":
        if not force:
            raise TargetRefused(f"version {version} is judged bad for {target.deployment} ({judged.why}); "
                                f"`backout unfreeze {version} --reason …` once it is fixed, or pass --force")
        forced.append(f"{version} is judged bad ({judged.why})")
    available = runtime.is_available(version)
    if not available.ok:
        if not force:
            raise TargetRefused(f"version {version} is not available: {available.detail}")
        forced.append(f"not available: {available.detail}")
        return Proof("NOT proven (--force)", forced)
    if not something_runs:
        return Proof(available.detail, forced)
    if force:  # the operator insists: a trial would only delay what they asked for (and may take boot_timeout)
        return Proof(f"{available.detail}; NOT proven to start (--force skipped the trial boot)",
                     [*forced, "the trial boot was skipped"])
    why_not = trial_possible(target)
    if why_not is None:
        return _trial(target, runtime, version)
    if available.proven:
        return Proof(f"{available.detail} (no trial boot: {why_not})", forced)
    raise TargetRefused(f"cannot prove that {version} starts before stopping what runs: the runtime has no "
                        f"availability check (set `check` in backout.toml) and no trial boot is possible "
                        f"({why_not}); pass --force to switch without proof")


def _migrates(target: Target) -> bool:
    """Whether the deployment has a migrate command (run by a switch between the stop and the start)."""
    settings = target.require_settings()
    section = settings.process if settings.runtime == "process" else settings.compose
    return bool(section is not None and section.migrate)


def _trial(target: Target, runtime: Runtime, version: str) -> Proof:
    """The proof by a trial boot on a throwaway copy of the brain (its schema alone, for a big one)."""
    key = schema_key(target.brain)
    # A switch runs the migrate command before the start: so does its trial, on the copy. A rollback does
    # not, so its trials are kept apart ("+migrate" in the cache).
    cached_as = f"{version}+migrate" if _migrates(target) else version
    trial = cached_trial(target, cached_as, key)
    if trial is None:
        port = target.require_settings().rollback.trial_port
        if port and not port_free(port):
            raise BackoutError(f"the trial port {port} (`rollback.trial_port` in backout.toml) is already in use by "
                               "another process, so no trial boot can prove the target starts: stop that process or "
                               "choose another trial_port; nothing was stopped", EXIT_USAGE)
        trial = trial_boot(target, runtime, version, skeleton_enough=True, migrate=True)
        if not (trial.skeleton and trial.healthy):  # a pass on the schema alone is no pass for a rollback
            remember_trial(target, cached_as, key, trial, Redactor(secrets_of(target.require_settings())).obj)
    if not trial.healthy:
        hint = f"; if the brain must go back too, `backout rollback --to {version}` restores it" if trial.refused else ""
        raise TargetRefused(f"{version} does not start: a trial boot on a copy of the brain {trial.reason}{hint}; "
                            "pass --force to switch anyway", trial.log_tail)
    return Proof(f"a trial boot on a copy of the brain: {trial.reason} ({trial.how})", [], trial.to_dict())
