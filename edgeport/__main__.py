"""`python -m edgeport`: the same as the `edgeport` command."""

from edgeport.cli import main

main()
