"""The compile stage family: the stage (``stage``), the backend registry (``registry``) and
one module per technology (``inductor``, ``runtimes``: AOTInductor and onnxruntime,
``legacy``: TorchScript).

A backend plugin writes ``from ptflow.stages.compile import compile_backend`` (the names
below come from ``registry``, which imports nothing of this family).
"""
from ptflow.stages.compile.registry import CompileJob, backends, compile_backend  # noqa: F401
