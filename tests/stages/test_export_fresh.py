"""Every exported file loads in a new Python process by its manifest's load line alone.

The export stage starts one process per file that runs the manifest's ``load`` and ``call``
lines on the example's inputs; what the file needs imported first (PT2E's operator library,
a user's custom op, a dataclass output) is found in the file's graph, named in ``requires``
and put on the load line. A file that does not load that way fails the export."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from ptflow.app.settings import compile_plan
from ptflow.core import engine
from ptflow.core.errors import StageError
import ptflow.stages.export.stage  # noqa: F401 (registers the formats)
from tests.conftest import compose, make_context
from tests.inputs.test_user_models import OUTPUT_MODULE
from tests.user_inputs import _config, _run as run_user

TINY = ("model.weights=null", "model.builder.hidden=32", "model.builder.depth=2", "data.max_batches=1",
        "benchmark=quick", "tracking=none")


def _run(tmp_path, *overrides):
    config, choices = compose(*TINY, *overrides)
    plan = compile_plan(config, choices)
    return engine.run(plan, make_context(tmp_path, plan), ())


def _manifest(export_dir):
    return json.loads((export_dir / "manifest.json").read_text())


def _paste(export_dir, *lines, env=None):
    """The lines run by `python -c` in the export dir, as a user pastes them."""
    return subprocess.run([sys.executable, "-c", "\n".join(lines)], cwd=export_dir, capture_output=True,
                          text=True, timeout=120, env=env)


CALL_EXAMPLE = ("from safetensors.torch import load_file; t = load_file('model.example.safetensors'); "
                "args = [t['input.pixels']]; kwargs = {}")


def test_each_file_is_loaded_and_run_in_a_fresh_process_by_its_manifest(tmp_path):
    artifact = _run(tmp_path, "pipeline=[load,validate,export]", "export.formats=[pt2,onnx,safetensors,torchscript]")
    manifest = _manifest(tmp_path / "export")
    for entry in manifest["files"]:
        assert entry["metrics"]["fresh_check_s"] > 0, entry["format"]
        assert artifact.metrics[f"export.{entry['format']}.fresh_check_s"] == entry["metrics"]["fresh_check_s"]
        assert entry["requires"] == []            # a plain fp32 MLP needs nothing but torch
        assert (entry["call"] is None) == (entry["format"] == "safetensors")
    pt2 = manifest["files"][0]
    pasted = _paste(tmp_path / "export", pt2["load"], CALL_EXAMPLE, pt2["call"],
                    "import torch; assert torch.allclose(out, t['output'], atol=1e-4); print('same')")
    assert pasted.returncode == 0 and "same" in pasted.stdout, pasted.stderr


@pytest.mark.slow
def test_a_pt2e_file_requires_the_op_library_and_its_load_line_imports_it(tmp_path):
    """quantized_decomposed is registered by a module `import torch` does not import: without it a
    fresh process cannot load the PT2E .pt2 (nor the torchscript traced from it)."""
    _run(tmp_path, "pipeline=[load,validate,quantize,export]", "quantize=int8_static",
         "export.formats=[pt2,torchscript]")
    export_dir = tmp_path / "export"
    for entry in _manifest(export_dir)["files"]:
        (module,) = entry["requires"]
        assert module.startswith(("torch.ao.quantization", "torchao")), module
        assert entry["load"].startswith(f"import {module}; ")
        assert _paste(export_dir, entry["load"]).returncode == 0
    bare = _paste(export_dir, "import torch; torch.export.load('model.pt2')")
    assert bare.returncode != 0 and "quantized_decomposed" in bare.stderr   # what requires is for


USER_MODULE = OUTPUT_MODULE + '''

@torch.library.custom_op("ptflowfresh::twice", mutates_args=())
def twice(x: torch.Tensor) -> torch.Tensor:
    return x * 2

@twice.register_fake
def _(x):
    return torch.empty_like(x)

class TwiceNet(Net):
    def forward(self, pixels):
        return Scores(twice(self.layer(pixels)))
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A user's module (a custom op, a dataclass output) importable in this process only."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "fresh_user_mod.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(source))
    yield source
    sys.modules.pop("fresh_user_mod", None)


def _user_config():
    return _config("pipeline=[load,validate,export]", "export.formats=[pt2]",
                   model={"builder": {"_target_": "fresh_user_mod.TwiceNet"}, "weights": None})


def test_what_the_graph_needs_is_on_the_load_line_and_a_fresh_process_loads_it(tmp_path, user_module, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(user_module))   # where the user's process finds it too
    run_user(tmp_path, *_user_config())
    (entry,) = _manifest(tmp_path / "export")["files"]
    assert entry["requires"] == ["fresh_user_mod"]
    assert "torch.export.register_dataclass(fresh_user_mod.Scores" in entry["load"]
    by_keyword = CALL_EXAMPLE.replace("args = [t['input.pixels']]; kwargs = {}",
                                      "args = []; kwargs = {'pixels': t['input.pixels']}")
    pasted = _paste(tmp_path / "export", entry["load"], by_keyword, entry["call"], "print(type(out).__name__)",
                    env={**os.environ, "PYTHONPATH": str(user_module)})
    assert pasted.returncode == 0 and pasted.stdout.strip() == "Scores", pasted.stderr


def test_a_file_a_fresh_process_cannot_load_fails_the_export_and_nothing_is_kept(tmp_path, user_module,
                                                                                  monkeypatch):
    monkeypatch.delenv("PYTHONPATH", raising=False)   # the module is on this process's path only
    with pytest.raises(StageError) as caught:
        run_user(tmp_path, *_user_config())
    said = str(caught.value)
    assert "export.formats=pt2: the file does not load in a fresh Python process" in said
    assert "fresh_user_mod" in said and "ModuleNotFoundError" in said
    assert list((tmp_path / "export").iterdir()) == []


def test_fresh_check_false_skips_only_the_fresh_process(tmp_path):
    artifact = _run(tmp_path, "pipeline=[load,validate,export]", "export.fresh_check=false")
    assert "export.pt2.fresh_check_s" not in artifact.metrics
    assert artifact.metrics["export.pt2.reload_max_abs_error"] == 0.0


def test_the_first_check_starts_with_the_run_and_imports_holding_the_device_lock(tmp_path, monkeypatch):
    """Started before the first stage, the process imports torch while the model loads: it holds
    the device's timed-section locks meanwhile (a benchmark waits for it), and lets go after."""
    from filelock import FileLock, Timeout

    from ptflow.measure import device_lock
    from ptflow.stages.export import fresh

    monkeypatch.setenv(device_lock.LOCK_DIR_ENV, str(tmp_path / "locks"))
    check = fresh.spawn_guarded(tmp_path, "cpu")
    try:
        first = device_lock.lock_names("cpu")[0]
        owner = tmp_path / "locks" / f"{first}.owner"
        while "fresh-process check" not in (owner.read_text() if owner.exists() else ""):
            assert check.process.poll() is None, check.process.communicate()
            time.sleep(0.01)
        with pytest.raises(Timeout):   # held while it imports
            FileLock(str(tmp_path / "locks" / f"{first}.lock")).acquire(timeout=0)
        with device_lock.timed_section("cpu") as held:   # and released once torch is in
            assert held.acquired_at > 0
    finally:
        check.kill()


def test_a_run_that_ends_before_export_stops_the_check_it_started(tmp_path, monkeypatch):
    from ptflow.stages.export import fresh

    started = []
    spawn = fresh.spawn_guarded
    monkeypatch.setattr(fresh, "spawn_guarded", lambda *args: started.append(spawn(*args)) or started[-1])

    def broken(self, artifact, ctx):
        raise RuntimeError("validate broke")

    plan = compile_plan(*compose(*TINY, "pipeline=[load,validate,export]"))
    # the class the plan holds (another test may have imported the module anew since it was registered)
    (validate,) = [p.stage for p in plan.stages if p.name == "validate"]
    monkeypatch.setattr(type(validate), "run", broken)
    with pytest.raises(StageError, match="validate broke"):
        engine.run(plan, make_context(tmp_path, plan), ())
    (check,) = started
    assert check.process.poll() is not None   # stopped, not left waiting for a job
