"""backout: safe, reversible upgrades for services that keep their state in one SQLite file."""

__version__ = "0.1.0"
