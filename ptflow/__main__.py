"""`python -m ptflow` is the `ptflow` command."""
from ptflow.app.cli import main

main()
