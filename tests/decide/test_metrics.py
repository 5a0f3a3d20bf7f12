"""The built-in task metrics: their values, their directions, and the checks that refuse data
they cannot score (with a message naming data.metric and the metric that would fit)."""
from __future__ import annotations

import math

import pytest
import torch

from ptflow.core.errors import InputError
from ptflow.decide import fidelity


def test_each_builtin_metric_knows_its_direction():
    directions = {name: fidelity.metric(name).higher_is_better
                  for name in ("top1_accuracy", "mse", "mae", "cosine_similarity")}
    assert directions == {"top1_accuracy": True, "mse": False, "mae": False, "cosine_similarity": True}


def test_mse_and_mae_average_every_element_so_a_bigger_batch_weighs_more():
    outputs = [torch.tensor([[3.0]]), torch.tensor([[1.0], [1.0], [-1.0]])]
    targets = [torch.tensor([0.0]), torch.tensor([0.0, 0.0, 0.0])]
    # errors 3, 1, 1, -1 over 4 elements; the mean of the per-batch means would be (9 + 1) / 2 = 5
    assert fidelity.mse(outputs, targets) == pytest.approx((9 + 1 + 1 + 1) / 4)
    assert fidelity.mae(outputs, targets) == pytest.approx((3 + 1 + 1 + 1) / 4)


def test_mse_over_several_values_per_example_matches_torch():
    generator = torch.Generator().manual_seed(0)
    output, target = torch.randn(5, 3, generator=generator), torch.randn(5, 3, generator=generator)
    assert fidelity.mse([output[:2], output[2:]], [target[:2], target[2:]]) == \
        pytest.approx(float(torch.nn.functional.mse_loss(output.double(), target.double())))
    assert fidelity.mae([output], [target]) == pytest.approx(float((output - target).abs().mean()))


def test_a_trailing_dimension_of_one_is_ignored_on_either_side():
    column, flat = torch.tensor([[1.0], [2.0]]), torch.tensor([1.5, 2.0])
    for output, target in ((column, flat), (flat, column)):
        assert fidelity.metric("mse").check(output, target) == []
        assert fidelity.mse([output], [target]) == pytest.approx(0.25 / 2)


def test_cosine_similarity_is_the_mean_over_examples_of_each_rows_cosine():
    output = torch.tensor([[100.0, 0.0], [0.0, 0.01]])
    target = torch.tensor([[100.0, 0.0], [0.0, -0.01]])
    # row cosines 1 and -1: mean 0 (over all elements at once the big row would win: ~1)
    assert fidelity.cosine_similarity([output], [target]) == pytest.approx(0.0)
    assert fidelity.cosine_similarity([output], [output * 3]) == pytest.approx(1.0)
    assert fidelity.cosine_similarity([torch.tensor([[1.0, 0.0]])], [torch.tensor([[0.0, 2.0]])]) == pytest.approx(0.0)


def test_cosine_similarity_of_zero_rows():
    zero, some = torch.zeros(1, 3), torch.ones(1, 3)
    assert fidelity.cosine_similarity([zero], [zero]) == 1.0
    assert fidelity.cosine_similarity([zero], [some]) == 0.0
    assert fidelity.cosine_similarity([some, zero], [some, some]) == pytest.approx(0.5)   # per example, both batches


def test_no_examples_is_nan_not_zero():
    for name in ("mse", "mae", "cosine_similarity"):
        assert math.isnan(fidelity.metric(name).fn([], []))


# (case, metric, task output, targets, substrings the problem must contain)
REFUSED = [
    ("class ids to mse", "mse", torch.randn(4, 1), torch.tensor([0, 1, 1, 0]),
     ["targets are int64", "data.metric=top1_accuracy"]),
    ("bool targets", "mae", torch.randn(4, 1), torch.tensor([True, False, True, True]), ["targets are bool"]),
    ("other shape", "mse", torch.randn(4, 2), torch.randn(4, 3), ["shape (4, 3)", "task output's shape (4, 2)"]),
    ("other batch", "mse", torch.randn(4, 1), torch.randn(5), ["shape (5,)", "(4, 1)"]),
    ("NaN targets", "mse", torch.randn(3, 1), torch.tensor([0.5, float("nan"), float("inf")]),
     ["2 non-finite value(s)", "finite"]),
    ("a list", "mse", torch.randn(2, 1), [0.5, 1.0], ["targets are a list", "float tensor"]),
    ("integer output", "mse", torch.tensor([[1], [2]]), torch.tensor([1.0, 2.0]), ["task output is int64"]),
    ("scalar output", "mae", torch.tensor(1.0), torch.tensor(1.0), ["shape ()", "one row per example"]),
    ("one value for cosine", "cosine_similarity", torch.randn(4, 1), torch.randn(4),
     ["shape (4, 1)", "features >= 2", "data.metric=mse"]),
]


@pytest.mark.parametrize("case, name, output, target, needles", REFUSED, ids=[c[0] for c in REFUSED])
def test_the_regression_checks_refuse_what_they_cannot_score(case, name, output, target, needles):
    problems = "; ".join(fidelity.metric(name).check(output, target))
    for needle in needles:
        assert needle in problems, problems


def test_float_targets_shaped_like_the_output_pass_every_regression_check():
    output, target = torch.randn(4, 3), torch.randn(4, 3)
    for name in ("mse", "mae", "cosine_similarity"):
        assert fidelity.metric(name).check(output, target) == []


def test_the_error_names_data_metric_and_the_metrics_that_fit():
    with pytest.raises(InputError) as caught:
        fidelity.check_metric_inputs("mse", torch.randn(4, 1), torch.tensor([0, 1, 2, 1]), 3)
    message = str(caught.value)
    for needle in ("data.metric='mse' cannot score eval batch 3", "targets are int64",
                   "data.metric=top1_accuracy for integer class ids", "data.metric=null"):
        assert needle in message, message
    with pytest.raises(InputError) as caught:   # float targets given to top-1: the regression metrics fit
        fidelity.check_metric_inputs("top1_accuracy", torch.randn(4, 3), torch.randn(4), 0)
    assert "data.metric=mse (or mae, cosine_similarity) for float values" in str(caught.value)
