"""Quantization coverage: what share of a model's weights a recipe converted, which module
types it left in float, and what to tell the user about them.

"Weights" are the parameters with two or more dimensions (Linear and convolution kernels,
RNN matrices, embedding tables): what quantization targets. Biases and norm scales stay
float under every int8 recipe and are a sliver of a model; they are not counted.
"""
from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ptflow.core.errors import InputError
from ptflow.core.spec import ModelInputs, call
from ptflow.stages.quantize.registry import Recipe, Selection, handled_by

if TYPE_CHECKING:   # imported where used: importing this module must not import torch (fast plan checks)
    import torch

MOSTLY_FLOAT = 0.5   # warn when a recipe converts less than this share of the weights


def _multiplies() -> tuple[type, ...]:
    """Modules whose weights take part in matmuls/convolutions: each must show FLOPs of its own
    (an Embedding's lookup or a positional parameter's add rightly counts 0)."""
    import torch

    return (torch.nn.Linear, torch.nn.Bilinear, torch.nn.modules.conv._ConvNd, torch.nn.RNNBase,
            torch.nn.RNNCellBase, torch.nn.MultiheadAttention)


def weight_modules(model: torch.nn.Module) -> dict[str, tuple[type, int]]:
    """{module name: (its type, elements of its own 2+-dim parameters)} for each module
    holding weights; a weight shared by two modules counts once."""
    found, seen = {}, set()
    for name, module in model.named_modules():
        own = [p for p in module.parameters(recurse=False) if p.dim() >= 2 and id(p) not in seen]
        seen.update(id(p) for p in own)
        if own:
            found[name] = (type(module), sum(p.numel() for p in own))
    return found


def changed_modules(before: torch.nn.Module, after: torch.nn.Module) -> set[str]:
    """The weight modules of `before` that `after` holds converted under the same name: a
    module of another type (torch.ao's packed modules), or weights that became a tensor
    subclass (torchao), another dtype (a cast) or other values (a recipe rounding in place)."""
    changed = set()
    for name in weight_modules(before):
        old = before.get_submodule(name)
        try:
            new = after.get_submodule(name)
        except AttributeError:   # gone: whatever replaced it is the recipe's to report
            continue
        if type(new) is not type(old) or any(_converted(weight, getattr(new, key, None))
                                             for key, weight in old.named_parameters(recurse=False)
                                             if weight.dim() >= 2):
            changed.add(name)
    return changed


def _converted(old: torch.Tensor, new: Any) -> bool:
    import torch

    if not isinstance(new, torch.Tensor) or type(new) not in (torch.Tensor, torch.nn.Parameter):
        return True
    if new.dtype != old.dtype or new.shape != old.shape or new.device != old.device:
        return True
    return not torch.equal(new.detach(), old.detach())


def flop_shares(model: torch.nn.Module, inputs: ModelInputs,
                census: Mapping[str, tuple[type, int]]) -> dict[str, float] | None:
    """Each weight module's share of one call's FLOPs, counted by FlopCounterMode on the float
    model; None when that cannot be trusted: the call fails under the counter, or a module
    that multiplies by its weights shows no arithmetic of its own (an LSTM on CPU runs in one
    fused op the counter does not see; MultiheadAttention computes its out_proj without calling it)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            call(model, inputs)
    except Exception:   # a model the counter cannot follow: no FLOPs share, the params share stands
        return None
    total = counter.get_total_flops()
    if not total:
        return None
    counts = {module: sum(ops.values()) for module, ops in counter.get_flop_counts().items()}
    root = type(model).__name__

    def key(name: str) -> str:
        return f"{root}.{name}" if name else root

    def children(name: str) -> list[str]:
        return [f"{name}.{child}" if name else child for child, _ in model.get_submodule(name).named_children()]

    def subtree(name: str) -> int:   # a container never called itself (ModuleList) sums its children
        return counts[key(name)] if key(name) in counts else sum(subtree(child) for child in children(name))

    shares = {}
    for name, (kind, _) in census.items():
        own = counts.get(key(name), 0) - sum(subtree(child) for child in children(name))
        if own <= 0 and issubclass(kind, _multiplies()):
            return None
        shares[name] = max(own, 0) / total
    return shares


@dataclass(frozen=True)
class Coverage:
    params: float                     # share of the weight elements converted
    flops: float | None               # share of one call's FLOPs in converted modules (None: not countable)
    left: dict[type, float]           # module type -> its share of all weights, left in float
    modules: int                      # weight modules converted

    @classmethod
    def of(cls, census: Mapping[str, tuple[type, int]], converted: Collection[str],
           flops: Mapping[str, float] | None = None) -> "Coverage":
        total = sum(count for _, count in census.values())
        done = [name for name in census if name in converted]
        left: dict[type, float] = {}
        for name, (kind, count) in census.items():
            if name not in converted:
                left[kind] = left.get(kind, 0.0) + count / total
        return cls(sum(census[name][1] for name in done) / total if total else 0.0,
                   sum(flops[name] for name in done) if flops is not None else None,
                   dict(sorted(left.items(), key=lambda item: -item[1])), len(done))

    def metrics(self) -> dict[str, float]:
        found = {"quantize.coverage.params": self.params, "quantize.coverage.modules": float(self.modules)}
        if self.flops is not None:
            found["quantize.coverage.flops"] = self.flops
        found.update({f"quantize.skipped.{kind.__name__}": share for kind, share in self.left.items()})
        return found

    def tags(self) -> dict[str, str]:
        """quantize.skipped=LSTM:0.990,Linear:0.004 (what stayed float, as shares of all weights)."""
        if not self.left:
            return {}
        return {"quantize.skipped": ",".join(f"{kind.__name__}:{share:.3f}" for kind, share in self.left.items())}

    def left_in_float(self, recipe: Recipe, selection: Selection) -> str:
        """'LSTM 99.0% (quantize=legacy_dynamic converts LSTM), ...'"""
        return ", ".join(f"{kind.__name__} {share:.1%} ({_remedy(kind, recipe, selection)})"
                         for kind, share in self.left.items())


def _remedy(kind: type, recipe: Recipe, selection: Selection) -> str:
    if not recipe.whole_model and recipe.can_convert(kind):
        if not issubclass(kind, selection.types):
            return f"add {kind.__name__} to quantize.modules"
        if selection.include or selection.skip:
            return "kept float by quantize.include/skip"
        return f"quantize={recipe.name} did not convert it; " + handled_by(kind, besides=recipe.name)
    return handled_by(kind, besides=recipe.name)


def what_it_converts(recipe: Recipe, selection: Selection) -> str:
    if recipe.whole_model:
        return f"the whole model ({recipe.summary})"
    return "/".join(t.__name__ for t in selection.types) + " modules"


def mostly_float(coverage: Coverage, recipe: Recipe, selection: Selection, model: str) -> str:
    """The warning when most weights stay float: one line, naming what stayed and who converts it."""
    return (f"quantize={recipe.name} converted {coverage.params:.1%} of {model}'s weights; left in float: "
            f"{coverage.left_in_float(recipe, selection)}")


def nothing_converted(coverage: Coverage, recipe: Recipe, selection: Selection, model: str,
                      present: bool) -> InputError:
    """The error when a recipe converts none of the weights: nothing to measure."""
    found = "none was converted here" if present else "the model has none"
    return InputError(f"quantize={recipe.name} converts none of {model}'s weights: it converts "
                      f"{what_it_converts(recipe, selection)}, and {found}; its weights are "
                      f"{coverage.left_in_float(recipe, selection)}. Pick a recipe named there, or quantize=none")
