"""legacy_dynamic: the seed's eager dynamic quantization through the deprecated
``torch.ao.quantization.quantize_dynamic``. Kept as a named legacy recipe for comparison
and for consumers of TorchScript; its packed-params model cannot go through torch.export
(Form.PACKED: the plan refuses .pt2/AOTI/ONNX exports of it)."""
from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

from ptflow.core.artifact import Form
from ptflow.stages.quantize.registry import Quantized, QuantizeJob, quantize_recipe

if TYPE_CHECKING:   # imported where used: importing this module must not import torch (fast plan checks)
    import torch


@quantize_recipe("legacy_dynamic", summary="LEGACY torch.ao.quantization.quantize_dynamic, qint8 Linear/LSTM/GRU",
                 form=Form.PACKED, modules=("Linear", "LSTM", "GRU"),
                 converts=("Linear", "LSTM", "GRU", "LSTMCell", "GRUCell", "RNNCell"))
def legacy_dynamic(job: QuantizeJob) -> Quantized:
    import torch

    chosen = job.selection.names(job.module)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

        # {fqn: qconfig} picks exactly the selected modules (types, include and skip applied)
        model = quantize_dynamic(job.module, {name: default_dynamic_qconfig for name in chosen},
                                 dtype=torch.qint8, inplace=False)
    deprecations = sorted({str(w.message).splitlines()[0] for w in caught
                           if issubclass(w.category, (DeprecationWarning, FutureWarning))})
    message = "quantize=legacy_dynamic uses torch.ao.quantization, which is deprecated"
    if deprecations:
        message += f" (torch says: {deprecations[0][:300]})"
    job.ctx.warn("quantize.legacy", message + "; prefer quantize=int8_dynamic (torchao)")
    return Quantized(model, model, chosen)
