"""Users' data: random inputs, tensor files, Datasets and DataLoaders."""
from __future__ import annotations

import numpy
import pytest
import torch

from ptflow.core.errors import InputError
from ptflow.core.targets import check_target
from ptflow.inputs.data import as_split
from ptflow.inputs.datasources import random_inputs, tensor_file
from tests.user_inputs import PIXELS, _config, _problems, _run


# --- data: random inputs, tensor files, Datasets, DataLoaders -------------------------------

def test_random_data_with_a_task_metric_is_refused_before_the_run():
    config, choices = _config(data={"metric": "top1_accuracy"})
    (problem,) = _problems(config, choices)
    assert problem.key == "data.metric" and "random data has no targets" in problem.hint
    assert "set data.metric=null" in problem.hint


def test_random_input_specs_are_checked_before_the_run():
    spec = {**PIXELS, "inputs": {"ids": {"shape": [4], "dtype": "int64"}, "x": {"shape": [4], "dtype": "flaot32"}}}
    rendered = [p.render() for p in check_target(spec, "data.source")]
    assert any(r.startswith("data.source.inputs.ids.high") for r in rendered)
    assert any("data.source.inputs.x.dtype" in r and "did you mean 'float32'" in r for r in rendered)


def test_random_inputs_are_reproducible_and_positional_from_a_list():
    a = random_inputs([{"shape": [2, 3]}, {"shape": [5], "dtype": "int64", "high": 9}], rows=4, seed=1)
    b = random_inputs([{"shape": [2, 3]}, {"shape": [5], "dtype": "int64", "high": 9}], rows=4, seed=1)
    assert isinstance(a.inputs, tuple) and a.targets is None
    assert a.inputs[0].shape == (4, 2, 3) and a.inputs[1].dtype == torch.int64 and int(a.inputs[1].max()) < 9
    assert all(torch.equal(x, y) for x, y in zip(a.inputs, b.inputs))


def test_tensor_files_give_inputs_and_targets(tmp_path):
    x, y = numpy.random.default_rng(0).random((10, 8)), numpy.arange(10) % 3
    numpy.savez(tmp_path / "data.npz", x=x, y=y)
    split = tensor_file(str(tmp_path / "data.npz"), inputs={"pixels": "x"}, targets="y")
    assert split.inputs["pixels"].dtype == torch.float32 and torch.equal(split.targets, torch.arange(10) % 3)
    torch.save({"a": torch.ones(3, 2), "b": torch.zeros(3, 1), "y": torch.arange(3)}, tmp_path / "data.pt")
    split = tensor_file(str(tmp_path / "data.pt"), inputs=["a", "b"])
    assert isinstance(split.inputs, tuple) and split.targets is None


def test_a_missing_key_of_a_tensor_file_lists_the_keys(tmp_path):
    numpy.savez(tmp_path / "data.npz", x=numpy.zeros((4, 8)), label=numpy.zeros(4))
    node = {"_target_": "ptflow.inputs.datasources.tensor_file", "path": str(tmp_path / "data.npz"),
            "inputs": "x", "targets": "labels"}
    (problem,) = check_target(node, "data.source")
    assert problem.key == "data.source.targets" and "x, label" in problem.expected
    assert "did you mean 'label'?" in problem.hint
    with pytest.raises(InputError, match=r"'labels' is not a key of .*data.npz; its keys: x, label"):
        tensor_file(str(tmp_path / "data.npz"), inputs="x", targets="labels")


def test_a_tensor_file_run_reaches_the_metric(tmp_path):
    torch.manual_seed(0)
    torch.save({"x": torch.randn(32, 8), "y": torch.randint(0, 3, (32,))}, tmp_path / "rows.pt")
    config, choices = _config("pipeline=[load,validate]", model={"builder": {"_target_": "tests.user_inputs.Tiny"},
                                                               "weights": None},
                              data={"metric": "top1_accuracy", "source": {
                                  "_target_": "ptflow.inputs.datasources.tensor_file", "path": str(tmp_path / "rows.pt"),
                                  "inputs": {"pixels": "x"}, "targets": "y"}})
    artifact, _ = _run(tmp_path, config, choices)
    assert 0.0 <= artifact.metrics["validate.top1_accuracy"] <= 1.0


class Pairs(torch.utils.data.Dataset):
    def __init__(self, rows=10, item=None):
        self.rows, self.item = rows, item

    def __len__(self):
        return self.rows

    def __getitem__(self, index):
        if self.item is not None:
            return self.item(index)
        return torch.full((8,), float(index)), index % 3


def test_a_dataset_is_stacked_and_a_dataloader_joined():
    split = as_split(Pairs())
    assert split.inputs.shape == (10, 8) and split.targets.tolist() == [i % 3 for i in range(10)]
    joined = as_split(torch.utils.data.DataLoader(Pairs(), batch_size=4), limit=6)
    assert joined.inputs.shape == (6, 8) and torch.equal(joined.inputs, split.inputs[:6])
    named = as_split(Pairs(item=lambda i: {"input_ids": torch.arange(5), "labels": 1}))
    assert set(named.inputs) == {"input_ids"} and named.targets.shape == (10,)


@pytest.mark.parametrize("item, says", [
    (lambda i: (torch.zeros(8), "cat"), "the target is a str ('cat')"),
    (lambda i: (torch.zeros(8 + i % 2), 0), "item 1: the input has shape (9,) but item 0's has (8,)"),
    (lambda i: (torch.zeros(8), 0, 1), "item 0 has 3 parts"),
], ids=["string-label", "ragged", "triple"])
def test_items_that_cannot_be_collated_are_named(item, says):
    with pytest.raises(InputError) as caught:
        as_split(Pairs(item=item), key="data.source")
    assert str(caught.value).startswith("data.source") and says in str(caught.value)
