-- compat: additive
-- 2.4.1: conversations remember the channel a message came from. 2.4.0 ignores the column.
ALTER TABLE conversations ADD COLUMN channel TEXT;
