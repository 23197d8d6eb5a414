"""A tiny Django project (one app, one model) for backout's third-party tests."""

VERSION = "1.0"
