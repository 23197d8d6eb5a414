"""Reports: the drill report (`drill-<id>.json` and a self-contained `drill-<id>.html`)."""

from __future__ import annotations

from backout.report.drill import (
    drill_paths,
    duration_text,
    history_rows,
    load_history,
    render_html,
    render_terminal,
    slowest_phases,
    write_report,
)

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
