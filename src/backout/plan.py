"""Plans and the executor: an ordered list of steps, run one at a time through the journal.

A flow (rollback, upgrade, drill) decides first and builds a Plan: each Step says in words what it
does, the exact commands it runs and the files it touches. `--dry-run` prints the plan; otherwise
`execute` runs the steps not yet done, marking each in the journal as it completes, so a run killed
at any point resumes at the first unfinished step and never repeats a finished one. Every journaled
operation runs through `execute`: upgrade, rollback, snapshot restore and the volume providers' restores.
`BACKOUT_FAULT_AT=before:<step>|after:<step>` kills the process there (tests prove `--resume`); the
names of every fault point are listed in one place, the docstring of `backout.journal`.

A step's commands are the very `Command` objects its action carries out (runtimes, volume providers
and the brain restore build them once, for the plan and for the run); the timeline records, per
step, the commands that were performed, so a dry-run and a real run can be held side by side.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from backout.commands import EXEC, SPAWN, Command, note, recording
from backout.history import now_iso
from backout.journal import Journal, fault_point

__all__ = ["Command", "Plan", "Step", "StepFailed", "execute", "failed_step", "performed_commands", "performing",
           "steps_of", "timeline"]

StepAction = Callable[[], dict[str, Any] | None]


@dataclass
class Step:
    """One step of a plan: what it does, its commands and files, and the code that does it."""

    name: str
    title: str
    commands: list[Command] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    action: StepAction | None = None  # returns facts to keep in the journal
    always: bool = False  # run on every run, a resumed one too, and never marked done (e.g. stopping a service)

    def to_dict(self) -> dict[str, Any]:
        """JSON form (without the action)."""
        return {"name": self.name, "title": self.title, "commands": [c.to_dict() for c in self.commands],
                "files": self.files}

    def render(self, number: int) -> list[str]:
        """The step as lines of text for a plan printout."""
        lines = [f"{number:>2}. {self.title}"]
        lines += [f"      {'$' if c.kind in (EXEC, SPAWN) else '[' + c.kind + ']'} {c.shell()}"
                  + (f"   (env: {', '.join(c.env_names)})" if c.env_names else "") for c in self.commands]
        lines += [f"      file: {f}" for f in self.files]
        return lines


@dataclass
class Plan:
    """A decision and the steps that carry it out."""

    kind: str
    facts: dict[str, Any]
    steps: list[Step]

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"kind": self.kind, **self.facts, "steps": [s.to_dict() for s in self.steps]}


class StepFailed(Exception):
    """A step ended the operation on purpose (e.g. the target never became healthy)."""

    def __init__(self, step: str, message: str, facts: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.step = step
        self.facts = facts or {}


def performing(commands: list[Command], action: Callable[[], object]) -> StepAction:
    """A step's action for commands carried out in-process or by API calls: each is noted as performed, then
    `action` does what they describe; the facts it returns, when a dict, are kept in the journal."""
    def act() -> dict[str, Any] | None:
        for command in commands:
            note(command)
        facts = action()
        return facts if isinstance(facts, dict) else None

    return act


def steps_of(titles: Mapping[str, str], commands: Mapping[str, list[Command]],
             actions: Mapping[str, Callable[[], object]] | None = None, prefix: str = "") -> list[Step]:
    """A step per title, named `prefix + name`, with its commands; with `actions` (by name) each is carried out
    `performing` its commands, without them the steps only show what would run."""
    return [Step(prefix + name, title, commands.get(name, []),
                 action=performing(commands.get(name, []), actions[name]) if actions else None)
            for name, title in titles.items()]


def timeline(journal: Journal) -> list[dict[str, Any]]:
    """The steps run so far, with their times and outcomes, oldest first."""
    entries: list[dict[str, Any]] = journal.data.setdefault("timeline", [])
    return entries


def _record(journal: Journal, step: Step, started: str, seconds: float, outcome: str, detail: str,
            performed: list[Command]) -> None:
    timeline(journal).append({"step": step.name, "title": step.title, "started_at": started,
                              "finished_at": now_iso(), "seconds": round(seconds, 3), "outcome": outcome,
                              "detail": detail, "commands": [c.to_dict() for c in performed]})


def performed_commands(journal: Journal) -> dict[str, list[dict[str, Any]]]:
    """The commands each step performed, from the timeline (a step run again after a crash: its last run)."""
    return {str(entry["step"]): list(entry.get("commands", [])) for entry in timeline(journal)}


def failed_step(journal: Journal) -> str | None:
    """The step whose failure ended the last run, from the timeline (None when the last step ended well)."""
    entries = timeline(journal)
    return str(entries[-1]["step"]) if entries and entries[-1]["outcome"] != "ok" else None


def execute(plan: Plan, journal: Journal, on_step: Callable[[Step, str], None] | None = None) -> None:
    """Run every step the journal has not marked done (and every `always` step), in order; StepFailed or any
    error stops the run."""
    for step in plan.steps:
        if step.action is None or (journal.done(step.name) and not step.always):
            continue
        fault_point(f"before:{step.name}")
        if on_step:
            on_step(step, "start")
        started, clock = now_iso(), time.monotonic()
        with recording() as performed:
            try:
                facts = step.action() or {}
            except StepFailed as exc:
                _record(journal, step, started, time.monotonic() - clock, "failed", str(exc), performed)
                journal.remember(**exc.facts)
                raise
            except BaseException as exc:
                _record(journal, step, started, time.monotonic() - clock, "error", str(exc) or type(exc).__name__,
                        performed)
                journal.save()
                raise
        _record(journal, step, started, time.monotonic() - clock, "ok", str(facts.pop("detail", "")), performed)
        if step.always:
            journal.remember(**facts)
        else:
            journal.mark(step.name, **facts)
        if on_step:
            on_step(step, "done")
        fault_point(f"after:{step.name}")
