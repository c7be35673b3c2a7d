"""`python -m rcbatch`: the same as the `rcbatch` command."""

from rcbatch.cli import main

main()
