"""The Engine: an AI-agent service whose whole state is one SQLite brain.

Everything backout knows about it that is not true of other services lives here: its health body
(`status` and `subsystems`), its `X-Engine-Key` header, the turns on `POST /execute` that the verdict
counts, its JSON log lines, its Prometheus metric names, its `MIGRATION_*` refusal codes, its
`schema_migrations` ledger, its `mcp_calls` table of effects outside the brain, and its
`POST /memory/import` endpoint for salvaged rows. The salvage bundle that endpoint takes
(memory-import.json, written at salvage and replayed through it) is in `backout.profiles.engine_bundle`.
"""

from __future__ import annotations

from backout.profiles.model import HealthRule, LedgerRef, Profile, PrometheusQueries, RefusalSigns, SmokeRequest

__all__ = ["EFFECTS_TABLE", "INCREASE_QUERIES", "MEMORY_TABLES", "PROFILE", "TURN_PATH"]

TURN_PATH = "/execute"
EFFECTS_TABLE = "mcp_calls"
# The brain tables its memory export carries (salvage writes them as memory-import.json too).
MEMORY_TABLES = ("episodes", "knowledge_store", "social_graph_nodes", "social_graph_edges", "conversations",
                 "learning_signals", EFFECTS_TABLE)
_TURNS = f'path="{TURN_PATH}"'

# The same queries as per-window increases (the Prometheus source's mode="increase"), for recording
# rules and dashboards' habits; `$window` is replaced by the step. Approximate (see PrometheusSource).
INCREASE_QUERIES: dict[str, str] = {
    "total_query": f"sum by (status) (increase(engine_requests_total{{{_TURNS}}}[$window]))",
    "error_query": f'sum by (status) (increase(engine_requests_total{{{_TURNS},status=~"5.."}}[$window]))',
    "latency_query": f"sum by (le) (increase(engine_request_duration_seconds_bucket{{{_TURNS}}}[$window]))",
}

PROFILE = Profile(
    name="engine",
    description="the Engine (X-Engine-Key, turns on POST /execute, schema_migrations, mcp_calls)",
    health=HealthRule(status_field="status", ok_values=["ok"], subsystems_field="subsystems"),
    api_key_header="X-Engine-Key",
    api_key_prefix="",
    request_path=TURN_PATH,
    log_format="json",
    prometheus=PrometheusQueries(
        total=f"engine_requests_total{{{_TURNS}}}",
        errors=f'engine_requests_total{{{_TURNS},status=~"5.."}}',
        latency=f"engine_request_duration_seconds_bucket{{{_TURNS}}}",
        requests_metric="engine_requests_total",
        duration_metric="engine_request_duration_seconds",
    ),
    smoke=[
        SmokeRequest(method="GET", path=f"{TURN_PATH}/replay?after=0", expect_status=[200],
                     tables=["conversations"]),
        SmokeRequest(method="POST", path="/memory/knowledge/search", body={"query": "backout trial"},
                     expect_status=[200], json_path="results", tables=["knowledge_store"]),
    ],
    refusal=RefusalSigns(response_codes=["MIGRATION_"]),
    ledger=LedgerRef(kind="schema_migrations"),
    effects_table=EFFECTS_TABLE,
    replay="engine-import",
    import_path="/memory/import",
    detect_tables=["knowledge_store", "episodes", "schema_migrations"],
    turn_path=TURN_PATH,
    traffic="engine",
)
