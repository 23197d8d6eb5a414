"""How a version runs, drains, logs: the process adapter (default) and the compose adapter."""
