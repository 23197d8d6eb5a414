"""Signals about a running version: health, errors and latency, regression evals; the verdict."""
