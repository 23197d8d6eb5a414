"""The drill report: `drill-<id>.json` (the result as the drill produced it) and `drill-<id>.html`.

The HTML page is self-contained: inline CSS, charts as inline SVG drawn from numbers computed in
Python (`charts.py`), no script, no font or stylesheet from the network. The result dict is taken
as it comes: any key may be missing or null (a drill that failed half-way still gets a report).
"""

from __future__ import annotations

import json
import re
import shutil
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from backout.fsutil import atomic_write_json, ensure_private_dir, replace_text
from backout.report import charts
from backout.report.charts import duration_text

__all__ = [
    "drill_paths",
    "duration_text",
    "history_rows",
    "load_history",
    "render_html",
    "render_terminal",
    "slowest_phases",
    "write_report",
]

TEMPLATE = "drill.html.j2"
SOURCE_KEY = "_path"  # set by load_history on each drill: the JSON file it came from
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_ENV = Environment(loader=PackageLoader("backout.report", "templates"),
                   autoescape=select_autoescape(["html", "j2"], default=True),
                   undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)


# -- files ---------------------------------------------------------------------------------------


def drill_paths(drills_dir: Path, drill_id: str) -> tuple[Path, Path]:
    """The JSON and HTML paths of drill `drill_id` under `drills_dir`."""
    if not _ID.fullmatch(drill_id or ""):
        raise ValueError(f"not a drill id: {drill_id!r}")
    return drills_dir / f"drill-{drill_id}.json", drills_dir / f"drill-{drill_id}.html"


def load_history(drills_dir: Path) -> list[dict[str, Any]]:
    """Every readable `drill-*.json` in `drills_dir`, oldest first (each with `_path` set)."""
    drills = []
    for path in sorted(drills_dir.glob("drill-*.json")) if drills_dir.is_dir() else []:
        drill = _read_drill(path)
        if drill is not None:
            drill[SOURCE_KEY] = str(path)
            drills.append(drill)
    return sorted(drills, key=_order)


def _read_drill(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(data, dict) or not str(data.get("format", "")).startswith("backout-drill/"):
        return None
    return data


def write_report(drills_dir: Path, result: dict[str, Any],
                 history: list[dict[str, Any]]) -> tuple[Path, Path]:
    """Write the drill's JSON and HTML report (0600 files, folder 0700); returns both paths."""
    json_path, html_path = drill_paths(drills_dir, str(result.get("id") or ""))
    page = render_html(result, history)  # before writing anything: a rendering error leaves no half
    ensure_private_dir(drills_dir)
    atomic_write_json(json_path, {k: v for k, v in result.items() if not k.startswith("_")})
    replace_text(html_path, page, mode=0o600)
    return json_path, html_path


# -- history -------------------------------------------------------------------------------------


def _when(drill: dict[str, Any]) -> float | None:
    """The drill's start as epoch seconds (from `started_at`, else from its id), or None."""
    for value, fmt in ((drill.get("started_at"), None), (drill.get("id"), "%Y%m%dT%H%M%SZ")):
        try:
            when = (datetime.fromisoformat(value) if fmt is None
                    else datetime.strptime(value, fmt).replace(tzinfo=UTC))
        except (TypeError, ValueError):
            continue
        return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
    return None


def _order(drill: dict[str, Any]) -> tuple[float, str]:
    return (_when(drill) or 0.0, str(drill.get("id") or ""))


def _previous(result: dict[str, Any], history: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The latest drill before `result` with the same break mode."""
    now = _when(result)
    same = [h for h in history if h.get("break") == result.get("break")
            and h.get("id") != result.get("id")
            and (now is None or (_when(h) or 0.0) <= now)]
    return max(same, key=_order) if same else None


def slowest_phases(result: dict[str, Any], history: list[dict[str, Any]],
                   n: int = 3) -> list[dict[str, Any]]:
    """The `n` slowest phases, each with its seconds in the previous drill (or None)."""
    before = _previous(result, history)
    earlier: dict[str, float] = {}
    for p in _phases(before or {}):
        earlier.setdefault(p["name"], p["seconds"])
    ranked = sorted(_phases(result), key=lambda p: -p["seconds"])[:n]
    return [{"name": p["name"], "seconds": p["seconds"], "previous_s": earlier.get(p["name"])}
            for p in ranked]


def history_rows(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One summary row per drill (oldest first), for `backout drill --history`."""
    return [_history_row(d) for d in sorted(history, key=_order)]


def _history_row(d: dict[str, Any]) -> dict[str, Any]:
    source = d.get(SOURCE_KEY)
    report = (str(Path(source).with_suffix(".html")) if source
              else f"drill-{d.get('id') or 'unknown'}.html")
    recovery = _num(_dict(d.get("targets")).get("recovery_s"))
    return {"id": d.get("id"), "when": d.get("started_at"), "break": d.get("break"),
            "passed": d.get("passed") is True, "recovery_s": recovery,
            "detect_s": _detect_seconds(d), "layer": d.get("layer"), "report": report}


def _detect_seconds(d: dict[str, Any]) -> float | None:
    """Seconds from the switch to the detection (else the detect phase's own seconds)."""
    marks = _dict(d.get("marks"))
    switch, detect = _num(marks.get("switch")), _num(marks.get("detect"))
    if switch is not None and detect is not None:
        return round(detect - switch, 3)
    return next((p["seconds"] for p in _phases(d) if p["name"] == "detect"), None)


# -- tolerant accessors --------------------------------------------------------------------------


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _phases(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The phases with numeric seconds; a missing start follows the previous phase's end."""
    out: list[dict[str, Any]] = []
    for p in _list(result.get("phases")):
        p = _dict(p)
        secs = _num(p.get("seconds"))
        if not p.get("name") or secs is None:
            continue
        start = _num(p.get("start"))
        if start is None:
            start = out[-1]["start"] + out[-1]["seconds"] if out else 0.0
        out.append({"name": str(p["name"]), "start": start, "seconds": max(secs, 0.0),
                    "detail": _text(p.get("detail"))})
    return out


def _secs(value: float | None) -> str:
    return duration_text(value)


SAME_S, SAME_SHARE = 0.1, 0.02  # a change smaller than both is the same time as last drill


def _change(now: float, before: float | None) -> dict[str, str] | None:
    """'+2.1 s (+35%)' against the previous drill, with a class saying slower or faster; a change under
    0.1 s or under 2% is 'same as last drill' (no '-0.0 s (-1%)')."""
    if before is None:
        return None
    delta = now - before
    if abs(delta) < SAME_S or (before > 0 and abs(delta) < SAME_SHARE * before):
        return {"text": "same as last drill", "cls": "same"}
    pct = f" ({delta / before:+.0%})" if before > 0 else ""
    return {"text": f"{'+' if delta > 0 else '-'}{duration_text(abs(delta))}{pct}",
            "cls": "slower" if delta > 0 else "faster"}


def _compared(now: float, before: float | None) -> str:
    """The comparison as one phrase: '-3.0 s (-23%) vs 13.0 s last time', 'same as last drill (2.8 s)'."""
    change = _change(now, before)
    if change is None:
        return "no previous drill of this kind"
    if change["cls"] == "same":
        return f"same as last drill ({duration_text(before)})"
    return f"{change['text']} vs {duration_text(before)} last time"


# -- paths into a removed folder -----------------------------------------------------------------

REMOVED = "the drill's temporary folder (removed afterwards)"


def _removed_folder(result: dict[str, Any]) -> str | None:
    """The self-contained drill's folder when it is removed (or gone already), else None."""
    folder = _text(result.get("staging_folder"))
    if not folder or result.get("self_contained") is False:
        return None
    removed = result.get("staging_folder_removed")
    if removed is None:  # a report written before the drill said: the folder is removed when it is gone
        removed = not Path(folder).exists()
    return folder.rstrip("/") if removed else None


def _without_removed_paths(result: dict[str, Any]) -> dict[str, Any]:
    """The result with every path into the removed drill folder replaced by words (the data keeps them)."""
    folder = _removed_folder(result)
    if folder is None:
        return result
    pattern = re.compile(re.escape(folder) + r"(?:/[^\s;,)\]]*)?")

    def clean(value: Any) -> Any:
        if isinstance(value, str):
            return pattern.sub(REMOVED, value)
        if isinstance(value, list):
            return [clean(v) for v in value]
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        return value
    return {k: (v if k == "staging_folder" else clean(v)) for k, v in result.items()}


# -- terminal ------------------------------------------------------------------------------------


def render_terminal(result: dict[str, Any], width: int | None = None) -> list[str]:
    """Plain lines for the terminal: phases, checks, slowest phases, then the verdict last.

    Long details wrap onto lines of their own under the detail column (`width` columns in all, by default
    the terminal's), never cut; paths into a self-contained drill's removed folder are not shown."""
    result = _without_removed_paths(result)
    width = width or max(60, min(shutil.get_terminal_size((100, 24)).columns, 160))
    return [*_terminal_phases(result, width), *_terminal_checks(result, width),
            *_terminal_slowest(result, width), *_terminal_targets(result),
            *_terminal_failure(result), _verdict_line(result)]


def _table(rows: list[tuple[str, ...]], width: int, indent: str = "  ") -> list[str]:
    """Columns padded to their widest cell; the last one wrapped at spaces (a path is never split). When
    the columns before it leave too little room for the details, each detail goes under its row."""
    if not rows:
        return []
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lead = len(indent) + sum(w + 2 for w in widths)
    under = len(indent) + (widths[0] + 2 if len(widths) > 1 else 4)
    below = width - lead < 50 and any(len(" ".join(r[-1].split())) > width - lead for r in rows)
    lines = []
    for r in rows:
        head = indent + "".join(c.ljust(w) + "  " for c, w in zip(r, widths))
        text = " ".join(r[-1].split())
        if below:
            lines.append(head.rstrip())
            lines += [" " * under + part for part in _wrap(text, width - under)]
            continue
        parts = _wrap(text, max(width - lead, 20)) or [""]
        lines.append((head + parts[0]).rstrip())
        lines += [" " * lead + part for part in parts[1:]]
    return lines


def _wrap(text: str, room: int) -> list[str]:
    return textwrap.wrap(text, room, break_long_words=False, break_on_hyphens=False)


def _terminal_phases(result: dict[str, Any], width: int) -> list[str]:
    phases = _phases(result)
    if not phases:
        return ["phases: none recorded"]
    rows = [(p["name"], duration_text(p["seconds"]).rjust(8), p["detail"]) for p in phases]
    total = sum(p["seconds"] for p in phases)
    return ["phases", *_table(rows + [("total", duration_text(total).rjust(8), "")], width)]


def _terminal_checks(result: dict[str, Any], width: int) -> list[str]:
    checks = [_dict(c) for c in _list(result.get("checks"))]
    if not checks:
        return ["checks: none run"]
    rows = [("PASS" if c.get("passed") is True else "FAIL", _text(c.get("name")),
             _text(c.get("detail"))) for c in checks]
    return ["checks", *_table(rows, width)]


def _terminal_slowest(result: dict[str, Any], width: int) -> list[str]:
    slowest = _slowest(result, [])
    if not slowest:
        return []
    rows = []
    for s in slowest:
        change = _change(s["seconds"], s["previous_s"])
        than = (f"previous {duration_text(s['previous_s'])}, {change['text']}" if change
                else "no previous drill of this kind")
        rows.append((s["name"], duration_text(s["seconds"]).rjust(8), than))
    return ["slowest", *_table(rows, width)]


def _terminal_targets(result: dict[str, Any]) -> list[str]:
    t = _dict(result.get("targets"))
    recovery, rto = _secs(_num(t.get("recovery_s"))), _secs(_num(t.get("rto_s")))
    return [f"targets: recovery {recovery} (RTO {rto}),"
            f" rows lost {_rows(t.get('data_loss_rows'))} (RPO {_rows(t.get('rpo_rows'))})"]


def _rows(value: Any) -> str:
    n = _num(value)
    return "n/a" if n is None else f"{n:.0f}"


def _terminal_failure(result: dict[str, Any]) -> list[str]:
    f = _dict(result.get("failure"))
    if not f:
        return []
    lines = [f"failed at {_text(f.get('where')) or 'unknown'}: {_text(f.get('why'))}"]
    return lines + [f"  next: {s}" for s in _list(f.get("next"))]


def _verdict_line(result: dict[str, Any]) -> str:
    passed = result.get("passed") is True
    name = " ".join(filter(None, ("drill", _text(result.get("id")))))
    summary = _text(result.get("summary")) or f"{name} {'passed' if passed else 'failed'}"
    return f"{'PASS' if passed else 'FAIL'}  {summary}"


def _slowest(result: dict[str, Any], history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The drill's own `slowest` list when it has one, else computed against `history`."""
    given = result.get("slowest")
    if not isinstance(given, list):
        return slowest_phases(result, history)
    rows = [{"name": _text(s.get("name")), "seconds": _num(s.get("seconds")),
             "previous_s": _num(s.get("previous_s"))} for s in map(_dict, given)]
    return [r for r in rows if r["name"] and r["seconds"] is not None]


# -- HTML ----------------------------------------------------------------------------------------


def render_html(result: dict[str, Any], history: list[dict[str, Any]]) -> str:
    """The self-contained HTML report of a drill (inline CSS and SVG, nothing loaded)."""
    return _ENV.get_template(TEMPLATE).render(**_view(_without_removed_paths(result), history))


def _view(result: dict[str, Any], history: list[dict[str, Any]]) -> dict[str, Any]:
    failure = _dict(result.get("failure"))
    phases = _phases(result)
    marks = _dict(result.get("marks"))
    scale = _scale(result, phases)
    overs = _switch_overs(result)
    return {
        "id": _text(result.get("id")) or "unknown",
        "deployment": _text(result.get("deployment")) or "unknown",
        "runtime": _text(result.get("runtime")),
        "passed": result.get("passed") is True,
        "summary": _text(result.get("summary")),
        "facts": _facts(result),
        "timeline": charts.timeline_chart(phases, marks, scale, _text(failure.get("where")), overs),
        "total_s": _secs(sum(p["seconds"] for p in phases)) if phases else "n/a",
        **_traffic_view(result, marks, scale, overs),
        "checks": _checks_view(result),
        "tables": _tables_view(result),
        "rows_total": _rows_total(result),
        "slowest": _slowest_view(result, history),
        **_trend_view(result, history),
        "failure": _failure_view(failure) if failure else None,
        "generated": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _scale(result: dict[str, Any], phases: list[dict[str, Any]]) -> charts.TimeScale:
    """One time scale for the timeline and the traffic charts: everything the drill recorded."""
    times = [p["start"] for p in phases] + [p["start"] + p["seconds"] for p in phases]
    times += [t for s in _series(result) for t in (_num(_dict(s).get("t")), _num(_dict(s).get("t_end")))
              if t is not None]
    times += [t for t in map(_num, _dict(result.get("marks")).values()) if t is not None]
    if not times:
        return charts.TimeScale(0.0, 60.0)
    return charts.TimeScale(min(times), max(max(times), min(times) + 1.0))


def _series(result: dict[str, Any]) -> list[Any]:
    return _list(_dict(result.get("traffic")).get("series"))


def _facts(result: dict[str, Any]) -> list[dict[str, str]]:
    """The key facts shown under the verdict, as label/value pairs."""
    t, traffic = _dict(result.get("targets")), _dict(result.get("traffic"))
    recovery, rto = _num(t.get("recovery_s")), _num(t.get("rto_s"))
    lost, rpo = _num(t.get("data_loss_rows")), _num(t.get("rpo_rows"))
    versions = (f"{_text(result.get('production_version')) or '?'} → "
                f"{_text(result.get('broken_version')) or '?'}")
    facts = [
        _fact("break", result.get("break"), hint=_meant_to_show(result)),
        _fact("triggered by", ", ".join(_triggers(result)) or "nothing",
              hint=_first_signal_note(result)),
        _fact("versions", versions),
        _fact("recovery", f"{_secs(recovery)} (RTO {_secs(rto)})", _target_cls(recovery, rto)),
        _fact("rows lost", f"{_rows(lost)} (RPO {_rows(rpo)})", _target_cls(lost, rpo)),
        _fact("layer", result.get("layer"), hint=_text(result.get("layer_reason"))),
        _fact("traffic", f"{_rows(traffic.get('total'))} requests",
              hint=f"{_rows(traffic.get('errors'))} errors" if traffic else ""),
        _fact("when", _span(result.get("started_at"), result.get("finished_at"))),
    ]
    return facts + ([_fact("incident", result["incident"])] if result.get("incident") else [])


def _triggers(result: dict[str, Any]) -> list[str]:
    """Every signal that called for the rollback; the one the break was meant to show first leads."""
    triggers = [str(t) for t in _list(result.get("trigger"))]
    first = _text(result.get("expected_trigger"))
    return sorted(triggers, key=lambda t: t != first)


def _meant_to_show(result: dict[str, Any]) -> str:
    """'meant to show first in errors (also in evals)', from what the drill expected of its build."""
    first = _text(result.get("expected_trigger"))
    if not first:
        return ""
    others = [str(t) for t in _list(result.get("expected_triggers")) if t != first]
    return f"meant to show first in {first}" + (f" (also in {', '.join(others)})" if others else "")


def _first_signal_note(result: dict[str, Any]) -> str:
    """When the signal the break was meant to show first did not trigger: what it read at the verdict."""
    first = _text(result.get("expected_trigger"))
    if not first or first in _triggers(result) or not _list(result.get("trigger")):
        return ""
    row = next((r for r in map(_dict, _list(result.get("signals"))) if r.get("signal") == first), None)
    if row is None:
        return f"{first} did not trigger"
    read = [_text(row.get("now"))] + ([f"baseline {row['baseline']}"] if _text(row.get("baseline")) not in
                                        ("", "—") else [])
    read = [r for r in read if r]
    return (f"{first} did not trigger yet: {_text(row.get('verdict')) or 'no verdict'}"
            + (f" ({', '.join(read)})" if read else ""))


def _fact(label: str, value: Any, cls: str = "", hint: str = "") -> dict[str, str]:
    return {"label": label, "value": _text(value) or "n/a", "cls": cls, "hint": hint}


def _target_cls(value: float | None, target: float | None) -> str:
    if value is None:
        return "bad"
    return "good" if target is None or value <= target else "bad"


def _span(start: Any, end: Any) -> str:
    """'2026-11-27 01:45:00 to 01:45:40 UTC' (the end's date only when it differs)."""
    first, last = _utc(start), _utc(end)
    if first is None:
        return _text(start)
    head = first.strftime("%Y-%m-%d %H:%M:%S")
    if last is None:
        return f"{head} UTC"
    tail = last.strftime("%H:%M:%S" if last.date() == first.date() else "%Y-%m-%d %H:%M:%S")
    return f"{head} to {tail} UTC"


def _utc(value: Any) -> datetime | None:
    try:
        when = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return when.astimezone(UTC) if when.tzinfo else when.replace(tzinfo=UTC)


def _switch_overs(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The stretches when neither version served (drain of one to the other healthy): from, to, what."""
    out = []
    for o in map(_dict, _list(result.get("switch_overs"))):
        start, end = _num(o.get("from")), _num(o.get("to"))
        if start is not None and end is not None and end >= start:
            out.append({"from": start, "to": end, "what": _text(o.get("what"))})
    return out


def _buckets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The traffic buckets, each with its start `t` and end `t_end` (a one-second bucket when not said)."""
    out = []
    for s in map(_dict, _series(result)):
        start = _num(s.get("t"))
        if start is None:
            continue
        end = _num(s.get("t_end"))
        out.append({**s, "t": start, "t_end": end if end is not None and end > start else start + 1.0})
    return sorted(out, key=lambda b: b["t"])


def _traffic_view(result: dict[str, Any], marks: dict[str, Any], scale: charts.TimeScale,
                  overs: list[dict[str, Any]]) -> dict[str, Any]:
    buckets = _buckets(result)
    rate = [(b["t"], b["t_end"], _rate(b), _bucket_title(b, scale)) for b in buckets]
    p95 = [(b["t"], b["t_end"], _num(b.get("p95_ms")), _bucket_title(b, scale)) for b in buckets]
    return {"errors_chart": charts.line_chart(rate, marks, scale, floor=1.0, unit=" %", overs=overs),
            "latency_chart": charts.line_chart(p95, marks, scale, floor=10.0, unit=" ms", overs=overs),
            "traffic_note": _traffic_note(result, buckets, scale)}


def _bucket_title(b: dict[str, Any], scale: charts.TimeScale) -> str:
    """'12.8-13.5 s: 6 of 8 failed (3 no answer), p95 66.7 ms', for the bucket's tooltip."""
    span = f"{b['t'] - scale.t0:.1f}-{b['t_end'] - scale.t0:.1f} s"
    requests = int(_num(b.get("requests")) or 0)
    if not requests:
        return f"{span}: no request ended"
    errors, silent = int(_num(b.get("errors")) or 0), _num(b.get("no_answer"))
    failed = f"{errors} of {requests} failed" + (f" ({silent:.0f} no answer)" if silent else "")
    p95 = _num(b.get("p95_ms"))
    return f"{span}: {failed}" + (f", p95 {p95:.1f} ms" if p95 is not None else "")


def _traffic_note(result: dict[str, Any], buckets: list[dict[str, Any]], scale: charts.TimeScale) -> str:
    """Where the traffic starts and what came before it, for the subtitle."""
    if not buckets:
        return ""
    started = _num(_dict(result.get("traffic")).get("started"))
    start = min(started if started is not None else buckets[0]["t"], buckets[0]["t"])
    seed = next((p for p in _phases(result) if p["name"] == "seed"), None)
    after = (" (after the seed; its turns are not plotted)"
             if seed and start >= seed["start"] + seed["seconds"] - 0.5 else "")
    return f"Traffic from {start - scale.t0:.1f} s{after} to the end of the drill"


def _rate(bucket: dict[str, Any]) -> float | None:
    requests, errors = _num(bucket.get("requests")), _num(bucket.get("errors"))
    if not requests:
        return None
    return 100.0 * (errors or 0.0) / requests


def _checks_view(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"name": _text(c.get("name")), "passed": c.get("passed") is True,
             "detail": _text(c.get("detail"))}
            for c in map(_dict, _list(result.get("checks")))]


def _tables_view(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Per table: rows before, written in the bad window, salvaged and lost."""
    return [{"table": _text(t.get("table")),
             **{k: int(_num(t.get(k)) or 0) for k in ("before", "bad_window", "salvaged", "lost")}}
            for t in map(_dict, _list(result.get("tables")))]


def _rows_total(result: dict[str, Any]) -> dict[str, int] | None:
    """The bad window's rows over all tables: written, salvaged, lost."""
    tables = _tables_view(result)
    if not tables:
        return None
    return {k: sum(t[k] for t in tables) for k in ("bad_window", "salvaged", "lost")}


def _slowest_view(result: dict[str, Any], history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = _slowest(result, history)
    top = max((r["seconds"] for r in rows), default=1.0) or 1.0
    detail = {p["name"]: p["detail"] for p in _phases(result)}
    return [{"name": r["name"], "seconds": _secs(r["seconds"]),
             "pct": round(100 * r["seconds"] / top, 1), "detail": detail.get(r["name"], ""),
             "previous": _secs(r["previous_s"]) if r["previous_s"] is not None else None,
             "change": _change(r["seconds"], r["previous_s"]),
             "compared": _compared(r["seconds"], r["previous_s"])} for r in rows]


def _trend_view(result: dict[str, Any], history: list[dict[str, Any]]) -> dict[str, Any]:
    """Recovery seconds of every past drill and this one, oldest first."""
    drills = [h for h in history if h.get("id") != result.get("id")] + [result]
    points = [{"id": _text(d.get("id")), "label": _short_date(d), "break": _text(d.get("break")),
               "recovery_s": _num(_dict(d.get("targets")).get("recovery_s")),
               "passed": d.get("passed") is True, "current": d is result}
              for d in sorted(drills, key=_order)]
    rto = _num(_dict(result.get("targets")).get("rto_s"))
    return {"trend_chart": charts.trend_chart(points, rto), "first_drill": len(points) == 1,
            "drill_count": len(points)}


def _short_date(d: dict[str, Any]) -> str:
    when = _when(d)
    if when is None:
        return _text(d.get("id"))[:13]
    return datetime.fromtimestamp(when, UTC).strftime("%b %d %H:%M")


def _failure_view(failure: dict[str, Any]) -> dict[str, Any]:
    return {"where": _text(failure.get("where")) or "unknown", "why": _text(failure.get("why")),
            "next": [_text(s) for s in _list(failure.get("next")) if s]}
