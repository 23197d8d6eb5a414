"""The evidence a rollback keeps: diagnostics bundle, postmortem, regression case, ticket.

Everything lands under `<state_dir>/incidents/<incident_id>/`, redacted, 0600 files in 0700
folders; all of it is written from the incident record (a plain dict, also saved as incident.json).
"""

from __future__ import annotations

from backout.evidence.diagnostics import DiagnosticsInput, collect_diagnostics, migration_history
from backout.evidence.postmortem import render_postmortem, write_postmortem
from backout.evidence.redact import REDACTED, Redactor, secrets_of
from backout.evidence.regression import case_name, regression_case, write_regression_case
from backout.evidence.tracker import TicketResult, file_ticket

__all__ = [
    "REDACTED",
    "DiagnosticsInput",
    "Redactor",
    "TicketResult",
    "case_name",
    "collect_diagnostics",
    "file_ticket",
    "migration_history",
    "regression_case",
    "render_postmortem",
    "secrets_of",
    "write_postmortem",
    "write_regression_case",
]
