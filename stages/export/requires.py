"""What loading an exported program needs imported first, found in the program itself.

A ``.pt2`` (and an AOTInductor package) names its operators and its output classes; torch
resolves them at load time, so each must be registered by then:

- an operator outside torch's core namespaces (PT2E's ``quantized_decomposed``, torchao's
  ops, a user's ``torch.library`` op) is registered by the Python module that defined it —
  found from torch's dispatcher record ("registered at <file>:<line>");
- a tensor subclass among the weights (torchao's quantized tensors) needs its class's module;
- an output class (a Hugging Face ``ModelOutput``, a dataclass) is a pytree node: its module
  registers it on import, or — for a plain dataclass ptflow registered for the export — the
  load line registers it the same way.

``statements`` turns these into the Python that goes before a format's load line, and
``distributions`` into the packages to install.
"""
from __future__ import annotations

import dataclasses
import os
import re
import sys
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

from ptflow.stages.export.registry import output_classes

# operator namespaces `import torch` registers itself
CORE_NAMESPACES = frozenset({"aten", "prims", "higher_order", "_ops", "profiler", "inductor", "_c10d_functional",
                             "c10d_functional", "quantized", "_quantized", "mkldnn", "onednn", "mkl", "export",
                             "_export", "debugprims", "rngprims", "_dynamo", "custom_ops"})
_REGISTERED_AT = re.compile(r"registered at (.+?\.py):\d+")


@dataclasses.dataclass(frozen=True)
class Needs:
    """Modules to import (in order) and dataclasses to register before loading."""

    imports: tuple[str, ...] = ()
    registrations: tuple[tuple[str, str], ...] = ()   # (module, qualname) registered with register_dataclass

    def statements(self) -> str:
        """The Python to run before a load line ('' when nothing is needed)."""
        lines = [f"import {name}" for name in self.imports]
        lines += [f"torch.export.register_dataclass({module}.{qualname}, serialized_type_name="
                  f"{module + '.' + qualname!r})" for module, qualname in self.registrations]
        if self.registrations:
            lines.insert(0, "import torch")
        return "; ".join(dict.fromkeys(lines)) + ("; " if lines else "")

    def plus(self, imports: Iterable[str]) -> Needs:
        return Needs(tuple(dict.fromkeys(list(self.imports) + list(imports))), self.registrations)

    def distributions(self) -> list[str]:
        """The installed distributions that provide the modules (beyond torch)."""
        return distributions_of(list(self.imports) + [m for m, _ in self.registrations])


def program_needs(program: Any, sample_output: object, registered: Iterable[type] = ()) -> Needs:
    """What loading `program` (a torch.export ExportedProgram) needs, with the model's output."""
    imports = op_modules(_custom_ops(program))
    for value in list(program.state_dict.values()) + list(getattr(program, "constants", {}).values()):
        cls = type(value)
        if _is_subclass_tensor(cls):
            imports.append(cls.__module__)
    registered = set(registered)
    registrations = []
    for cls in output_classes(sample_output):
        if cls in registered:
            registrations.append((cls.__module__, cls.__qualname__))
        imports.append(cls.__module__)
    return Needs(tuple(dict.fromkeys(m for m in imports if not _is_torch_core(m))),
                 tuple(dict.fromkeys(registrations)))


def op_modules(ops: dict[str, list[str]]) -> list[str]:
    """The modules whose import registers these operators (namespace -> qualified op names,
    ``ns::name``); core namespaces are skipped."""
    found = []
    for namespace, names in ops.items():
        if namespace not in CORE_NAMESPACES:
            module = _defining_module(namespace, names)
            if module:
                found.append(module)
    return found


def script_ops(scripted: Any) -> dict[str, list[str]]:
    """The operators outside ``aten``/``prim`` a TorchScript module calls, by namespace (its
    inlined graph holds the calls of every submodule)."""
    found: dict[str, dict[str, None]] = {}
    for node in scripted.inlined_graph.nodes():
        namespace, _, _ = node.kind().partition("::")
        if namespace not in ("prim", "aten"):
            found.setdefault(namespace, {})[node.kind()] = None
    return {ns: list(ops) for ns, ops in found.items()}


def distributions_of(modules: Iterable[str]) -> list[str]:
    """Distribution names (as pip installs them) that provide the top-level packages of `modules`.

    ``metadata.packages_distributions()`` would list every top-level name of every installed
    distribution, reading each one's whole file list (0.2-0.9 s in a run's process, where
    the heap is large); only the distributions that can hold these names are read here."""
    tops = {module.split(".")[0] for module in modules}
    if not tops:
        return []
    return sorted({dist.metadata["Name"] for dist in metadata.distributions() if _provides(dist, tops)})


def _provides(dist: metadata.Distribution, tops: set[str]) -> bool:
    """Whether `dist` installs one of the top-level packages `tops`: those its top_level.txt
    declares or, without one, the first part of each module file it lists (what
    ``packages_distributions`` reads). A file list that never names them is not parsed."""
    declared = (dist.read_text("top_level.txt") or "").split()
    if declared:
        return not tops.isdisjoint(declared)
    listing = dist.read_text("RECORD")
    if listing is not None and not any(re.search(f'^"?{re.escape(top)}[/.]', listing, re.MULTILINE) for top in tops):
        return False   # no listed path starts with one of them
    return any(_top_level_name(path) in tops for path in dist.files or ())


def _top_level_name(path: metadata.PackagePath) -> str | None:
    """The importable top-level name a listed file belongs to (None: not a module file)."""
    if path.suffix not in (".py", ".so", ".pyd"):
        return None
    return path.parts[0] if len(path.parts) > 1 else path.name.split(".")[0]


def _custom_ops(program: Any) -> dict[str, list[str]]:
    """Operators outside torch's core namespaces in the program's graphs: namespace -> op names."""
    import torch

    found: dict[str, dict[str, None]] = {}
    for graph_module in [m for _, m in program.graph_module.named_modules() if isinstance(m, torch.fx.GraphModule)]:
        for node in graph_module.graph.nodes:
            target = node.target
            if node.op == "call_function" and isinstance(target, torch._ops.OpOverload) \
                    and target.namespace not in CORE_NAMESPACES:
                found.setdefault(target.namespace, {})[target._schema.name] = None
    return {ns: list(ops) for ns, ops in found.items()}


def _defining_module(namespace: str, ops: list[str]) -> str | None:
    """The module whose import registers these operators: the module of a
    ``torch.library.custom_op``'s function; else the Python file torch's dispatcher says
    defined them (a module loaded in this process, outside torch's own custom-op machinery);
    else a module named as the namespace (an extension whose operators are defined in C++)."""
    import importlib.util

    import torch

    custom = getattr(getattr(torch, "_library", None), "custom_ops", None)
    for op in ops:
        opdef = getattr(custom, "OPDEFS", {}).get(op)
        module = getattr(getattr(opdef, "_init_fn", None), "__module__", None)
        if module:
            return module
    torch_library = str(Path(torch.__file__).resolve().parent / "_library")
    registered_in: list[str] = []   # the files the dispatcher names, in its order
    for op in ops:
        try:
            dump = torch._C._dispatch_dump(op)
        except RuntimeError:
            continue
        for match in _REGISTERED_AT.finditer(dump):
            file = str(Path(match.group(1)).resolve())
            if not file.startswith(torch_library):
                registered_in.append(file)
    loaded = _loaded_modules_at(registered_in)
    for file in registered_in:
        if file in loaded:
            return loaded[file]
    try:
        return namespace if importlib.util.find_spec(namespace) is not None else None
    except (ImportError, ValueError):
        return None


def _loaded_modules_at(files: list[str]) -> dict[str, str]:
    """{file: name of the loaded module imported from it} for these resolved files. Only
    modules whose file has one of their names are resolved: a run's process holds thousands
    of modules, and resolving every path costs a few hundred ms."""
    names = {os.path.basename(file) for file in files}
    found: dict[str, str] = {}
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if isinstance(file, str) and os.path.basename(file) in names:
            found[str(Path(file).resolve())] = name   # an alias listed later wins, as before
    return found


def _is_subclass_tensor(cls: type) -> bool:
    import torch

    return issubclass(cls, torch.Tensor) and cls not in (torch.Tensor, torch.nn.Parameter) \
        and not cls.__module__.startswith("torch.")


def _is_torch_core(module: str) -> bool:
    return module == "torch" or module == "builtins"
