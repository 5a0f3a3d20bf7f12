"""The stage cache without ptflow runs: keys, entries, corruption, parallel writers, and the
engine's use of it on hand-made stages."""
from __future__ import annotations

import dataclasses
import multiprocessing
from pathlib import Path

import pytest
import torch

from ptflow import stage_cache
from ptflow.stage_cache import StageCache, run_cached


class DiskStage:
    cache = "disk"

    def cache_save(self, artifact):
        return {"x": artifact["x"]}, {"note": artifact["note"]}

    def cache_restore(self, artifact, tensors, meta):
        return {"x": tensors["x"], "note": meta["note"], "restored": True}


class MemoryStage:
    cache = "memory"


@dataclasses.dataclass(frozen=True)
class Planned:
    name: str
    stage: object
    config: dict


@dataclasses.dataclass(frozen=True)
class Ctx:
    seed: int = 0
    device: str = "cpu"
    settings: dict = dataclasses.field(default_factory=dict)
    cache: StageCache | None = None
    warn: object = None


def _key(cache, config, upstream=None, seed=0, device="cpu", cls=DiskStage):
    return cache.key(upstream, "s", cls, config, seed, device)


def test_the_key_follows_config_upstream_seed_device_and_file_contents(tmp_path):
    cache = StageCache(tmp_path)
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"one")
    base = _key(cache, {"weights": str(weights)})
    assert base == _key(cache, {"weights": str(weights)})
    assert base != _key(cache, {"weights": str(weights), "strict": False})
    assert base != _key(cache, {"weights": str(weights)}, upstream="abc")
    assert base != _key(cache, {"weights": str(weights)}, seed=1)
    assert base != _key(cache, {"weights": str(weights)}, device="cuda:0")
    weights.write_bytes(b"two")   # same path, new contents: a new key
    assert base != _key(cache, {"weights": str(weights)})


def test_the_key_follows_the_code_of_a_builder_the_config_names(tmp_path, monkeypatch):
    module = tmp_path / "my_builder_mod.py"
    module.write_text("def build():\n    return 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cache = StageCache(tmp_path / "c")
    config = {"builder": {"_target_": "my_builder_mod.build"}}
    before = _key(cache, config)
    module.write_text("def build():\n    return 2\n")   # the user edits the model's code
    assert before != _key(cache, config)


def test_the_key_follows_a_model_directory_and_a_class_method_builder(tmp_path, monkeypatch):
    folder = tmp_path / "hf_model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (tmp_path / "my_hf_mod.py").write_text("class Model:\n    @classmethod\n    def load(cls):\n        return 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cache = StageCache(tmp_path / "c")
    config = {"builder": {"_target_": "my_hf_mod.Model.load", "path": str(folder)}}
    before = _key(cache, config)
    (folder / "model.safetensors").write_bytes(b"weights")   # a file added to the model dir
    after_dir = _key(cache, config)
    assert before != after_dir
    (tmp_path / "my_hf_mod.py").write_text("class Model:\n    @classmethod\n    def load(cls):\n        return 2\n")
    assert after_dir != _key(cache, config)   # the class's module edited


def test_an_entry_round_trips_and_a_corrupt_one_is_moved_aside(tmp_path):
    cache = StageCache(tmp_path)
    cache.write("s", "k1", {"a": torch.arange(4.0)}, {"m": 1})
    tensors, meta = cache.read("s", "k1")
    assert torch.equal(tensors["a"], torch.arange(4.0)) and meta["m"] == 1 and meta["key"] == "k1"
    data = tmp_path / "s" / "k1" / "tensors.safetensors"
    data.write_bytes(data.read_bytes()[:-4] + b"\xff\xff\xff\xff")
    assert cache.read("s", "k1") is None
    assert cache.outcomes["s"] == "rebuilt" and "sha256" in cache.discarded["s"]
    assert not (tmp_path / "s" / "k1").exists()
    assert [p.name for p in (tmp_path / "s").iterdir()] == []   # nothing corrupt left behind


def test_an_entry_under_another_key_is_not_trusted(tmp_path):
    cache = StageCache(tmp_path)
    cache.write("s", "k1", {"a": torch.zeros(2)}, {})
    (tmp_path / "s" / "k1").rename(tmp_path / "s" / "k2")   # copied into the wrong place
    assert cache.read("s", "k2") is None and cache.outcomes["s"] == "rebuilt"


def _writer(root: str, value: float) -> None:
    StageCache(Path(root)).write("s", "same", {"a": torch.full((1000,), value)}, {"value": value})


def test_parallel_writers_of_one_key_leave_one_sound_entry(tmp_path):
    context = multiprocessing.get_context("spawn")
    procs = [context.Process(target=_writer, args=(str(tmp_path), float(n))) for n in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
        assert proc.exitcode == 0
    tensors, meta = StageCache(tmp_path).read("s", "same")
    assert torch.equal(tensors["a"], torch.full((1000,), meta["value"]))   # one writer's whole entry
    assert [p.name for p in (tmp_path / "s").iterdir()] == ["same"]        # no scratch dirs left


def test_run_cached_disk_stage_runs_once_and_replays_its_warnings(tmp_path):
    warned = []
    ctx = Ctx(cache=StageCache(tmp_path), warn=lambda k, m: warned.append((k, m)))
    planned = Planned("s", DiskStage(), {"a": 1})
    calls = []

    def run(c):
        calls.append(1)
        c.warn("s.odd", "something odd")
        return {"x": torch.ones(3), "note": "n"}

    first, key = run_cached(planned, None, ctx, run)
    again_ctx = dataclasses.replace(ctx, cache=StageCache(tmp_path))
    second, key2 = run_cached(planned, None, again_ctx, run)
    assert key == key2 and len(calls) == 1
    assert second["restored"] and torch.equal(second["x"], torch.ones(3))
    assert ctx.cache.outcomes == {"s": "miss"} and again_ctx.cache.outcomes == {"s": "hit"}
    assert warned == [("s.odd", "something odd")] * 2


def test_run_cached_memory_stage_hands_each_job_its_own_module(tmp_path):
    from ptflow.artifact import Artifact, Form

    stage_cache.forget()
    module = torch.nn.Linear(2, 2)
    made = Artifact(model=module, form=Form.EAGER, module=module, inputs=None, batches=(), device="cpu",
                    dtype="float32", settings={"threads": 1})
    planned = Planned("load", MemoryStage(), {"m": 1})
    first, _ = run_cached(planned, None, Ctx(cache=StageCache(tmp_path)), lambda c: made)
    hit_ctx = Ctx(cache=StageCache(tmp_path), settings={"threads": 2})
    second, _ = run_cached(planned, None, hit_ctx, lambda c: pytest.fail("ran again"))
    assert hit_ctx.cache.outcomes == {"load": "hit"}
    assert second.module is not module and second.model is second.module
    assert torch.equal(second.module.weight, module.weight)
    assert second.settings == {"threads": 2}            # this job's device settings, not the first's
    with torch.no_grad():
        second.module.weight.add_(1)                   # a job changing its copy changes nobody else's
    assert not torch.equal(second.module.weight, module.weight)
    stage_cache.forget()


def test_no_cache_or_an_unkeyed_upstream_runs_the_stage(tmp_path):
    planned = Planned("s", DiskStage(), {})
    result, key = run_cached(planned, None, Ctx(cache=None), lambda c: "ran")
    assert (result, key) == ("ran", None)
    from ptflow.artifact import Artifact, Form, StageRecord

    upstream = Artifact(model=None, form=Form.EAGER, module=None, inputs=None, batches=(), device="cpu",
                        dtype="float32", lineage=(StageRecord("quantize", {}, 0.1, None, Form.EAGER, None),))
    result, key = run_cached(planned, upstream, Ctx(cache=StageCache(tmp_path)), lambda c: "ran")
    assert (result, key) == ("ran", None)   # after an uncached stage nothing downstream is keyed

