"""Flows build plans from what the layers report: switch, upgrade, rollback, drill, check."""
