"""Turning numbers into a verdict: the accuracy gate (``accuracy``), how far outputs moved
(``fidelity``), the metric a sweep optimises (``objective``), and the ranking of recorded
runs against a budget, with its Pareto front and its ties (``compare``, ``compare_select``, ``pareto``, ``ties``).

May import: ``ptflow.core``, ``ptflow.inputs``, ``ptflow.measure``.
"""
