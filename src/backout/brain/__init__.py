"""Everything that touches SQLite: snapshots, restore, schema stamps and diffs, salvage."""
