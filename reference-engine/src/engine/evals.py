"""The regression eval suite of the Engine: golden cases run against a live Engine over HTTP.

Every case makes its own turn(s) under task id `eval-<runid>-<case>` with a per-run nonce in the
message, then checks what the Engine stored through the public API (search, export, replay), so
repeated runs against the same brain never see each other's data.

Regression cases (`--cases-dir`) are JSON files that backout writes after a rollback (format
`backout-regression/1`, documented in backout/evidence/regression.py); each runs as one extra
case under its `name`.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from engine.client import EngineAPIError, EngineClient, TurnResult

__all__ = ["CASES", "CaseFailed", "CaseResult", "RegressionCase", "SuiteResult", "load_regression_cases",
           "run_suite", "write_json", "write_junit"]

SUITE_NAME = "engine-eval"
CLASSNAME = "engine.eval"
WORKERS = 4
TIMEOUT_S = 30.0  # per request; exports of a multi-GB brain are slow


class CaseFailed(AssertionError):
    """A golden case's expectation did not hold; the message says what was expected and seen."""


@dataclass
class CaseResult:
    """Outcome of one case."""

    name: str
    passed: bool
    detail: str = ""
    duration_ms: float = 0.0


@dataclass
class SuiteResult:
    """Outcome of one run of the suite against one Engine."""

    cases: list[CaseResult]
    version: str | None = None
    url: str = ""
    run_id: str = ""
    duration_ms: float = 0.0

    @property
    def passed(self) -> int:
        """Number of cases that passed."""
        return sum(1 for c in self.cases if c.passed)

    @property
    def failed(self) -> int:
        """Number of cases that failed."""
        return len(self.cases) - self.passed

    @property
    def ok(self) -> bool:
        """True when there were cases and every one passed."""
        return bool(self.cases) and self.failed == 0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form of the result."""
        return {"suite": SUITE_NAME, "url": self.url, "version": self.version, "run_id": self.run_id,
                "ok": self.ok, "total": len(self.cases), "passed": self.passed, "failed": self.failed,
                "duration_ms": self.duration_ms, "cases": [asdict(c) for c in self.cases]}


@dataclass
class CaseContext:
    """What a case gets: a client of its own, its task id and a nonce word unique to this run."""

    client: EngineClient
    run_id: str
    case: str
    nonce: str = field(init=False)

    def __post_init__(self) -> None:
        self.nonce = "x" + hashlib.sha256(f"{self.run_id}:{self.case}".encode()).hexdigest()[:10]

    @property
    def task_id(self) -> str:
        """The task id of this case's turns."""
        return f"eval-{self.run_id}-{self.case}"

    def turn(self, message: str, task_id: str | None = None) -> TurnResult:
        """Run a turn that must answer 200 and end with phase `completed`."""
        result = self.client.execute(task_id or self.task_id, message)
        check(result.ok, f"turn did not complete: {result.describe()}")
        return result


CaseFn = Callable[[CaseContext], None]
CASES: dict[str, CaseFn] = {}


def case(fn: CaseFn) -> CaseFn:
    """Register a golden case under its function name (names are stable: reports key on them)."""
    CASES[fn.__name__] = fn
    return fn


def check(condition: object, detail: str) -> None:
    """Fail the current case with `detail` unless `condition` holds."""
    if not condition:
        raise CaseFailed(detail)


# -- helpers -----------------------------------------------------------------------------------


def _facts(ctx: CaseContext) -> list[dict[str, Any]]:
    return ctx.client.search("knowledge", ctx.nonce, limit=20)


def _check_facts(ctx: CaseContext, expected: dict[str, str]) -> None:
    """The nonce's facts are exactly `expected` ({subject: fact text}), subjects included."""
    rows = _facts(ctx)
    seen = {str(r.get("subject")): str(r.get("content")) for r in rows}
    check(len(rows) == len(expected),
          f"expected {len(expected)} fact(s) {sorted(expected)}, found {len(rows)}: {_show(seen)}")
    for subject, text in expected.items():
        check(subject in seen, f"no fact with subject {subject!r}; stored subjects: {_show(seen)}")
        check(seen[subject] == text, f"fact of {subject!r} is {seen[subject]!r}, expected {text!r}")


def _show(facts: dict[str, str]) -> str:
    return ", ".join(f"{s!r} -> {t!r}" for s, t in facts.items()) or "none"


def _person(ctx: CaseContext, name: str) -> dict[str, Any]:
    rows = ctx.client.search("social", name, limit=20)
    match = [r for r in rows if r.get("name") == name]
    check(match, f"person {name!r} not found in the social graph")
    kind = match[0].get("kind")
    check(kind == "person", f"{name!r} has kind {kind!r}, expected 'person'")
    return match[0]


def _relations(person: dict[str, Any], task_id: str) -> set[tuple[str, str]]:
    return {(str(r.get("name")), str(r.get("relation")))
            for r in person.get("relations", []) if r.get("task_id") == task_id}


def _episodes(ctx: CaseContext) -> list[dict[str, Any]]:
    rows = ctx.client.search("episodes", ctx.task_id, limit=20)
    return [r for r in rows if r.get("task_id") == ctx.task_id]


def _of_task(rows: Iterable[dict[str, Any]], task_id: str) -> list[dict[str, Any]]:
    return [r for r in rows if r.get("task_id") == task_id]


def _expect_error(ctx: CaseContext, method: str, path: str, body: Any, status: int, code: str,
                  auth: bool = True, headers: dict[str, str] | None = None) -> None:
    resp = ctx.client.request(method, path, body, auth=auth, headers=headers)
    check(resp.status == status and resp.error_code == code,
          f"{method} {path}: expected {status} {code}, "
          f"got {resp.status} {resp.error_code or resp.text[:120]!r}")


# -- facts -------------------------------------------------------------------------------------


@case
def fact_simple_statement(ctx: CaseContext) -> None:
    """'X is Y.' is stored with subject X and text 'X is Y', and the reply notes it."""
    subject = f"The {ctx.nonce} budget"
    text = f"{subject} is 40k"
    result = ctx.turn(f"{text}.")
    check(f"Noted: {text}" in result.text, f"reply {result.text!r} does not note {text!r}")
    _check_facts(ctx, {subject: text})


@case
def fact_subject_is_searchable(ctx: CaseContext) -> None:
    """Searching by a fact's subject finds it with exactly that subject."""
    subject = f"Project {ctx.nonce}"
    ctx.turn(f"{subject} is on track.")
    rows = ctx.client.search("knowledge", subject, limit=20)
    check(rows, f"search for {subject!r} found nothing")
    subjects = [r.get("subject") for r in rows]
    check(subjects == [subject], f"search for {subject!r} found subjects {subjects}, expected [{subject!r}]")
    check(rows[0].get("content") == f"{subject} is on track",
          f"fact text is {rows[0].get('content')!r}, expected {subject + ' is on track'!r}")


@case
def fact_two_in_one_message(ctx: CaseContext) -> None:
    """Two statements in one message give two facts with the right subjects."""
    office, launch = f"The {ctx.nonce} office", f"The {ctx.nonce} launch"
    ctx.turn(f"{office} is in Lisbon. {launch} is on Friday.")
    _check_facts(ctx, {office: f"{office} is in Lisbon", launch: f"{launch} is on Friday"})


@case
def fact_not_from_question(ctx: CaseContext) -> None:
    """Questions are not facts: only the statement next to them is stored."""
    server = f"The {ctx.nonce} server"
    ctx.turn(f"Is the {ctx.nonce} server down? What is the {ctx.nonce} budget? {server} is healthy.")
    _check_facts(ctx, {server: f"{server} is healthy"})


# -- people ------------------------------------------------------------------------------------


@case
def person_single_mention(ctx: CaseContext) -> None:
    """A named person is linked to 'me' as 'mentioned' for the turn's task, with no co-mention."""
    result = ctx.turn(f"Had lunch with Priya to talk about the {ctx.nonce} plan.")
    check("Priya" in result.text, f"reply {result.text!r} does not mention Priya")
    rels = _relations(_person(ctx, "Priya"), ctx.task_id)
    check(rels == {("me", "mentioned")}, f"Priya's relations for {ctx.task_id}: {sorted(rels)}, "
                                         "expected only ('me', 'mentioned')")


@case
def person_pair_co_mentioned(ctx: CaseContext) -> None:
    """Two people in one message are co-mentioned with each other and mentioned by 'me'."""
    ctx.turn(f"Had coffee with Omar and Yara about the {ctx.nonce} roadmap.")
    omar = _relations(_person(ctx, "Omar"), ctx.task_id)
    yara = _relations(_person(ctx, "Yara"), ctx.task_id)
    check(omar == {("me", "mentioned"), ("Yara", "co_mentioned")},
          f"Omar's relations for {ctx.task_id}: {sorted(omar)}, expected me/mentioned and Yara/co_mentioned")
    check(yara == {("me", "mentioned"), ("Omar", "co_mentioned")},
          f"Yara's relations for {ctx.task_id}: {sorted(yara)}, expected me/mentioned and Omar/co_mentioned")


# -- episodes and conversations ----------------------------------------------------------------


@case
def episode_recorded_per_turn(ctx: CaseContext) -> None:
    """One turn records exactly one episode for its task, summarising the message."""
    ctx.turn(f"Reviewed the {ctx.nonce} checklist with the team.")
    rows = _episodes(ctx)
    check(len(rows) == 1, f"expected 1 episode for {ctx.task_id}, found {len(rows)}")
    summary = str(rows[0].get("summary"))
    check(ctx.nonce in summary, f"episode summary {summary!r} lacks the message")


@case
def episode_threading_same_task(ctx: CaseContext) -> None:
    """Two turns on the same task give two episodes of that task, in order."""
    ctx.turn(f"First step of the {ctx.nonce} migration: back up.")
    ctx.turn(f"Second step of the {ctx.nonce} migration: restore.")
    rows = _episodes(ctx)
    check(len(rows) == 2, f"expected 2 episodes for {ctx.task_id}, found {len(rows)}")
    summaries = [str(r.get("summary")) for r in sorted(rows, key=lambda r: r.get("id") or 0)]
    check("First step" in summaries[0] and "Second step" in summaries[1],
          f"episode summaries out of order or wrong: {summaries}")


@case
def conversation_in_export(ctx: CaseContext) -> None:
    """The export bundle holds the turn's user message and assistant reply."""
    message = f"Please keep the {ctx.nonce} notes handy."
    result = ctx.turn(message)
    bundle = ctx.client.export()
    check(bundle.get("format") == "engine-memory/1", f"export format is {bundle.get('format')!r}")
    rows = _of_task(bundle.get("conversations", []), ctx.task_id)
    by_role = {r.get("role"): r.get("content") for r in rows}
    check(len(rows) == 2, f"expected 2 conversation rows for {ctx.task_id}, found {len(rows)}")
    check(by_role.get("user") == message, f"user message exported as {by_role.get('user')!r}")
    check(by_role.get("assistant") == result.text,
          f"assistant reply exported as {by_role.get('assistant')!r}, streamed {result.text!r}")


# -- tools ------------------------------------------------------------------------------------


@case
def mcp_email_tool_call(ctx: CaseContext) -> None:
    """'email Jordan' makes one mcp.email call targeting Jordan, followed by its result."""
    result = ctx.turn(f"Please email Jordan the {ctx.nonce} summary.")
    expected = [{"tool": "mcp.email", "input": {"target": "Jordan"}}]
    check(result.tool_calls == expected, f"tool calls {result.tool_calls}, expected {expected}")
    names = result.names()
    check("tool_result" in names and names.index("tool_result") > names.index("tool_call"),
          f"no tool_result after the tool_call: {names}")


@case
def mcp_delete_tool_call(ctx: CaseContext) -> None:
    """'delete the X' makes one mcp.delete call targeting X."""
    target = f"draft{ctx.nonce}"
    result = ctx.turn(f"Please delete the {target} file.")
    expected = [{"tool": "mcp.delete", "input": {"target": target}}]
    check(result.tool_calls == expected, f"tool calls {result.tool_calls}, expected {expected}")


@case
def no_tool_call_for_plain_message(ctx: CaseContext) -> None:
    """A plain message gets a reply and no tool call."""
    result = ctx.turn(f"Thanks, the {ctx.nonce} notes look good.")
    check(not result.tool_calls, f"unexpected tool calls: {result.tool_calls}")
    check("tool_result" not in result.names(), f"unexpected tool_result: {result.names()}")
    check(result.text.strip(), "empty reply")


# -- stream, replay, feedback, import ---------------------------------------------------------


@case
def stream_event_order(ctx: CaseContext) -> None:
    """The stream starts with phase started, carries text and usage, and ends with completed."""
    result = ctx.turn(f"Summarise the {ctx.nonce} thread.")
    first, last = result.events[0], result.events[-1]
    check(first[0] == "thread_lifecycle" and first[1].get("phase") == "started"
          and first[1].get("task_id") == ctx.task_id, f"first event is {first}, expected phase started")
    check(last[0] == "thread_lifecycle" and last[1].get("phase") == "completed",
          f"last event is {last}, expected phase completed")
    usage = [d for n, d in result.events if n == "usage"]
    check(len(usage) == 1 and isinstance(usage[0].get("output_tokens"), int),
          f"expected one usage event with output_tokens, got {usage}")
    check(result.text, "no text_delta in the stream")


@case
def replay_has_completed_turn(ctx: CaseContext) -> None:
    """Replay returns the turn's events, from started to completed, with the streamed text."""
    result = ctx.turn(f"Log the {ctx.nonce} decision.")
    events = ctx.client.replay(0, ctx.task_id)
    check(events, f"replay for {ctx.task_id} is empty")
    check(all(e.get("task_id") == ctx.task_id for e in events), "replay returned events of other tasks")
    names = [e.get("event") for e in events]
    phases = [e.get("data", {}).get("phase") for e in events if e.get("event") == "thread_lifecycle"]
    check(phases == ["started", "completed"],
          f"replayed lifecycle phases {phases}, expected started, completed")
    texts = [e.get("data", {}).get("text") for e in events if e.get("event") == "text_delta"]
    check("".join(t or "" for t in texts) == result.text,
          f"replayed text {texts} differs from {result.text!r}")
    check(names == result.names(), f"replayed events {names} differ from streamed {result.names()}")
    latest = max(int(e.get("ts", 0)) for e in events)
    later = ctx.client.replay(latest, ctx.task_id)
    check(later == [], f"replay after the last event's ts still returned {len(later)} event(s)")


@case
def feedback_recorded(ctx: CaseContext) -> None:
    """Feedback on a turn is stored and exported as a learning signal."""
    result = ctx.turn(f"Draft the {ctx.nonce} announcement.")
    comment = f"useful {ctx.nonce}"
    message_id = f"{result.request_id}-assistant"
    signal_id = ctx.client.feedback(ctx.task_id, 4, message_id=message_id, comment=comment)
    check(isinstance(signal_id, int) and signal_id > 0, f"feedback id is {signal_id!r}")
    rows = _of_task(ctx.client.export().get("learning_signals", []), ctx.task_id)
    check(len(rows) == 1, f"expected 1 learning signal for {ctx.task_id}, found {len(rows)}")
    row = rows[0]
    check((row.get("rating"), row.get("comment"), row.get("message_id")) == (4, comment, message_id),
          f"learning signal stored as {row}")


@case
def feedback_rating_validated(ctx: CaseContext) -> None:
    """A rating outside -1..5 is refused with 400 INVALID_REQUEST."""
    _expect_error(ctx, "POST", "/feedback", {"task_id": ctx.task_id, "rating": 9}, 400, "INVALID_REQUEST")


@case
def import_is_idempotent(ctx: CaseContext) -> None:
    """Importing a bundle adds its rows once; importing it again adds nothing."""
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000+00:00", time.gmtime())
    subject = f"Imported {ctx.nonce}"
    bundle = {
        "format": "engine-memory/1",
        "episodes": [{"task_id": ctx.task_id, "summary": f"[{ctx.task_id}] imported {ctx.nonce}",
                      "created_at": now}],
        "knowledge": [{"subject": subject, "content": f"{subject} is portable", "type": "fact",
                       "confidence": 0.9, "source": f"eval:{ctx.run_id}", "valid_from": now,
                       "valid_until": None}],
        "social": {"nodes": [], "edges": []},
        "conversations": [{"task_id": ctx.task_id, "message_id": f"{ctx.task_id}-user", "role": "user",
                           "content": f"imported {ctx.nonce}", "created_at": now}],
        "learning_signals": [{"task_id": ctx.task_id, "message_id": None, "rating": 3,
                              "comment": f"imported {ctx.nonce}", "created_at": now}],
    }
    first = ctx.client.import_bundle(bundle)
    wanted = {"episodes": 1, "knowledge": 1, "conversations": 1, "learning_signals": 1}
    check(all(first.get(k) == v for k, v in wanted.items()),
          f"first import added {first}, expected {wanted}")
    second = ctx.client.import_bundle(bundle)
    check(not any(second.values()), f"second import added {second}, expected nothing")
    rows = ctx.client.search("knowledge", subject, limit=20)
    check([r.get("subject") for r in rows] == [subject],
          f"imported fact not found once by subject: {rows}")


# -- API contract ------------------------------------------------------------------------------


@case
def invalid_request_rejected(ctx: CaseContext) -> None:
    """A turn without a message and a search with limit 0 are refused with 400 INVALID_REQUEST."""
    _expect_error(ctx, "POST", "/execute", {"task_id": ctx.task_id}, 400, "INVALID_REQUEST")
    _expect_error(ctx, "POST", "/memory/knowledge/search", {"query": ctx.nonce, "limit": 0},
                  400, "INVALID_REQUEST")


@case
def auth_required(ctx: CaseContext) -> None:
    """Every endpoint but /health refuses a missing or wrong key with 401 INVALID_KEY."""
    _expect_error(ctx, "POST", "/execute", {"message": "hi", "task_id": ctx.task_id}, 401, "INVALID_KEY",
                  auth=False)
    _expect_error(ctx, "POST", "/memory/knowledge/search", {"query": ctx.nonce}, 401, "INVALID_KEY",
                  auth=False)
    _expect_error(ctx, "GET", "/memory/export", None, 401, "INVALID_KEY", auth=False,
                  headers={"X-Engine-Key": "wrong-" + ctx.nonce})


@case
def health_ok(ctx: CaseContext) -> None:
    """GET /health answers 200, status ok, with a version and every subsystem ok."""
    resp = ctx.client.health()
    body = resp.body if isinstance(resp.body, dict) else {}
    check(resp.status == 200 and body.get("status") == "ok", f"health is {resp.status} {resp.text[:200]}")
    check(isinstance(body.get("version"), str) and body["version"], f"health has no version: {body}")
    bad = {k: v for k, v in (body.get("subsystems") or {}).items() if v != "ok"}
    check(not bad, f"subsystems not ok: {bad}")


# -- regression cases from files --------------------------------------------------------------

REGRESSION_FORMAT = "backout-regression/1"
REGRESSION_KINDS = ("turn", "health")


@dataclass(frozen=True)
class RegressionCase:
    """One regression case file: turns to replay (kind "turn") or a health check, plus built-in cases."""

    name: str
    kind: str
    path: Path
    requests: tuple[tuple[str, str], ...] = ()  # (task_id, message)
    expect_status: int = 200
    expect_lifecycle: str | None = "completed"
    cases: tuple[str, ...] = ()

    @classmethod
    def from_file(cls, path: Path) -> RegressionCase:
        """Read and check one file; ValueError saying what is wrong with it."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ValueError(f"cannot read {path.name}: {exc}") from None
        check_file(isinstance(data, dict), path, "is not a JSON object")
        return cls._from_dict(data, path)

    @classmethod
    def _from_dict(cls, data: dict[str, Any], path: Path) -> RegressionCase:
        name, kind, expect = data.get("name"), data.get("kind"), data.get("expect") or {}
        check_file(isinstance(name, str) and name.strip() != "", path, "has no `name`")
        check_file(kind in REGRESSION_KINDS, path, f"kind {kind!r} is not one of {REGRESSION_KINDS}")
        check_file(isinstance(expect, dict) and isinstance(expect.get("status", 200), int), path,
                   "`expect` is not an object with an integer `status`")
        requests = tuple(_regression_request(r, path) for r in data.get("requests") or [])
        check_file(kind != "turn" or requests, path, "is of kind 'turn' but has no `requests`")
        cases = data.get("cases") or []
        check_file(isinstance(cases, list) and all(isinstance(c, str) for c in cases), path,
                   "`cases` is not a list of case names")
        return cls(name=str(name).strip(), kind=str(kind), path=path, requests=requests,
                   expect_status=int(expect.get("status", 200)),
                   expect_lifecycle=expect.get("lifecycle", "completed" if kind == "turn" else None),
                   cases=tuple(cases))

    def run(self, ctx: CaseContext) -> None:
        """The case itself: its turns or health check, then the built-in cases it lists."""
        failures = self._turns(ctx) if self.kind == "turn" else self._health(ctx)
        for name in self.cases:
            if name in CASES:
                failures += _listed_case(ctx, self.name, name)
        check(not failures, "; ".join(failures))

    def _turns(self, ctx: CaseContext) -> list[str]:
        failed = []
        for i, (task_id, message) in enumerate(self.requests, 1):
            result = ctx.client.execute(f"{task_id}-{ctx.run_id}-{i}", message)
            completed = self.expect_lifecycle != "completed" or result.completed
            if result.status != self.expect_status or not completed:
                failed.append(f"turn {i} (task {task_id}): {result.describe()}")
        if not failed:
            return []
        return [f"{len(failed)}/{len(self.requests)} turn(s) did not answer {self.expect_status} "
                f"{self.expect_lifecycle or ''}".rstrip() + f", first: {failed[0]}"]

    def _health(self, ctx: CaseContext) -> list[str]:
        resp = ctx.client.health()
        status = resp.body.get("status") if isinstance(resp.body, dict) else None
        if resp.status == self.expect_status and status == "ok":
            return []
        return [f"health is {resp.status} {resp.text[:200]!r}, expected {self.expect_status} status ok"]


def check_file(condition: object, path: Path, problem: str) -> None:
    """ValueError naming the file unless `condition` holds."""
    if not condition:
        raise ValueError(f"{path.name} {problem}")


def _regression_request(item: Any, path: Path) -> tuple[str, str]:
    check_file(isinstance(item, dict) and isinstance(item.get("message"), str), path,
               "has a request without a `message`")
    return str(item.get("task_id") or "regression"), str(item["message"])


def _listed_case(ctx: CaseContext, regression: str, name: str) -> list[str]:
    """Run a built-in case as part of a regression case, under task ids of its own."""
    try:
        CASES[name](CaseContext(ctx.client, ctx.run_id, f"{regression}-{name}"))
    except (CaseFailed, EngineAPIError) as exc:
        return [f"{name}: {exc}"]
    return []


def load_regression_cases(dirs: Iterable[Path | str]) -> dict[str, CaseFn]:
    """Extra cases from every *.json in `dirs`, by name; a broken file or an unknown listed case
    is an extra case that fails and says why. NotADirectoryError for a missing folder."""
    extra: dict[str, CaseFn] = {}
    for folder in map(Path, dirs):
        if not folder.is_dir():
            raise NotADirectoryError(f"regression cases folder {folder} does not exist")
        for path in sorted(folder.glob("*.json")):
            _add_regression(extra, path)
    return extra


def _add_regression(extra: dict[str, CaseFn], path: Path) -> None:
    try:
        spec = RegressionCase.from_file(path)
    except ValueError as exc:
        extra[_free_name(extra, path.stem)] = _failing(f"invalid regression case file: {exc}")
        return
    if spec.name in CASES or spec.name in extra:
        extra[_free_name(extra, spec.name)] = _failing(
            f"{path.name}: case name {spec.name!r} is already taken; rename the case")
        return
    extra[spec.name] = spec.run
    for name in spec.cases:
        if name not in CASES:
            extra.setdefault(name, _failing(f"unknown case (listed by {spec.name} in {path.name})"))


def _free_name(taken: Mapping[str, Any], name: str) -> str:
    candidate, n = name, 1
    while candidate in taken or candidate in CASES:
        n += 1
        candidate = f"{name}#{n}"
    return candidate


def _failing(detail: str) -> CaseFn:
    def fail(ctx: CaseContext) -> None:
        raise CaseFailed(detail)
    return fail


# -- running -----------------------------------------------------------------------------------


def _run_case(url: str, key: str, run_id: str, name: str, fn: CaseFn, timeout: float) -> CaseResult:
    """Run one case; any exception becomes a failed CaseResult with a clear detail."""
    started = time.perf_counter()
    try:
        with EngineClient(url, key, timeout=timeout) as client:
            fn(CaseContext(client, run_id, name))
        passed, detail = True, ""
    except CaseFailed as exc:
        passed, detail = False, str(exc)
    except httpx.TimeoutException as exc:
        passed, detail = False, f"timed out after {timeout:g} s: {type(exc).__name__} {exc}".strip()
    except EngineAPIError as exc:
        passed, detail = False, f"unexpected error answer: {exc}"
    except httpx.HTTPError as exc:
        passed, detail = False, f"HTTP failure: {type(exc).__name__}: {exc}"
    except Exception as exc:  # a broken answer (bad JSON shape...) fails the case, not the suite
        passed, detail = False, f"error: {type(exc).__name__}: {exc}"
    return CaseResult(name, passed, detail, round((time.perf_counter() - started) * 1000, 2))


def _probe(url: str, key: str, timeout: float) -> str | None:
    """The Engine's version from /health; OSError when the Engine cannot be reached."""
    try:
        with EngineClient(url, key, timeout=timeout) as client:
            body = client.health().body
    except httpx.TransportError as exc:
        raise ConnectionError(f"{type(exc).__name__}: {exc}") from exc
    version = body.get("version") if isinstance(body, dict) else None
    return str(version) if version else None


def run_suite(url: str, key: str, workers: int = WORKERS, timeout: float = TIMEOUT_S,
              only: Iterable[str] | None = None, extra: Mapping[str, CaseFn] | None = None) -> SuiteResult:
    """Run the golden cases (all, or those named in `only`), then every `extra` case, against `url`."""
    started = time.perf_counter()
    version = _probe(url, key, timeout)
    run_id = secrets.token_hex(4)
    table = {**CASES, **(extra or {})}
    names = list(only) if only is not None else list(CASES)
    names += [n for n in (extra or {}) if n not in names]
    unknown = [n for n in names if n not in table]
    if unknown:
        raise ValueError(f"unknown eval case(s): {', '.join(unknown)}")
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="eval") as pool:
        futures = [pool.submit(_run_case, url, key, run_id, n, table[n], timeout) for n in names]
        cases = [f.result() for f in futures]
    return SuiteResult(cases=cases, version=version, url=url, run_id=run_id,
                       duration_ms=round((time.perf_counter() - started) * 1000, 2))


def write_junit(result: SuiteResult, path: Path | str) -> None:
    """Write the result as JUnit XML: one <testsuite name="engine-eval">, a <testcase> per case."""
    suite = ET.Element("testsuite", {
        "name": SUITE_NAME, "tests": str(len(result.cases)), "failures": str(result.failed),
        "errors": "0", "skipped": "0", "time": f"{result.duration_ms / 1000:.3f}",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()),
    })
    props = ET.SubElement(suite, "properties")
    for name, value in (("url", result.url), ("version", result.version or ""), ("run_id", result.run_id)):
        ET.SubElement(props, "property", {"name": name, "value": value})
    for c in result.cases:
        testcase = ET.SubElement(suite, "testcase", {"name": c.name, "classname": CLASSNAME,
                                                     "time": f"{c.duration_ms / 1000:.3f}"})
        if not c.passed:
            failure = ET.SubElement(testcase, "failure", {"message": c.detail, "type": "EvalFailure"})
            failure.text = c.detail
    ET.indent(suite)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(suite).write(out, encoding="utf-8", xml_declaration=True)


def write_json(result: SuiteResult, path: Path | str) -> None:
    """Write the result as JSON (see SuiteResult.as_dict)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result.as_dict(), indent=2) + "\n", encoding="utf-8")
