"""postmortem.md: the story of a rollback, written from its incident record.

The record is tolerated as it comes (any key may be missing or None): `_view` turns it into the
plain values the template shows, so the template has no logic beyond loops and conditions.
Everything is redacted twice: the record before rendering, the Markdown after.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined

from backout.evidence.redact import Redactor
from backout.evidence.regression import case_name
from backout.fsutil import ensure_private_dir, replace_text

__all__ = ["render_postmortem", "write_postmortem"]

TEMPLATE = "postmortem.md.j2"
UNKNOWN = "unknown"
_ENV = Environment(loader=PackageLoader("backout.evidence", "templates"),
                   undefined=StrictUndefined, autoescape=False,  # Markdown, not HTML
                   keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)


def render_postmortem(incident: dict[str, Any], redactor: Redactor) -> str:
    """The postmortem of an incident record, as redacted Markdown."""
    view = _view(redactor.obj(dict(incident or {})))
    return redactor.text(_ENV.get_template(TEMPLATE).render(**view))


def write_postmortem(folder: Path, incident: dict[str, Any], redactor: Redactor) -> Path:
    """Write `folder/postmortem.md` (0600, folder 0700) and return its path."""
    ensure_private_dir(folder)
    path = folder / "postmortem.md"
    replace_text(path, render_postmortem(incident, redactor), mode=0o600)
    return path


# -- the view: plain values for the template ---------------------------------------------------


def _view(inc: dict[str, Any]) -> dict[str, Any]:
    verdict = _dict(inc.get("verdict"))
    return {
        "id": _text(inc.get("id")),
        "deployment": _text(inc.get("deployment")),
        "bad": _text(inc.get("from_version")),
        "good": _text(inc.get("to_version")),
        "outcome": _text(inc.get("outcome")),
        "summary": _summary(inc),
        "timeline": [_step(s) for s in _list(inc.get("timeline"))],
        "verdict": _verdict(verdict) if verdict else None,
        "failed_requests": _failed_requests(_list(inc.get("failed_requests"))),
        "failed_eval_cases": [_cell(c) for c in _list(inc.get("failed_eval_cases"))],
        "layer": _layer(inc),
        "data": _data(inc),
        "effects": _effects(_dict(inc.get("effects"))),
        "verify": _verify(_dict(inc.get("verify"))),
        "notifications": [_notification(n) for n in _list(inc.get("notifications"))],
        "status_page": _status_page(inc.get("status_page")),
        "next_steps": _next_steps(inc),
    }


def _summary(inc: dict[str, Any]) -> str:
    """What happened, in the past tense, in one paragraph."""
    when = _when(inc.get("started_at"))
    bad, good = _text(inc.get("from_version")), _text(inc.get("to_version"))
    where = f" on {inc['deployment']}" if inc.get("deployment") else ""
    reason = f" because of: {inc['reason']}" if inc.get("reason") else ""
    outcome = inc.get("outcome")
    if outcome == "failed":
        head = f"{when}, a rollback{where} from {bad} to {good} was started{reason}, and it failed."
    elif outcome == "running":
        head = (f"{when}, a rollback{where} from {bad} to {good} was started{reason}; it had not "
                "finished when this was written.")
    else:
        head = f"{when}, {bad} was rolled back to {good}{where}{reason}."
    return " ".join(p for p in (head, _how(inc), _duration(inc)) if p)


def _how(inc: dict[str, Any]) -> str:
    layer, snap = inc.get("layer"), _dict(inc.get("snapshot"))
    if layer == "brain":
        known = snap.get("age_seconds") is not None
        age = f", {_age(snap.get('age_seconds'))} old" if known else ""
        return f"The brain was restored from snapshot {snap.get('id') or UNKNOWN}{age}."
    if layer == "image":
        return "Only the image was swapped back; the brain was kept as it was."
    return ""


def _duration(inc: dict[str, Any]) -> str:
    start, end = _parse(inc.get("started_at")), _parse(inc.get("finished_at"))
    if start is None or end is None:
        return ""
    return f"It took {_age((end - start).total_seconds())}, finishing at {_clock(end)}."


def _verdict(v: dict[str, Any]) -> dict[str, Any]:
    triggers = _list(v.get("triggers"))
    rows = [{k: _cell(r.get(k)) for k in ("signal", "baseline", "now", "test", "verdict")}
            for r in _list(v.get("evidence")) if isinstance(r, dict)]
    return {"decision": _text(v.get("decision")),
            "trigger": _text(v.get("trigger") or ", ".join(map(str, triggers)) or None),
            "reason": _text(v.get("reason")), "evidence": rows}


def _failed_requests(rows: list[Any]) -> dict[str, Any]:
    shown = [{**{k: _cell(r.get(k)) for k in ("status", "code", "path", "task_id")}, "ts": _cell(_iso(r.get("ts")))}
             for r in rows[:20] if isinstance(r, dict)]
    return {"total": len(rows), "rows": shown}


def _layer(inc: dict[str, Any]) -> dict[str, Any]:
    trial = inc.get("trial")
    trial_view = None
    if isinstance(trial, dict):
        healthy = trial.get("healthy")
        trial_view = {"healthy": "yes" if healthy else "no" if healthy is not None else UNKNOWN,
                      "reason": _text(trial.get("reason")),
                      "log_tail": [str(line).rstrip("\n") for line in _list(trial.get("log_tail"))]}
    return {"name": _text(inc.get("layer")), "reason": _text(inc.get("layer_reason")),
            "trial": trial_view}


def _data(inc: dict[str, Any]) -> dict[str, Any]:
    snap, salvage = _dict(inc.get("snapshot")), _dict(inc.get("salvage"))
    window = _dict(inc.get("bad_window"))
    return {
        "layer": inc.get("layer"),
        "snapshot": {"id": _text(snap.get("id")), "created_at": _text(snap.get("created_at")),
                     "age": _age(snap.get("age_seconds")), "version": _text(snap.get("version"))}
        if snap else None,
        "window": {"from": _text(window.get("from")), "to": _text(window.get("to"))},
        "rows_since": _table_counts(inc.get("rows_since_snapshot")),
        "salvage": {"folder": _text(salvage.get("folder")), "total": _text(salvage.get("total")),
                    "tables": _table_counts(salvage.get("tables"))} if salvage else None,
        "quarantine": inc.get("quarantine"),
    }


def _table_counts(value: Any) -> list[dict[str, str]]:
    return [{"table": _cell(t), "rows": _cell(n)} for t, n in sorted(_dict(value).items())]


_EFFECT_COLUMNS = 8  # a wider table would not read in a postmortem; the incident JSON has every column


def _effects(effects: dict[str, Any]) -> dict[str, Any]:
    """The effects table's name, the columns shown (those of the first row) and the rows as cells."""
    rows = [_dict(r) for r in _list(effects.get("rows"))]
    columns = [str(c) for c in rows[0]][:_EFFECT_COLUMNS] if rows else []
    return {"table": effects.get("table"), "columns": columns,
            "rows": [[_cell(r.get(c)) for c in columns] for r in rows]}


_VERDICT_KEYS = ("ok", "healthy", "passed")


def _verify(v: dict[str, Any]) -> list[dict[str, str]]:
    """One row per check (the record's overall flag is not a check: the rows say it)."""
    rows = []
    for check, result in v.items():
        if not isinstance(result, dict):
            continue
        ok = next((result[k] for k in _VERDICT_KEYS if k in result), None)
        state = "ok" if ok is True else "FAILED" if ok is False else UNKNOWN
        rows.append({"check": _cell(check), "state": state, "detail": _cell(_verify_detail(result), limit=200)})
    return rows


def _verify_detail(result: dict[str, Any]) -> str:
    """The check's own sentence, else its plain facts in words ('rate 0.004; failed auth_required')."""
    said = result.get("detail") or result.get("reason")
    if said:
        return str(said)
    facts = {k: val for k, val in result.items() if k not in _VERDICT_KEYS and not isinstance(val, dict)}
    return "; ".join(f"{k.replace('_', ' ')} {_word(val)}" for k, val in sorted(facts.items()))


def _notification(n: Any) -> dict[str, str]:
    n = _dict(n)
    ok = n.get("ok")
    return {"channel": _cell(n.get("channel")),
            "sent": "yes" if ok is True else "no" if ok is False else UNKNOWN,
            "detail": _cell(n.get("detail"))}


def _status_page(s: Any) -> dict[str, str] | None:
    if not isinstance(s, dict):
        return None
    updated = s.get("updated")
    return {"updated": "updated" if updated else "not updated", "why": _text(s.get("why"))}


def _next_steps(inc: dict[str, Any]) -> list[str]:
    """The incident's own next steps, then the standard ones."""
    steps = [str(s) for s in _list(inc.get("next_steps")) if s]
    bad = inc.get("from_version") or "VERSION"
    steps.append(f"Fix {bad}, and test the fix against a copy of the brain before upgrading again.")
    if inc.get("salvage"):
        steps.append(f"Replay the salvaged rows: `backout salvage replay {inc.get('id') or 'ID'}`.")
    steps.append(f"Once fixed, unfreeze it: `backout unfreeze {bad} --reason \"...\"`.")
    name = case_name(inc)
    where = f"`regression/{name}.json`" if name else "a regression case"
    steps.append(f"Add {where} to the eval suite (`engine eval --cases-dir regression/`), so the "
                 "same failure is caught before it ships again.")
    return steps


# -- small helpers -----------------------------------------------------------------------------


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _word(value: Any) -> str:
    """A value as a person reads it: yes/no, none, a list joined with commas."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "none"
    return "none" if value is None else str(value)


def _text(value: Any) -> str:
    return UNKNOWN if value is None or value == "" else str(value)


def _cell(value: Any, limit: int = 120) -> str:
    """A Markdown table cell: one line, pipes escaped, shortened."""
    text = "" if value is None else str(value)
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _step(s: Any) -> dict[str, str]:
    s = _dict(s)
    seconds = s.get("seconds")
    return {"step": _cell(s.get("step")), "title": _cell(s.get("title")),
            "started": _cell(_short_time(s.get("started_at"))),
            "finished": _cell(_short_time(s.get("finished_at"))),
            "seconds": f"{seconds:.1f}" if isinstance(seconds, (int, float)) else _cell(seconds),
            "outcome": _cell(s.get("outcome")), "detail": _cell(s.get("detail"))}


def _parse(value: Any) -> datetime | None:
    """An ISO time or an epoch (seconds, as request logs record them), as an aware datetime."""
    if not value or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        try:
            return datetime.fromtimestamp(value, UTC)
        except (ValueError, OverflowError, OSError):  # not seconds since 1970
            return None
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _when(value: Any) -> str:
    parsed = _parse(value)
    if parsed is None:
        return "At a time that was not recorded"
    utc = parsed.astimezone(UTC)
    return f"On {utc:%Y-%m-%d} at {utc:%H:%M} UTC"


def _clock(moment: datetime) -> str:
    return f"{moment.astimezone(UTC):%H:%M:%S} UTC"


def _iso(value: Any) -> str:
    """ISO 8601 UTC to the millisecond ('2026-11-27T01:10:00.250+00:00'); what cannot be read, as it is."""
    parsed = _parse(value)
    return parsed.astimezone(UTC).isoformat(timespec="milliseconds") if parsed else ("" if value is None else str(value))


def _short_time(value: Any) -> str:
    parsed = _parse(value)
    return _clock(parsed) if parsed else ("" if value is None else str(value))


def _age(seconds: Any) -> str:
    """90 -> '1 min 30 s', 11520 -> '3 h 12 min'."""
    try:
        total = round(float(seconds))
    except (TypeError, ValueError):
        return UNKNOWN
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {secs} s"
    return f"{secs} s"
