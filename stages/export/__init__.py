"""The export stage family: the stage (``stage``), the format registry (``registry``), the
input example written beside the files (``example``) and one module per technology
(``torch_formats``: pt2, aoti, torchscript; ``portable``: safetensors, onnx).

A format plugin writes ``from ptflow.stages.export import export_format`` (the names
below come from ``registry``, which imports nothing of this family).
"""
from ptflow.stages.export.registry import ExportJob, export_format, formats  # noqa: F401
