"""The drill report: `drill-<id>.json` (the result as the drill produced it) and `drill-<id>.html`.

The HTML page is self-contained: inline CSS, charts as inline SVG drawn from numbers computed in
Python (`charts.py`), no script, no font or stylesheet from the network. The result dict is taken
as it comes: any key may be missing or null (a drill that failed half-way still gets a report).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from backout.fsutil import atomic_write_json, ensure_private_dir, replace_text
from backout.report import charts

__all__ = [
    "drill_paths",
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
    return "n/a" if value is None else f"{value:.1f} s"


def _change(now: float, before: float | None) -> dict[str, str] | None:
    """'+2.1 s (+35%)' against the previous drill, with a class saying slower or faster."""
    if before is None:
        return None
    delta = now - before
    pct = f" ({delta / before:+.0%})" if before > 0 else ""
    cls = "slower" if delta > 0.05 else "faster" if delta < -0.05 else "same"
    return {"text": f"{delta:+.1f} s{pct}", "cls": cls}


# -- terminal ------------------------------------------------------------------------------------


def render_terminal(result: dict[str, Any]) -> list[str]:
    """Plain lines for the terminal: phases, checks, slowest phases, then the verdict last."""
    return [*_terminal_phases(result), *_terminal_checks(result), *_terminal_slowest(result),
            *_terminal_targets(result), *_terminal_failure(result), _verdict_line(result)]


def _table(rows: list[tuple[str, ...]], indent: str = "  ") -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))] if rows else []
    return [(indent + "  ".join(c.ljust(w) for c, w in zip(r, widths))).rstrip() for r in rows]


def _clip(text: str, limit: int = 90) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _terminal_phases(result: dict[str, Any]) -> list[str]:
    phases = _phases(result)
    if not phases:
        return ["phases: none recorded"]
    rows = [(p["name"], f"{p['seconds']:.1f} s".rjust(8), _clip(p["detail"])) for p in phases]
    total = sum(p["seconds"] for p in phases)
    return ["phases", *_table(rows + [("total", f"{total:.1f} s".rjust(8), "")])]


def _terminal_checks(result: dict[str, Any]) -> list[str]:
    checks = [_dict(c) for c in _list(result.get("checks"))]
    if not checks:
        return ["checks: none run"]
    rows = [("PASS" if c.get("passed") is True else "FAIL", _text(c.get("name")),
             _clip(_text(c.get("detail")))) for c in checks]
    return ["checks", *_table(rows)]


def _terminal_slowest(result: dict[str, Any]) -> list[str]:
    slowest = _slowest(result, [])
    if not slowest:
        return []
    rows = []
    for s in slowest:
        change = _change(s["seconds"], s["previous_s"])
        than = (f"previous {s['previous_s']:.1f} s, {change['text']}" if change
                else "no previous drill of this kind")
        rows.append((s["name"], f"{s['seconds']:.1f} s".rjust(8), than))
    return ["slowest", *_table(rows)]


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
    return _ENV.get_template(TEMPLATE).render(**_view(result, history))


def _view(result: dict[str, Any], history: list[dict[str, Any]]) -> dict[str, Any]:
    failure = _dict(result.get("failure"))
    phases = _phases(result)
    marks = _dict(result.get("marks"))
    scale = _scale(result, phases)
    return {
        "id": _text(result.get("id")) or "unknown",
        "deployment": _text(result.get("deployment")) or "unknown",
        "runtime": _text(result.get("runtime")),
        "passed": result.get("passed") is True,
        "summary": _text(result.get("summary")),
        "facts": _facts(result),
        "timeline": charts.timeline_chart(phases, marks, scale, _text(failure.get("where"))),
        "total_s": _secs(sum(p["seconds"] for p in phases)) if phases else "n/a",
        **_traffic_view(result, marks, scale),
        "checks": _checks_view(result),
        "tables": _tables_view(result),
        "slowest": _slowest_view(result, history),
        **_trend_view(result, history),
        "failure": _failure_view(failure) if failure else None,
        "generated": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _scale(result: dict[str, Any], phases: list[dict[str, Any]]) -> charts.TimeScale:
    """One time scale for the timeline and the traffic charts: everything the drill recorded."""
    times = [p["start"] for p in phases] + [p["start"] + p["seconds"] for p in phases]
    times += [t for t in (_num(_dict(s).get("t")) for s in _series(result)) if t is not None]
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
    trigger = ", ".join(map(str, _list(result.get("trigger"))))
    facts = [
        _fact("break", result.get("break"), hint=f"detected by {trigger}" if trigger else ""),
        _fact("versions", versions),
        _fact("recovery", f"{_secs(recovery)} (RTO {_secs(rto)})", _target_cls(recovery, rto)),
        _fact("rows lost", f"{_rows(lost)} (RPO {_rows(rpo)})", _target_cls(lost, rpo)),
        _fact("layer", result.get("layer"), hint=_text(result.get("layer_reason"))),
        _fact("traffic", f"{_rows(traffic.get('total'))} requests",
              hint=f"{_rows(traffic.get('errors'))} errors" if traffic else ""),
        _fact("when", _span(result.get("started_at"), result.get("finished_at"))),
    ]
    return facts + ([_fact("incident", result["incident"])] if result.get("incident") else [])


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


def _traffic_view(result: dict[str, Any], marks: dict[str, Any],
                  scale: charts.TimeScale) -> dict[str, Any]:
    buckets = sorted((_dict(s) for s in _series(result) if _num(_dict(s).get("t")) is not None),
                     key=lambda s: s["t"])
    rate = [(float(s["t"]), _rate(s)) for s in buckets]
    p95 = [(float(s["t"]), _num(s.get("p95_ms"))) for s in buckets]
    return {"errors_chart": charts.line_chart(rate, marks, scale, floor=1.0, unit=" %"),
            "latency_chart": charts.line_chart(p95, marks, scale, floor=10.0, unit=" ms")}


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
    """Per table: counts, and the bar split of its bad-window rows into salvaged and lost."""
    rows = []
    for t in map(_dict, _list(result.get("tables"))):
        counts = {k: int(_num(t.get(k)) or 0) for k in ("before", "bad_window", "salvaged", "lost")}
        whole = max(counts["bad_window"], counts["salvaged"] + counts["lost"], 1)
        rows.append({"table": _text(t.get("table")), **counts,
                     "salvaged_pct": round(100 * counts["salvaged"] / whole, 1),
                     "lost_pct": round(100 * counts["lost"] / whole, 1)})
    return rows


def _slowest_view(result: dict[str, Any], history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = _slowest(result, history)
    top = max((r["seconds"] for r in rows), default=1.0) or 1.0
    detail = {p["name"]: p["detail"] for p in _phases(result)}
    return [{"name": r["name"], "seconds": _secs(r["seconds"]),
             "pct": round(100 * r["seconds"] / top, 1), "detail": detail.get(r["name"], ""),
             "previous": _secs(r["previous_s"]) if r["previous_s"] is not None else None,
             "change": _change(r["seconds"], r["previous_s"])} for r in rows]


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
