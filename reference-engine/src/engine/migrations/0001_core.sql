-- compat: forward-only
-- The Engine's core brain: memory stores, conversation threading, telemetry and channel state.
CREATE TABLE engine_meta (
  key   TEXT PRIMARY KEY,
  value TEXT NOT NULL
);
CREATE TABLE conversations (
  id         INTEGER PRIMARY KEY,
  task_id    TEXT NOT NULL,
  message_id TEXT NOT NULL UNIQUE,
  role       TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
  content    TEXT NOT NULL,
  created_at TEXT NOT NULL
);
CREATE INDEX ix_conversations_task ON conversations(task_id);
CREATE TABLE working_memory_log (
  id         INTEGER PRIMARY KEY,
  task_id    TEXT NOT NULL,
  key        TEXT NOT NULL,
  value      TEXT NOT NULL,
  created_at TEXT NOT NULL,
  expires_at TEXT
);
CREATE INDEX ix_working_memory_task ON working_memory_log(task_id);
CREATE TABLE trajectories (
  id          INTEGER PRIMARY KEY,
  task_id     TEXT NOT NULL,
  request_id  TEXT NOT NULL,
  steps       TEXT NOT NULL,
  status      TEXT NOT NULL,
  started_at  TEXT NOT NULL,
  finished_at TEXT NOT NULL
);
CREATE TABLE observability_events (
  id      INTEGER PRIMARY KEY,
  ts      TEXT NOT NULL,
  kind    TEXT NOT NULL,
  task_id TEXT,
  data    TEXT NOT NULL
);
CREATE TABLE episodes (
  id         INTEGER PRIMARY KEY,
  task_id    TEXT NOT NULL,
  summary    TEXT NOT NULL,
  created_at TEXT NOT NULL
);
CREATE INDEX ix_episodes_task ON episodes(task_id);
CREATE TABLE knowledge_store (
  id          INTEGER PRIMARY KEY,
  subject     TEXT NOT NULL,
  content     TEXT NOT NULL,
  type        TEXT NOT NULL DEFAULT 'fact',
  confidence  REAL NOT NULL,
  source      TEXT NOT NULL,
  valid_from  TEXT NOT NULL,
  valid_until TEXT
);
CREATE TABLE social_graph_nodes (
  id         INTEGER PRIMARY KEY,
  name       TEXT NOT NULL UNIQUE,
  kind       TEXT NOT NULL DEFAULT 'person',
  mentions   INTEGER NOT NULL DEFAULT 0,
  first_seen TEXT NOT NULL,
  last_seen  TEXT NOT NULL
);
CREATE TABLE social_graph_edges (
  id         INTEGER PRIMARY KEY,
  src        INTEGER NOT NULL REFERENCES social_graph_nodes(id),
  dst        INTEGER NOT NULL REFERENCES social_graph_nodes(id),
  relation   TEXT NOT NULL,
  task_id    TEXT,
  created_at TEXT NOT NULL
);
CREATE TABLE learning_signals (
  id         INTEGER PRIMARY KEY,
  task_id    TEXT NOT NULL,
  message_id TEXT,
  rating     INTEGER NOT NULL,
  comment    TEXT,
  created_at TEXT NOT NULL
);
CREATE TABLE channel_state_snapshots (
  id            INTEGER PRIMARY KEY,
  task_id       TEXT NOT NULL,
  ts_ms         INTEGER NOT NULL,
  event         TEXT NOT NULL,
  data          TEXT NOT NULL,
  expires_at_ms INTEGER NOT NULL
);
CREATE INDEX ix_channel_state_ts ON channel_state_snapshots(ts_ms);
