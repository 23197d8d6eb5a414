-- compat: forward-only
-- MCP calls have effects outside the brain (mail sent, resources deleted) that no rollback can
-- undo, so every call is recorded for the rollback report.
CREATE TABLE mcp_calls (
  id         INTEGER PRIMARY KEY,
  task_id    TEXT NOT NULL,
  request_id TEXT NOT NULL,
  tool       TEXT NOT NULL,
  action     TEXT NOT NULL,
  target     TEXT,
  status     TEXT NOT NULL,
  created_at TEXT NOT NULL
);
