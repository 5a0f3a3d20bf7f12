"""The commands that work on recorded runs: ``ptflow-compare`` (rank, pick and register a
recipe: ``compare_cli``) and ``ptflow-reproduce`` (run a recorded config again and check
what came out the same: ``reproduce``, ``reproduce_check``, with the allowlist of what a
stored config may run: ``reproduce_trust``).

May import: every ptflow package.
"""
