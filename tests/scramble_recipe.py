"""A test plugin recipe that wrecks the model on purpose (zeroes the classifier head's
weights): what the accuracy gate exists to catch. Registered through `plugins`."""
from __future__ import annotations

import torch

from ptflow.stages.quantize.registry import Quantized, QuantizeJob, quantize_recipe


@quantize_recipe("scramble", summary="test only: zero the last Linear layer")
def scramble(job: QuantizeJob) -> Quantized:
    last = job.selection.names(job.module)[-1]
    with torch.no_grad():
        job.module.get_submodule(last).weight.zero_()
    return Quantized(job.module, job.module, [last])
