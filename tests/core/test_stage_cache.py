"""The stage cache without ptflow runs: entries, corruption, forged entries caught by the hit
check, unusable dirs, dead writers' temp dirs, parallel writers, and the engine's use of it on
hand-made stages and on validate. Its keys: tests/test_cache_key.py."""
from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ptflow.core import stage_cache
from ptflow.core.stage_cache import StageCache, run_cached
from tests.cache_stages import Ctx, DiskStage, MemoryStage, Planned


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
    from ptflow.core.artifact import Artifact, Form

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
    from ptflow.core.artifact import Artifact, Form, StageRecord

    upstream = Artifact(model=None, form=Form.EAGER, module=None, inputs=None, batches=(), device="cpu",
                        dtype="float32", lineage=(StageRecord("quantize", {}, 0.1, None, Form.EAGER, None),))
    result, key = run_cached(planned, upstream, Ctx(cache=StageCache(tmp_path)), lambda c: "ran")
    assert (result, key) == ("ran", None)   # after an uncached stage nothing downstream is keyed



# -- never trusted: seals, the hit check, unusable dirs, dead writers ---------------------------

def _validate(tmp_path, warned, model=None):
    """One run's validate stage through the cache, on a tiny classifier and two eval batches."""
    from ptflow.core.artifact import Artifact, Form, StageRecord
    from ptflow.core.spec import Batch, ModelInputs
    from ptflow.core.stage import RunContext
    from stages.validate import ValidateConfig, ValidateStage

    if model is None:
        model = torch.nn.Linear(4, 3)
        with torch.no_grad():
            model.weight.copy_(torch.arange(12.0).reshape(3, 4).sin())
            model.bias.zero_()
    gen = torch.Generator().manual_seed(0)
    batches = tuple(Batch(ModelInputs(args=(torch.randn(8, 4, generator=gen),)),
                          torch.randint(0, 3, (8,), generator=gen)) for _ in range(2))
    loaded = Artifact(model=model, form=Form.EAGER, module=model, inputs=None, batches=batches, device="cpu",
                      dtype="float32", task_metric="top1_accuracy",
                      lineage=(StageRecord("load", {}, 0.1, None, Form.EAGER, "load-key"),))
    ctx = RunContext(tmp_path / "run", "cpu", 0, "hash", {}, lambda items, **_: items,
                     lambda k, m: warned.append((k, m)), StageCache(tmp_path / "cache"))
    stage = ValidateStage(ValidateConfig())
    result, _ = run_cached(Planned("validate", stage, ValidateConfig()), loaded, ctx, lambda c: stage.run(loaded, c))
    return result, ctx.cache.outcomes["validate"]


def _entry(tmp_path):
    (entry,) = (tmp_path / "cache" / "validate").iterdir()
    return entry


def _forge(entry, change_meta=None, change_tensors=None):
    """Edit an entry the way a careful forger would: every sha256 recomputed."""
    import hashlib

    from safetensors.torch import load_file, save_file

    meta = json.loads((entry / "meta.json").read_text())
    if change_tensors is not None:
        tensors = load_file(str(entry / "tensors.safetensors"))
        change_tensors(tensors)
        save_file(tensors, str(entry / "tensors.safetensors"))
        meta["tensors_sha256"] = hashlib.sha256((entry / "tensors.safetensors").read_bytes()).hexdigest()
    if change_meta is not None:
        change_meta(meta)
    meta.pop("sha256")
    (entry / "meta.json").write_text(json.dumps(stage_cache._seal(meta)))


def test_an_edited_meta_json_is_rebuilt_and_no_number_is_read_from_it(tmp_path):
    warned = []
    first, outcome = _validate(tmp_path, warned)
    accuracy = first.metrics["validate.top1_accuracy"]
    assert outcome == "miss" and first.metrics["validate.output_leaves"] == 1.0
    meta_file = _entry(tmp_path) / "meta.json"
    meta = json.loads(meta_file.read_text())
    meta["metrics"] = {"validate.top1_accuracy": accuracy + 0.4}   # one edited number, hash left alone
    meta_file.write_text(json.dumps(meta))
    again, outcome = _validate(tmp_path, warned)
    assert outcome == "rebuilt" and again.metrics["validate.top1_accuracy"] == accuracy
    (key, message), = warned
    assert key == "cache.validate" and "meta.json does not match its own sha256" in message
    # a forger who reseals meta.json: a hit, but the metric is computed from the cached outputs
    _forge(_entry(tmp_path), change_meta=lambda m: m.update(metric=0.99, metrics={"validate.top1_accuracy": 0.99}))
    hit, outcome = _validate(tmp_path, warned)
    assert outcome == "hit" and hit.metrics["validate.top1_accuracy"] == accuracy
    assert hit.metrics["validate.output_leaves"] == 1.0 and hit.baseline.metric == accuracy


def test_a_resealed_entry_with_other_outputs_is_caught_by_the_hit_check(tmp_path):
    warned = []
    first, _ = _validate(tmp_path, warned)

    def shifted(tensors):   # batch 1 (with two batches, always the second one checked)
        tensors["out.1.0"] += 1.0
        tensors["task.1"] += 1.0

    _forge(_entry(tmp_path), change_tensors=shifted)
    again, outcome = _validate(tmp_path, warned)
    assert outcome == "rebuilt"
    (key, message), = warned
    assert key == "cache.validate" and str(tmp_path / "cache" / "validate") in message
    assert "eval batch 1: output differs from the entry by up to 1" in message
    assert torch.equal(again.baseline.outputs[1][0][1], first.baseline.outputs[1][0][1])
    # last-bit noise (another thread count) is within the tolerance: still a hit
    _forge(_entry(tmp_path), change_tensors=lambda t: t["out.0.0"].mul_(1 + 1e-6))
    assert _validate(tmp_path, warned)[1] == "hit"
    # the same key with other weights (a stale key): caught on batch 0
    other = torch.nn.Linear(4, 3)
    assert _validate(tmp_path, warned, model=other)[1] == "rebuilt"
    assert "eval batch 0: output differs" in warned[-1][1]


def _deny(monkeypatch, root, *methods):
    """Make `root` refuse what `methods` do (chmod alone does not stop root, which tests may run as)."""
    for owner, name in methods:
        real = getattr(owner, name)

        def refusing(path, *args, _real=real, **kwargs):
            if str(path).startswith(str(root)):
                raise PermissionError(13, "Permission denied", str(path))
            return _real(path, *args, **kwargs)

        monkeypatch.setattr(owner, name, refusing)


def test_a_cache_dir_that_cannot_be_written_costs_one_warning_not_the_run(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    root.mkdir()
    root.chmod(0o555)
    try:
        if os.access(root, os.W_OK):   # root ignores the mode: refuse the writes by hand
            _deny(monkeypatch, root, (os, "mkdir"))
        warned = []
        ctx = Ctx(cache=StageCache(root), warn=lambda k, m: warned.append((k, m)))
        for name in ("s", "t"):
            result, key = run_cached(Planned(name, DiskStage(), {}), None, ctx,
                                     lambda c: {"x": torch.ones(1), "note": "n"})
            assert key is not None and result["note"] == "n"
        (key, message), = warned
        assert key == "cache" and str(root) in message and "cache=off" in message
        assert "PermissionError" in message and ctx.cache.outcomes == {"s": "miss", "t": "miss"}
    finally:
        root.chmod(0o755)


def test_a_cache_entry_that_cannot_be_read_is_a_miss_with_a_warning(tmp_path, monkeypatch):
    import pathlib

    planned, make = Planned("s", DiskStage(), {}), lambda c: {"x": torch.ones(1), "note": "n"}
    run_cached(planned, None, Ctx(cache=StageCache(tmp_path)), make)
    _deny(monkeypatch, tmp_path, (pathlib.Path, "read_bytes"))
    warned = []
    ctx = Ctx(cache=StageCache(tmp_path), warn=lambda k, m: warned.append((k, m)))
    result, _ = run_cached(planned, None, ctx, make)
    assert result["note"] == "n" and ctx.cache.outcomes == {"s": "miss"}
    (key, message), = warned
    assert key == "cache" and "cache=off" in message
    assert (tmp_path / "s").is_dir() and len(list((tmp_path / "s").iterdir())) == 1   # left as it was


def test_an_entry_path_taken_by_a_file_is_rebuilt(tmp_path):
    planned, make = Planned("s", DiskStage(), {}), lambda c: {"x": torch.ones(1), "note": "n"}
    _, key = run_cached(planned, None, Ctx(cache=StageCache(tmp_path)), make)
    entry = tmp_path / "s" / key
    shutil.rmtree(entry)
    entry.write_text("not an entry")
    warned = []
    ctx = Ctx(cache=StageCache(tmp_path), warn=lambda k, m: warned.append((k, m)))
    run_cached(planned, None, ctx, make)
    assert ctx.cache.outcomes == {"s": "rebuilt"} and entry.is_dir()
    (key, message), = warned
    assert key == "cache.s" and "a file, not an entry dir" in message
    assert run_cached(planned, None, Ctx(cache=StageCache(tmp_path)), make)[0]["restored"]


def test_the_temp_dirs_of_dead_writers_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stage = tmp_path / "s"
    old, host = 1_000_000_000, stage_cache.HOST
    names = {"dead_old": f".0123456789abcdef-{dead.pid}-{host}-abcd1234",
             "dead_new": f".0123456789abcdef-{dead.pid}-{host}-efgh5678",
             "alive_old": f".0123456789abcdef-{os.getpid()}-{host}-ijkl9012",
             "unknown_old": ".0123456789abcdef-mnop3456",   # a ptflow from before pids were in the name
             "entry": "fedcba9876543210"}
    for label, name in names.items():
        (stage / name).mkdir(parents=True)
        if label.endswith("old"):
            os.utime(stage / name, (old, old))
    StageCache(tmp_path).read("s", "0123456789abcdef")
    left = {label for label, name in names.items() if (stage / name).exists()}
    assert left == {"dead_new", "alive_old", "entry"}
