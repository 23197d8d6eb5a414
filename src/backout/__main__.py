"""`python -m backout`: the same as the `backout` command."""

from backout.cli.main import main

main()
