"""backout's command line: one module per command group."""
