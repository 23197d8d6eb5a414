-- compat: additive
-- 2.4.0: episodes get an optional importance score and memories can be tagged. Older readers
-- ignore both.
ALTER TABLE episodes ADD COLUMN importance REAL;
CREATE TABLE memory_tags (
  id         INTEGER PRIMARY KEY,
  target     TEXT NOT NULL,
  target_id  INTEGER NOT NULL,
  tag        TEXT NOT NULL,
  created_at TEXT NOT NULL
);
