-- compat: forward-only
-- 2.4.0: knowledge facts move to a rebuilt table whose text column is `fact` (was `content`) and
-- which records the extractor that produced each fact. Readers of the old column cannot read it.
CREATE TABLE knowledge_store_new (
  id          INTEGER PRIMARY KEY,
  subject     TEXT NOT NULL,
  fact        TEXT NOT NULL,
  type        TEXT NOT NULL DEFAULT 'fact',
  confidence  REAL NOT NULL,
  source      TEXT NOT NULL,
  extractor   TEXT NOT NULL DEFAULT 'pattern-v1',
  valid_from  TEXT NOT NULL,
  valid_until TEXT
);
INSERT INTO knowledge_store_new (id, subject, fact, type, confidence, source, valid_from, valid_until)
  SELECT id, subject, content, type, confidence, source, valid_from, valid_until FROM knowledge_store;
DROP TABLE knowledge_store;
ALTER TABLE knowledge_store_new RENAME TO knowledge_store;
CREATE INDEX ix_knowledge_subject ON knowledge_store(subject);
