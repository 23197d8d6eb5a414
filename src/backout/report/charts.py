"""Chart geometry for the drill report: numbers and path strings, drawn as SVG by the template.

Nothing here writes markup: the template turns these dicts into `<svg>` elements, so every label
goes through jinja2's autoescape. All time charts share one horizontal scale (the plot area starts
at `PLOT_X0` and ends at `PLOT_X1`), so the timeline and the traffic charts line up vertically.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = ["WIDTH", "TimeScale", "duration_text", "line_chart", "nice_ceiling", "nice_step",
           "timeline_chart", "trend_chart"]

WIDTH = 1000
PLOT_X0 = 150.0
PLOT_X1 = 940.0
_ROW_H = 23
_MARK_LABELS = {"switch": "switch", "detect": "detected", "recovered": "recovered"}
_TICK_STEPS = (1, 2, 5, 10, 15, 20, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200)
_PHASE_GROUPS = {"bring-up": "prep", "seed": "prep", "baseline": "prep", "pre-flight": "prep",
                 "snapshot": "prep", "upgrade": "bad", "detect": "detect", "decide": "detect",
                 "drain": "recover", "restore": "recover", "start": "recover", "salvage": "recover",
                 "verify": "verify", "notify": "verify", "checks": "verify"}


def duration_text(seconds: float | None) -> str:
    """'2.6 s'; under a second in milliseconds ('27 ms', '<1 ms'), so that no phase reads '0.0 s'."""
    if seconds is None:
        return "n/a"
    if seconds < 0.0005:
        return "<1 ms"
    if seconds < 0.9995:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds:.1f} s"


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 × 10^k that is at least `value` (and above 0)."""
    if value <= 0:
        return 1.0
    base = 10 ** math.floor(math.log10(value))
    for f in (1, 2, 2.5, 5, 10):
        if f * base >= value - 1e-9:
            return f * base
    return 10 * base


def nice_step(value: float) -> float:
    """A round tick step of at least `value`: 1, 1.5, 2, 2.5, 3, 4, 5, 6 or 8 × 10^k."""
    if value <= 0:
        return 1.0
    base = 10 ** math.floor(math.log10(value))
    return next(f * base for f in (1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10) if f * base >= value - 1e-9)


def _fmt(v: float) -> str:
    return f"{v:.1f}".rstrip("0").rstrip(".") if v < 10 else f"{v:.0f}"


@dataclass(frozen=True)
class TimeScale:
    """Epoch seconds [t0, t1] onto the shared plot area [PLOT_X0, PLOT_X1]."""

    t0: float
    t1: float

    def x(self, t: float) -> float:
        """The x coordinate of epoch second `t` (clamped to the plot area)."""
        span = max(self.t1 - self.t0, 1e-9)
        frac = min(max((t - self.t0) / span, 0.0), 1.0)
        return round(PLOT_X0 + frac * (PLOT_X1 - PLOT_X0), 1)

    def ticks(self) -> list[dict[str, Any]]:
        """Axis ticks in seconds since t0, at most about ten of them."""
        span = max(self.t1 - self.t0, 1.0)
        step = next((s for s in _TICK_STEPS if span / s <= 10), _TICK_STEPS[-1])
        count = int(span // step) + 1
        return [{"x": self.x(self.t0 + i * step), "label": _clock(i * step, span)}
                for i in range(count)]


def _clock(seconds: float, span: float) -> str:
    if span <= 180:
        return f"{seconds:.0f} s"
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


def _marks(marks: dict[str, Any], scale: TimeScale) -> list[dict[str, Any]]:
    """Vertical marker lines; labels that would collide are stacked on levels 0..2."""
    out: list[dict[str, Any]] = []
    for key, label in _MARK_LABELS.items():
        t = marks.get(key)
        if isinstance(t, (int, float)):
            out.append({"x": scale.x(t), "label": label, "cls": key, "level": 0})
    out.sort(key=lambda m: m["x"])
    for prev, cur in zip(out, out[1:]):
        if cur["x"] - prev["x"] < 80:
            cur["level"] = (prev["level"] + 1) % 3
    return out


def _overs(overs: list[dict[str, Any]] | None, scale: TimeScale) -> list[dict[str, Any]]:
    """The switch-overs (neither version serving) as x ranges, each with its tooltip."""
    out = []
    for o in overs or []:
        x0, x1 = scale.x(o["from"]), scale.x(o["to"])
        what = f" ({o['what']})" if o.get("what") else ""
        out.append({"x": x0, "w": round(max(x1 - x0, 1.0), 1),
                    "title": f"switch-over{what}, {duration_text(o['to'] - o['from'])}: the old version "
                             "draining, then no answer until the new one was healthy"})
    return out


def _band(marks: dict[str, Any], scale: TimeScale) -> dict[str, float] | None:
    """The bad window (switch to recovered, or to the end) as an x range."""
    start = marks.get("switch")
    if not isinstance(start, (int, float)):
        return None
    end = marks.get("recovered")
    x0 = scale.x(start)
    x1 = scale.x(end) if isinstance(end, (int, float)) else PLOT_X1
    return {"x": x0, "w": round(max(x1 - x0, 1.0), 1)}


def timeline_chart(phases: list[dict[str, Any]], marks: dict[str, Any], scale: TimeScale,
                   failed_phase: str | None,
                   overs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Gantt rows (one per phase), the time axis, marker lines and the bad-window band."""
    lines = _marks(marks, scale)
    top = 22 + 12 * max((m["level"] for m in lines), default=0)
    rows = [_phase_row(p, i, top, scale, failed_phase) for i, p in enumerate(phases)]
    height = top + max(len(rows), 1) * _ROW_H + 26
    return {"width": WIDTH, "height": height, "rows": rows, "top": top,
            "bottom": top + max(len(rows), 1) * _ROW_H, "ticks": scale.ticks(),
            "marks": lines, "band": _band(marks, scale), "overs": _overs(overs, scale),
            "x0": PLOT_X0, "x1": PLOT_X1, "empty": not rows}


def _phase_row(p: dict[str, Any], i: int, top: int, scale: TimeScale,
               failed_phase: str | None) -> dict[str, Any]:
    start, secs = float(p["start"]), float(p["seconds"])
    x = scale.x(start)
    w = max(scale.x(start + secs) - x, 2.0)
    room_right = x + w <= PLOT_X1 - 50
    label_inside = not room_right and w >= 50
    label_x = x + w + 6 if room_right else x + w - 6 if label_inside else x - 6
    group = "failed" if p["name"] == failed_phase else _PHASE_GROUPS.get(p["name"], "other")
    return {"name": p["name"], "seconds": duration_text(secs), "detail": p.get("detail", ""),
            "x": x, "w": round(w, 1), "y": top + i * _ROW_H + 5, "h": _ROW_H - 9,
            "text_y": top + i * _ROW_H + _ROW_H / 2 + 4, "group": group,
            "label_x": round(label_x, 1), "anchor": "start" if room_right else "end",
            "inside": label_inside}


def line_chart(buckets: list[tuple[float, float, float | None, str]], marks: dict[str, Any],
               scale: TimeScale, floor: float, unit: str,
               overs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A step chart of buckets (start, end, value or None, tooltip): each value drawn flat over its own
    bucket from its start to its end, so a bucket cut at a mark is drawn on its own side of it; gaps at
    None and between buckets that do not touch. y from 0 to a nice maximum."""
    top, height = 24, 170
    base = height - 30
    values = [v for _, _, v, _ in buckets if v is not None]
    ymax = 4 * nice_step(max(values + [floor]) * 1.1 / 4)

    def y(v: float) -> float:
        return round(base - (base - top) * min(v / ymax, 1.0), 1)

    segments: list[list[tuple[float, float, float]]] = [[]]
    last_end: float | None = None
    for start, end, v, _ in buckets:
        if v is None or (last_end is not None and start - last_end > 1e-6):
            if segments[-1]:
                segments.append([])
        if v is not None:
            segments[-1].append((scale.x(start), scale.x(end), y(v)))
        last_end = end
    segments = [seg for seg in segments if seg]
    return {"width": WIDTH, "height": height, "top": top, "base": base,
            "lines": [_step_path(seg) for seg in segments],
            "areas": [_step_path(seg) + f" L{seg[-1][1]},{base} L{seg[0][0]},{base} Z"
                      for seg in segments],
            "buckets": [{"x": scale.x(start), "w": round(max(scale.x(end) - scale.x(start), 0.5), 1),
                         "title": title} for start, end, _, title in buckets],
            "yticks": [{"y": y(ymax * i / 4), "label": f"{_fmt(ymax * i / 4)}{unit}"}
                       for i in range(5)],
            "ticks": scale.ticks(), "marks": _marks(marks, scale), "band": _band(marks, scale),
            "overs": _overs(overs, scale),
            "x0": PLOT_X0, "x1": PLOT_X1, "empty": not values,
            "peak": f"{_fmt(max(values))}{unit}" if values else None}


def _step_path(seg: list[tuple[float, float, float]]) -> str:
    """Flat over each bucket [x0, x1] at its level, straight up or down at the boundary to the next."""
    out = f"M{seg[0][0]},{seg[0][2]} L{seg[0][1]},{seg[0][2]}"
    for x0, x1, y in seg[1:]:
        out += f" L{x0},{y} L{x1},{y}"
    return out


def _line_path(seg: list[tuple[float, float]]) -> str:
    head = f"M{seg[0][0]},{seg[0][1]}"
    if len(seg) == 1:
        return head + " l0.01,0"  # a dot, drawn by the round line cap
    return head + "".join(f" L{x},{y}" for x, y in seg[1:])


def trend_chart(drills: list[dict[str, Any]], rto: float | None) -> dict[str, Any]:
    """Recovery seconds per drill, oldest first: points, a joining line, y ticks, the RTO line.

    Each drill is {"id", "label", "break", "recovery_s" (None when it did not recover),
    "passed", "current"}; a drill without a recovery is drawn above the top gridline.
    """
    top, height, left, right = 34, 220, 70.0, 960.0
    base = height - 44
    values = [d["recovery_s"] for d in drills if d["recovery_s"] is not None]
    ymax = 4 * nice_step(max(values + [1.0]) * 1.3 / 4)
    rto_y = None
    if rto is not None and rto <= ymax:
        rto_y = round(base - (base - top) * rto / ymax, 1)

    def y(v: float | None) -> float:
        return top - 12.0 if v is None else round(base - (base - top) * min(v / ymax, 1.0), 1)

    step = (right - left - 100) / max(len(drills) - 1, 1)
    xs = ([(left + right) / 2] if len(drills) == 1
          else [left + 50 + i * step for i in range(len(drills))])
    every = max(1, math.ceil(len(drills) / 10))
    points = [_trend_point(d, round(x, 1), y(d["recovery_s"]), i % every == 0 or d["current"])
              for i, (d, x) in enumerate(zip(drills, xs))]
    known = [p for p in points if not p["missing"]]
    return {"width": WIDTH, "height": height, "top": top, "base": base, "left": left,
            "right": right, "points": points,
            "line": _line_path([(p["x"], p["y"]) for p in known]) if len(known) > 1 else None,
            "yticks": [{"y": y(ymax * i / 4), "label": f"{_fmt(ymax * i / 4)} s"}
                       for i in range(5)],
            "rto_y": rto_y, "rto_label": f"RTO {_fmt(rto)} s" if rto is not None else None,
            "rto_off_scale": rto is not None and rto_y is None}


def _trend_point(d: dict[str, Any], x: float, y: float, labelled: bool) -> dict[str, Any]:
    missing = d["recovery_s"] is None
    value = "no recovery" if missing else f"{d['recovery_s']:.1f} s"
    return {"x": x, "y": y, "passed": bool(d["passed"]), "current": bool(d["current"]),
            "missing": missing, "value": value, "label": d["label"] if labelled else "",
            "sublabel": d.get("break", "") if labelled else "",
            "title": f"{d['id']} ({d.get('break') or 'unknown'} break): {value}, "
                     f"{'passed' if d['passed'] else 'failed'}"}
