"""Tests for ptflow.core.spec, ptflow.core.artifact and ptflow.inputs.data."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from ptflow.core.artifact import Artifact, Form
from ptflow.core.errors import InputError
from ptflow.core.spec import (
    Batch,
    InputSpec,
    ModelInputs,
    TensorSpec,
    call,
    flatten_outputs,
    select_output,
)
from ptflow.inputs.data import Split, as_split, make_batches


# --- ModelInputs ---------------------------------------------------------------------------

def test_of_tensor_is_one_positional_arg():
    x = torch.zeros(2, 3)
    inputs = ModelInputs.of(x)
    assert len(inputs.args) == 1 and inputs.args[0] is x
    assert dict(inputs.kwargs) == {}


def test_of_tuple_and_list_are_positional():
    a, b = torch.zeros(2), torch.ones(2)
    for value in ((a, b), [a, b]):
        inputs = ModelInputs.of(value)
        assert isinstance(inputs.args, tuple)
        assert inputs.args[0] is a and inputs.args[1] is b
        assert dict(inputs.kwargs) == {}


def test_of_dict_is_kwargs():
    ids, mask = torch.zeros(2, 4, dtype=torch.long), torch.ones(2, 4, dtype=torch.long)
    inputs = ModelInputs.of({"input_ids": ids, "attention_mask": mask})
    assert inputs.args == ()
    assert list(inputs.kwargs) == ["input_ids", "attention_mask"]
    assert inputs.kwargs["input_ids"] is ids


def test_of_model_inputs_returned_as_is():
    inputs = ModelInputs(args=(torch.zeros(1),))
    assert ModelInputs.of(inputs) is inputs


def test_named_uses_given_names_then_argi():
    a, b, c = torch.zeros(1), torch.zeros(2), torch.zeros(3)
    inputs = ModelInputs.of((a, b, c))
    named = inputs.named(["x"])
    assert [n for n, _ in named] == ["x", "arg1", "arg2"]
    assert named[1][1] is b
    assert [n for n, _ in inputs.named()] == ["arg0", "arg1", "arg2"]


def test_named_for_kwargs():
    inputs = ModelInputs.of({"ids": torch.zeros(1)})
    assert [n for n, _ in inputs.named()] == ["ids"]


def test_spec_dynamic_batch_and_dtype():
    inputs = ModelInputs.of((torch.zeros(4, 3, 8), torch.zeros(4, 2, dtype=torch.int64)))
    spec = inputs.spec(["image"], dynamic_batch=True)
    assert spec.keyword is False
    assert spec.tensors == (
        TensorSpec("image", ("batch", 3, 8), "float32"),
        TensorSpec("arg1", ("batch", 2), "int64"),
    )
    assert spec.tensors[0].dynamic_dims() == {0: "batch"}


def test_spec_static_batch_keeps_dims():
    spec = ModelInputs.of(torch.zeros(4, 3, dtype=torch.float16)).spec(dynamic_batch=False)
    assert spec.tensors == (TensorSpec("arg0", (4, 3), "float16"),)
    assert spec.tensors[0].dynamic_dims() == {}


def test_spec_keyword_for_dict_inputs():
    spec = ModelInputs.of({"input_ids": torch.zeros(2, 5, dtype=torch.long)}).spec()
    assert spec.keyword is True
    assert spec.tensors == (TensorSpec("input_ids", ("batch", 5), "int64"),)


def test_input_spec_describe():
    spec = ModelInputs.of({"ids": torch.zeros(2, 5, dtype=torch.long)}).spec()
    assert spec.describe() == [
        {"name": "ids", "shape": ["batch", 5], "dtype": "int64", "passed_as": "keyword"},
    ]
    positional = InputSpec((TensorSpec("x", ("batch", 3), "float32"),))
    assert positional.describe() == [
        {"name": "x", "shape": ["batch", 3], "dtype": "float32", "passed_as": "positional"},
    ]
    assert str(positional) == "x[batch, 3]:float32"


def test_model_inputs_map_and_batch_size():
    inputs = ModelInputs.of({"a": torch.zeros(6, 2)})
    halved = inputs.map(lambda t: t[:3])
    assert halved.batch_size() == 3
    assert inputs.batch_size() == 6
    assert ModelInputs.of(torch.zeros(5, 1)).batch_size() == 5


# --- outputs ---------------------------------------------------------------------------------

@dataclass
class FakeOutput:
    logits: torch.Tensor
    hidden: torch.Tensor | None = None


def paths(value):
    return [p for p, _ in flatten_outputs(value)]


def test_flatten_tensor():
    t = torch.zeros(2)
    leaves = flatten_outputs(t)
    assert len(leaves) == 1
    assert leaves[0][0] == "output" and leaves[0][1] is t


def test_flatten_tuple():
    a, b = torch.zeros(1), torch.ones(1)
    leaves = flatten_outputs((a, b))
    assert [p for p, _ in leaves] == ["output.0", "output.1"]
    assert leaves[1][1] is b


def test_flatten_dict():
    assert paths({"logits": torch.zeros(1), "loss": torch.zeros(())}) == ["output.logits", "output.loss"]


def test_flatten_nested_dict_in_tuple():
    value = (torch.zeros(1), {"hidden": torch.zeros(2), "attn": (torch.zeros(3), torch.zeros(4))})
    assert paths(value) == ["output.0", "output.1.hidden", "output.1.attn.0", "output.1.attn.1"]


def test_flatten_dataclass():
    out = FakeOutput(logits=torch.zeros(2), hidden=torch.ones(2))
    assert paths(out) == ["output.logits", "output.hidden"]


def test_flatten_skips_none_and_non_tensors():
    out = FakeOutput(logits=torch.zeros(2), hidden=None)
    assert paths(out) == ["output.logits"]
    assert paths((None, torch.zeros(1), "text", 3)) == ["output.1"]
    assert flatten_outputs(None) == []


def test_select_output_none_is_first_leaf():
    first = torch.zeros(1)
    assert select_output((first, torch.ones(1)), None) is first
    out = FakeOutput(logits=torch.zeros(2), hidden=torch.ones(2))
    assert select_output(out, None) is out.logits


def test_select_output_by_key():
    d = {"loss": torch.zeros(()), "logits": torch.ones(3)}
    assert select_output(d, "logits") is d["logits"]


def test_select_output_by_index_string_and_int():
    a, b = torch.zeros(1), torch.ones(1)
    assert select_output((a, b), "1") is b
    assert select_output((a, b), 1) is b


def test_select_output_nested_key():
    h = torch.ones(2)
    assert select_output((torch.zeros(1), {"hidden": h}), "1.hidden") is h


def test_select_output_wrong_key_lists_available():
    d = {"loss": torch.zeros(()), "logits": torch.ones(3)}
    with pytest.raises(KeyError) as excinfo:
        select_output(d, "logitz")
    message = excinfo.value.args[0]
    assert "logitz" in message
    assert "loss" in message and "logits" in message


def test_select_output_no_tensors():
    with pytest.raises(ValueError):
        select_output({"a": None}, None)


def test_call_with_args_and_kwargs():
    seen = {}

    def model(*args, **kwargs):
        seen["args"], seen["kwargs"] = args, kwargs
        return "result"

    x = torch.zeros(1)
    m = torch.ones(1)
    assert call(model, ModelInputs(args=(x,), kwargs={"mask": m})) == "result"
    assert seen["args"] == (x,)
    assert seen["kwargs"] == {"mask": m}


def test_call_real_module():
    lin = torch.nn.Linear(3, 2)
    x = torch.randn(4, 3)
    assert torch.equal(call(lin, ModelInputs.of(x)), lin(x))


# --- Artifact --------------------------------------------------------------------------------

def make_artifact() -> Artifact:
    x = torch.zeros(2, 3)
    inputs = ModelInputs.of(x)
    return Artifact(model=object(), form=Form.EAGER, module=object(), inputs=inputs.spec(),
                    batches=(Batch(inputs, None),), device="cpu", dtype="float32",
                    metrics={"a": 1.0}, files={"f": Path("one.txt")})


def test_artifact_is_frozen():
    art = make_artifact()
    with pytest.raises(dataclasses.FrozenInstanceError):
        art.device = "cuda"  # type: ignore[misc]


def test_artifact_evolve_returns_new_object():
    art = make_artifact()
    new = art.evolve(form=Form.COMPILED, device="meta")
    assert new is not art
    assert new.form is Form.COMPILED and new.device == "meta"
    assert art.form is Form.EAGER and art.device == "cpu"
    assert new.model is art.model
    assert new.example is art.example is art.batches[0]


def test_artifact_with_metrics_merges_and_leaves_original():
    art = make_artifact()
    new = art.with_metrics({"b": 2.0, "a": 3.0})
    assert dict(new.metrics) == {"a": 3.0, "b": 2.0}
    assert dict(art.metrics) == {"a": 1.0}


def test_artifact_with_files_merges_and_leaves_original():
    art = make_artifact()
    new = art.with_files({"g": Path("two.txt")})
    assert dict(new.files) == {"f": Path("one.txt"), "g": Path("two.txt")}
    assert dict(art.files) == {"f": Path("one.txt")}


def test_form_str_is_value():
    assert str(Form.EXPORTED) == "exported"


# --- data ------------------------------------------------------------------------------------

def test_make_batches_sizes_and_targets():
    x = torch.arange(7 * 2, dtype=torch.float32).reshape(7, 2)
    y = torch.arange(7)
    batches = make_batches(Split(x, y), batch_size=3)
    assert [b.inputs.args[0].shape[0] for b in batches] == [3, 3, 1]
    assert [b.target.tolist() for b in batches] == [[0, 1, 2], [3, 4, 5], [6]]
    for b in batches:
        # each row of inputs belongs with its own target
        assert torch.equal(b.inputs.args[0][:, 0], b.target.float() * 2)
    assert torch.equal(torch.cat([b.inputs.args[0] for b in batches]), x)


def test_make_batches_without_targets():
    batches = make_batches(Split(torch.zeros(5, 1)), batch_size=2)
    assert [b.inputs.batch_size() for b in batches] == [2, 2, 1]
    assert all(b.target is None for b in batches)


def test_make_batches_max_batches():
    batches = make_batches(Split(torch.zeros(7, 2), torch.zeros(7)), batch_size=3, max_batches=2)
    assert len(batches) == 2
    assert [b.inputs.batch_size() for b in batches] == [3, 3]
    assert len(make_batches(Split(torch.zeros(7, 2)), batch_size=3, max_batches=10)) == 3


def test_make_batches_tuple_inputs():
    a, b = torch.arange(7), torch.arange(7) * 10
    batches = make_batches(Split((a, b)), batch_size=3)
    assert [bt.inputs.args[1].tolist() for bt in batches] == [[0, 10, 20], [30, 40, 50], [60]]


def test_make_batches_dict_inputs():
    ids = torch.arange(7).unsqueeze(1).repeat(1, 4)
    mask = torch.ones(7, 4, dtype=torch.long)
    batches = make_batches(Split({"input_ids": ids, "attention_mask": mask}, torch.arange(7)), 3)
    assert len(batches) == 3
    for batch in batches:
        assert batch.inputs.args == ()
        assert set(batch.inputs.kwargs) == {"input_ids", "attention_mask"}
        assert torch.equal(batch.inputs.kwargs["input_ids"][:, 0], batch.target)
    assert batches[2].inputs.kwargs["attention_mask"].shape == (1, 4)


def test_make_batches_length_mismatch():
    with pytest.raises(InputError):
        make_batches(Split(torch.zeros(7, 2), torch.zeros(6)), batch_size=3)
    with pytest.raises(InputError):
        make_batches(Split((torch.zeros(7), torch.zeros(5))), batch_size=3)


def test_make_batches_empty_split():
    with pytest.raises(InputError):
        make_batches(Split(torch.zeros(0, 3), torch.zeros(0)), batch_size=3)
    with pytest.raises(InputError):
        make_batches(Split(()), batch_size=3)


def test_as_split_accepts_pair_and_split():
    x, y = torch.zeros(3, 1), torch.zeros(3)
    split = as_split((x, y))
    assert isinstance(split, Split)
    assert split.inputs is x and split.targets is y
    existing = Split(x, y)
    assert as_split(existing) is existing


@pytest.mark.parametrize("value", [
    [torch.zeros(1), torch.zeros(1)],
    (torch.zeros(1),),
    (torch.zeros(1), torch.zeros(1), torch.zeros(1)),
    {"inputs": torch.zeros(1)},
    torch.zeros(3),
    None,
])
def test_as_split_rejects_other_types(value):
    with pytest.raises(InputError):
        as_split(value)


def test_dynamic_dims_beyond_the_batch_share_labels_across_inputs():
    import torch

    inputs = ModelInputs.of({"input_ids": torch.zeros(2, 7, dtype=torch.int64), "mask": torch.ones(2, 7)})
    spec = inputs.spec(dynamic_dims={"input_ids": {1: "seq"}, "mask": {1: "seq"}})
    assert [t.shape for t in spec.tensors] == [("batch", "seq"), ("batch", "seq")]
    with pytest.raises(ValueError, match=r"data.dynamic_dims.mask: dim 0 is not a non-batch dim"):
        inputs.spec(dynamic_dims={"mask": {0: "rows"}})
    with pytest.raises(ValueError, match=r"names \['ids'\], which are not model inputs"):
        inputs.spec(dynamic_dims={"ids": {1: "seq"}})
