"""Scenario files: the observations of one check, and the verdict they should get, as compact JSON.

Hand-written files (tests/scenarios/) describe series with seeded generators; recorded live runs
(`record_scenario`) list every request and probe. Both load into the same Observations.

Format (every time is in seconds relative to the switch, t=0; all keys but "label" optional):

    {
      "description": "why this case matters",
      "label": "roll-back" | "hold" | "inconclusive",
      "trigger": "errors" | ["errors", ...],      # for roll-back: signals that must be among the triggers
      "not_counted": ["concentrated"],            # substrings the verdict's not_counted must contain
      "policy": {"tie_breaker": "hold", ...},     # overrides of Policy's fields
      "switched_at": 0,                           # epoch of the switch (null: unknown); default 0
      "now": 360,                                 # default: end of the current series / last probe
      "baseline": {"version": "2.3.1", "requests": REQUESTS},   # series ending at t=0
      "current":  {"version": "2.4.0", "requests": REQUESTS},   # series starting at t=0
      "health": HEALTH,
      "evals": {"baseline": {"case": true, ...}, "now": {"case": false, ...}},
      "reports": ["replies are empty since the upgrade"],
      "expected": {"metrics": ["latency"], "eval_cases": ["tone"]}   # announced in the changelog
    }

REQUESTS is a list of rows [ts, status, ms, task_id, code, path] (trailing fields may be left
out: task_id null, code null, path "") — the rows of backout.signals.baseline — or
{"rows": [...], "generate": GEN or [GEN, ...]} (either key optional; several generators overlap in
time, e.g. a main stream plus a trickle of one failing request shape). GEN is deterministic for a
given seed:

    {"generate": {"seconds": 300, "rps": 2,            # or "count": 600 instead of "rps"
                  "error_rate": 0.004, "latency_ms": [40, 8],   # normal(mean, sd), at least 1 ms
                  "seed": 1, "tasks": 20,              # task ids t1..t20 (0: no task ids)
                  "poisoned_task_share": 0.0, "poisoned_task": "poisoned",  # that share always fails
                  "error_code": "INTERNAL_ERROR", "status": 500, "path": "/items",   # of the errors
                  "phases": [{"seconds": 60}, {"seconds": 120, "error_rate": 0.3}]}}

Phases run one after the other; each takes the generator's keys, overridden by its own. A phase
has exactly round(n * error_rate) errors among its non-poisoned requests, evenly spaced in time.

HEALTH is a list of rows [ts, ok, status_code, ["subsystem", ...], reason] (the last two optional)
or a generator: probes every `every` seconds from `from` (default: `every`) to `until` (default:
now), failing inside each [from, to) of "fail" (to null: until the end):

    {"generate": {"every": 30, "fail": [{"from": 120, "to": null, "failing": ["database"],
                                         "status_code": 503}]}}

EVALS sides are {case: passed} or {"cases": {case: passed}, "version": ..., "source": ..., "ts": ...}."""

from __future__ import annotations

import json
import math
import os
import random
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

from backout.signals.baseline import rows_to_requests
from backout.signals.model import (
    Decision, EvalRun, ExpectedChanges, HealthSample, Observations, Policy, RequestSample,
)

__all__ = [
    "Scenario", "ScenarioError", "load_scenario", "record_scenario", "scenario_from_dict", "scenario_to_dict",
]

# The policy scenario files are written against (their "policy" key overrides it): one-minute
# windows and three minutes of failing health, the runbook's slow, cautious reading. Deployments
# get tighter defaults from backout.toml (20 s windows, 30 s of failing health).
SCENARIO_POLICY = Policy(window_seconds=60.0, health_seconds=180.0)

_DECISIONS = ("roll-back", "hold", "inconclusive")
_GENERATOR_DEFAULTS: dict[str, Any] = {
    "rps": 1.0, "count": None, "error_rate": 0.0, "latency_ms": [40, 8], "seed": 0, "tasks": 20,
    "poisoned_task_share": 0.0, "poisoned_task": "poisoned", "error_code": "INTERNAL_ERROR", "path": "",
    "status": 500,
}


class ScenarioError(ValueError):
    """A scenario file that cannot be read; the message names the file and the key."""


@dataclass
class Scenario:
    """One labelled case: the observations, the policy, and the verdict they should get."""

    name: str
    label: Decision
    observations: Observations
    policy: Policy = field(default_factory=Policy)
    triggers: list[str] = field(default_factory=list)  # for roll-back: must be among the verdict's
    not_counted: list[str] = field(default_factory=list)  # substrings expected in the verdict's not_counted
    description: str = ""


# ---------------------------------------------------------------- loading


def load_scenario(path: str | os.PathLike[str]) -> Scenario:
    """Read a scenario file (format in this module's docstring)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ScenarioError(f"{path}: not JSON: {exc}") from exc
    try:
        return scenario_from_dict(data, name=path.stem)
    except (KeyError, TypeError, ValueError) as exc:
        raise ScenarioError(f"{path}: {exc}") from exc


def scenario_from_dict(data: dict[str, Any], name: str = "scenario") -> Scenario:
    """Build a Scenario from the parsed JSON of a scenario file."""
    label = data.get("label")
    if label not in _DECISIONS:
        raise ValueError(f"label must be one of {', '.join(_DECISIONS)} (got {label!r})")
    switched = data.get("switched_at", 0.0)
    offset = float(switched) if switched is not None else 0.0
    baseline, current = data.get("baseline", {}), data.get("current", {})
    base_requests = _requests(baseline.get("requests", []), end=0.0)
    requests = _requests(current.get("requests", []), start=0.0)
    now = data.get("now")
    if now is None:
        now = max([_series_end(current.get("requests", []), 0.0)] + [r.ts for r in requests]
                  + _explicit_health_times(data.get("health")), default=0.0)
    health = _health(data.get("health", []), float(now))
    evals = data.get("evals") or {}
    expected = data.get("expected") or {}
    obs = Observations(
        now=float(now) + offset, switched_at=None if switched is None else offset,
        baseline_requests=_shift(base_requests, offset), requests=_shift(requests, offset),
        health=[replace(h, ts=h.ts + offset) for h in health],
        baseline_evals=_eval_run(evals.get("baseline")), evals=_eval_run(evals.get("now")),
        customer_reports=[str(r) for r in data.get("reports", [])],
        expected=ExpectedChanges(set(expected.get("metrics", [])), set(expected.get("eval_cases", []))),
        version=current.get("version"), baseline_version=baseline.get("version"))
    trigger = data.get("trigger", [])
    return Scenario(name, label, obs, _policy(data.get("policy") or {}),
                    [trigger] if isinstance(trigger, str) else list(trigger),
                    list(data.get("not_counted", [])), str(data.get("description", "")))


def _policy(overrides: dict[str, Any]) -> Policy:
    known = {f.name for f in fields(Policy)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"policy: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    return replace(SCENARIO_POLICY, **overrides)


def _shift(requests: list[RequestSample], offset: float) -> list[RequestSample]:
    return [replace(r, ts=r.ts + offset) for r in requests] if offset else requests


def _generators(spec: dict[str, Any]) -> list[dict[str, Any]]:
    gen = spec.get("generate", [])
    return [gen] if isinstance(gen, dict) else list(gen)


def _requests(spec: Any, start: float | None = None, end: float | None = None) -> list[RequestSample]:
    """Rows and/or generators: a generated baseline ends at `end`, a current series starts at `start`."""
    if isinstance(spec, list):
        spec = {"rows": spec}
    if not isinstance(spec, dict) or not set(spec) <= {"generate", "rows"}:
        raise ValueError(f"requests must be a list of rows or {{\"generate\": ..., \"rows\": [...]}} "
                         f"(got {spec!r:.80})")
    out = rows_to_requests(spec.get("rows", []))
    for gen in _generators(spec):
        first = start if start is not None else (end or 0.0) - _duration(gen)
        out += _generate(gen, first)
    return sorted(out, key=lambda r: r.ts)


def _phases(gen: dict[str, Any]) -> list[dict[str, Any]]:
    common = {k: v for k, v in gen.items() if k != "phases"}
    unknown = sorted(set(common) - set(_GENERATOR_DEFAULTS) - {"seconds"})
    if unknown:
        raise ValueError(f"generate: unknown key(s) {', '.join(unknown)}")
    return [{**_GENERATOR_DEFAULTS, **common, **phase} for phase in gen.get("phases") or [{}]]


def _duration(gen: dict[str, Any]) -> float:
    return sum(float(p["seconds"]) for p in _phases(gen))


def _series_end(spec: Any, start: float) -> float:
    gens = _generators(spec) if isinstance(spec, dict) else []
    return start + max((_duration(g) for g in gens), default=0.0)


def _generate(gen: dict[str, Any], start: float) -> list[RequestSample]:
    out: list[RequestSample] = []
    t = start
    for index, phase in enumerate(_phases(gen)):
        out += _generate_phase(phase, t, random.Random(int(phase["seed"]) * 1009 + index))
        t += float(phase["seconds"])
    return out


def _generate_phase(p: dict[str, Any], start: float, rng: random.Random) -> list[RequestSample]:
    seconds = float(p["seconds"])
    n = int(p["count"]) if p["count"] is not None else round(float(p["rps"]) * seconds)
    poisoned = set(rng.sample(range(n), round(n * float(p["poisoned_task_share"]))))
    normal = [i for i in range(n) if i not in poisoned]
    n_errors = round(len(normal) * float(p["error_rate"]))
    # Errors evenly spread over the phase, so every window of it gets its share.
    failing = {normal[math.floor((k + 0.5) * len(normal) / n_errors)] for k in range(n_errors)}
    latency = p["latency_ms"]
    mean, sd = (float(latency[0]), float(latency[1])) if isinstance(latency, list) else (latency, latency / 5)
    out = []
    for i in range(n):
        ms = round(max(1.0, rng.gauss(mean, sd)), 1)
        task = f"t{rng.randrange(int(p['tasks'])) + 1}" if p["tasks"] else None
        bad = i in poisoned or i in failing
        out.append(RequestSample(round(start + (i + 0.5) * seconds / n, 3), int(p["status"]) if bad else 200, ms,
                                 p["poisoned_task"] if i in poisoned else task, p["path"],
                                 p["error_code"] if bad else None))
    return out


def _explicit_health_times(spec: Any) -> list[float]:
    return [float(row[0]) for row in spec] if isinstance(spec, list) else []


def _health(spec: Any, now: float) -> list[HealthSample]:
    if isinstance(spec, list):
        return sorted((_health_row(row) for row in spec), key=lambda h: h.ts)
    if not isinstance(spec, dict) or "generate" not in spec:
        raise ValueError(f"health must be a list of rows or {{\"generate\": {{...}}}} (got {spec!r:.80})")
    gen = spec["generate"]
    every = float(gen.get("every", 30))
    t, until = float(gen.get("from", every)), float(gen.get("until", now))
    out = []
    while t <= until + 1e-9:
        out.append(_probe_at(t, gen.get("fail", [])))
        t += every
    return out


def _probe_at(t: float, failures: list[dict[str, Any]]) -> HealthSample:
    for f in failures:
        to = f.get("to")
        if float(f["from"]) <= t and (to is None or t < float(to)):
            failing = tuple(f.get("failing", ()))
            return HealthSample(t, False, f.get("status_code", 503), failing,
                                f.get("reason", "failing: " + ", ".join(failing) if failing else "unhealthy"))
    return HealthSample(t, True, 200)


def _health_row(row: Sequence[Any]) -> HealthSample:
    ts, ok, status, *rest = row
    failing, reason = (list(rest) + [[], ""])[:2]
    return HealthSample(float(ts), bool(ok), None if status is None else int(status), tuple(failing or ()),
                        str(reason or ""))


def _eval_run(spec: Any) -> EvalRun | None:
    if spec is None:
        return None
    if isinstance(spec.get("cases"), dict):
        return EvalRun({str(k): bool(v) for k, v in spec["cases"].items()}, float(spec.get("ts", 0.0)),
                       spec.get("version"), str(spec.get("source", "")))
    return EvalRun({str(k): bool(v) for k, v in spec.items()})


# ---------------------------------------------------------------- recording


def scenario_to_dict(obs: Observations, label: Decision, policy: Policy | None = None,
                     triggers: Iterable[str] = (), description: str = "") -> dict[str, Any]:
    """The scenario-file form of real observations: every request and probe, times relative to the switch."""
    ref = obs.switched_at if obs.switched_at is not None else 0.0
    defaults = SCENARIO_POLICY.to_dict()
    overrides = {k: v for k, v in (policy or SCENARIO_POLICY).to_dict().items() if defaults[k] != v}
    data: dict[str, Any] = {
        "description": description, "label": label, "trigger": list(triggers), "policy": overrides,
        "switched_at": obs.switched_at, "now": round(obs.now - ref, 3),
        "baseline": {"version": obs.baseline_version, "requests": _request_rows(obs.baseline_requests, ref)},
        "current": {"version": obs.version, "requests": _request_rows(obs.requests, ref)},
        "health": [_probe_row(h, ref) for h in obs.health],
        "evals": {"baseline": _eval_dict(obs.baseline_evals), "now": _eval_dict(obs.evals)},
        "reports": list(obs.customer_reports),
        "expected": {"metrics": sorted(obs.expected.metrics), "eval_cases": sorted(obs.expected.eval_cases)},
    }
    return data


def record_scenario(obs: Observations, label: Decision, path: str | os.PathLike[str], *,
                    policy: Policy | None = None, triggers: Iterable[str] = (), description: str = "") -> Path:
    """Write real observations as a scenario file (one request or probe per line); returns the path."""
    path = Path(path)
    text = _dump(scenario_to_dict(obs, label, policy, triggers, description)) + "\n"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


_ROW_DEFAULTS: tuple[Any, ...] = (None, None, "")  # task_id, code, path


def _request_rows(requests: Sequence[RequestSample], ref: float) -> list[list[Any]]:
    rows = []
    for r in requests:
        row: list[Any] = [round(r.ts - ref, 3), r.status, None if r.duration_ms is None else round(r.duration_ms, 1), r.task_id, r.code, r.path]
        while len(row) > 3 and row[-1] == _ROW_DEFAULTS[len(row) - 4]:  # drop trailing defaults
            row.pop()
        rows.append(row)
    return rows


def _probe_row(h: HealthSample, ref: float) -> list[Any]:
    row: list[Any] = [round(h.ts - ref, 3), h.ok, h.status_code, list(h.failing), h.reason]
    return row[:3] if h.ok and not h.failing and not h.reason else row


def _eval_dict(run: EvalRun | None) -> dict[str, Any] | None:
    if run is None:
        return None
    if run.version is None and not run.source and not run.ts:
        return dict(run.cases)
    return {"cases": dict(run.cases), "ts": run.ts, "version": run.version, "source": run.source}


def _dump(value: Any, indent: int = 0) -> str:
    """JSON with one row per line: readable in a diff, compact on disk."""
    pad = "  " * indent
    if isinstance(value, dict) and value:
        items = [f"{pad}  {json.dumps(k)}: {_dump(v, indent + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if isinstance(value, list) and value and all(isinstance(v, list) for v in value):
        rows = [f"{pad}  {json.dumps(v, ensure_ascii=False)}" for v in value]
        return "[\n" + ",\n".join(rows) + f"\n{pad}]"
    return json.dumps(value, ensure_ascii=False)
