"""Stage cache keys (ptflow.core.cache_key): they follow file contents (never size or mtime), the
files of a model directory, and the code of the stage, its builders and the project modules
those import, transitively."""
from __future__ import annotations

import os
from pathlib import Path

from ptflow.core.stage_cache import StageCache
from tests.cache_stages import DiskStage


def _key(config, upstream=None, seed=0, device="cpu", cls=DiskStage):
    """The key a new run computes (each run hashes its files afresh)."""
    return StageCache(Path("unused")).key(upstream, "s", cls, config, seed, device)


def _same_size_and_mtime(path, data):
    """Rewrite `path` with `data` (same length) and put its mtime back: only the content differs."""
    before = path.stat()
    assert len(data) == before.st_size
    path.write_bytes(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_the_key_follows_config_upstream_seed_device_and_file_contents(tmp_path):
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"one")
    base = _key({"weights": str(weights)})
    assert base == _key({"weights": str(weights)})
    assert base != _key({"weights": str(weights), "strict": False})
    assert base != _key({"weights": str(weights)}, upstream="abc")
    assert base != _key({"weights": str(weights)}, seed=1)
    assert base != _key({"weights": str(weights)}, device="cuda:0")
    _same_size_and_mtime(weights, b"two")   # same path, size and mtime, new contents: a new key
    assert base != _key({"weights": str(weights)})


def test_one_run_hashes_each_file_once(tmp_path, monkeypatch):
    from ptflow.core import cache_key

    weights = tmp_path / "w.bin"
    weights.write_bytes(b"one")
    hashed = []
    real = cache_key.sha256_file
    monkeypatch.setattr(cache_key, "sha256_file", lambda p: hashed.append(Path(p)) or real(p))
    cache = StageCache(tmp_path / "c")
    for seed in range(3):   # three stages of one run naming the same file
        cache.key(None, "s", DiskStage, {"weights": str(weights)}, seed, "cpu")
    assert hashed.count(weights) == 1


def test_the_key_follows_the_code_of_a_builder_the_config_names(tmp_path, monkeypatch):
    module = tmp_path / "my_builder_mod.py"
    module.write_text("def build():\n    return 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    config = {"builder": {"_target_": "my_builder_mod.build"}}
    before = _key(config)
    module.write_text("def build():\n    return 2\n")   # the user edits the model's code
    assert before != _key(config)


def test_the_key_follows_the_project_modules_a_builder_imports(tmp_path, monkeypatch):
    """mymodels imports layers (and, inside a function, a package's submodule by a relative
    import); editing either is a new key, editing a file nobody imports is not."""
    (tmp_path / "mymodels.py").write_text("import torch\nfrom layers import Block\n\n"
                                          "def build():\n    from parts.heads import head\n    return Block()\n")
    (tmp_path / "layers.py").write_text("X = 1\n")
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "__init__.py").write_text("")
    (tmp_path / "parts" / "heads.py").write_text("from .norms import N\nhead = 1\n")
    (tmp_path / "parts" / "norms.py").write_text("N = 1\n")
    (tmp_path / "unrelated.py").write_text("Y = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    config = {"builder": {"_target_": "mymodels.build"}}
    before = _key(config)
    (tmp_path / "unrelated.py").write_text("Y = 2\n")
    assert _key(config) == before
    (tmp_path / "layers.py").write_text("X = 2\n")
    after_layers = _key(config)
    assert after_layers != before
    (tmp_path / "parts" / "norms.py").write_text("N = 2\n")   # two imports away, relative
    assert _key(config) != after_layers


def test_the_key_follows_a_model_directory_and_a_class_method_builder(tmp_path, monkeypatch):
    folder = tmp_path / "hf_model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (tmp_path / "my_hf_mod.py").write_text("class Model:\n    @classmethod\n    def load(cls):\n        return 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    config = {"builder": {"_target_": "my_hf_mod.Model.load", "path": str(folder)}}
    before = _key(config)
    (folder / "model.safetensors").write_bytes(b"weights")   # a file added to the model dir
    after_dir = _key(config)
    assert before != after_dir
    _same_size_and_mtime(folder / "model.safetensors", b"WEIGHTS")   # weights changed in place
    after_weights = _key(config)
    assert after_weights != after_dir
    (tmp_path / "my_hf_mod.py").write_text("class Model:\n    @classmethod\n    def load(cls):\n        return 2\n")
    assert after_weights != _key(config)   # the class's module edited
