"""The reference Engine: a real HTTP agent service with an SQLite brain, forward-only migrations
and a graceful drain, used to exercise backout's upgrades, rollbacks and drills."""
