"""`python -m ptflow` is the `ptflow` command."""
from ptflow.cli import main

main()
