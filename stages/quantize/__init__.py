"""The quantize stage family: the stage (``stage``), the recipe registry (``registry``) and
one module per technology (``torchao``, ``pt2e``, ``cast``, ``legacy``).

A recipe plugin writes ``from ptflow.stages.quantize import quantize_recipe`` (the names
below come from ``registry``, which imports nothing of this family).
"""
from ptflow.stages.quantize.registry import Needs, Quantized, QuantizeJob, quantize_recipe, recipes  # noqa: F401
