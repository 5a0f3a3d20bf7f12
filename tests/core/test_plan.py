"""The plan compiler: every problem collected, the stage chain type-checked."""
from __future__ import annotations

import sys
import textwrap

import pytest

from ptflow.app.settings import compile_plan
from ptflow.core.artifact import Form
from ptflow.core.errors import ConfigError
from tests.conftest import compose


def _problems(config, choices=None):
    with pytest.raises(ConfigError) as caught:
        compile_plan(config, choices)
    return caught.value.problems


def test_default_plan_chains_forms_from_load_to_export():
    config, choices = compose()
    plan = compile_plan(config, choices)
    assert [s.name for s in plan.stages] == ["load", "validate", "quantize", "compile", "benchmark", "export"]
    assert [s.form_out for s in plan.stages] == [Form.EAGER, Form.EAGER, Form.QUANTIZED, Form.QUANTIZED,
                                                Form.QUANTIZED, Form.EXPORTED]
    text = plan.render()
    assert "quantize       eager -> quantized" in text and "method=int8_dynamic" in text


def test_inductor_makes_the_model_compiled():
    config, choices = compose("compile=inductor")
    assert compile_plan(config, choices).stages[3].form_out is Form.COMPILED


def test_quantize_after_export_is_rejected_with_a_fix():
    config, _ = compose("pipeline=[load,validate,export,quantize]")
    (problem,) = _problems(config)
    assert problem.key == "pipeline[3]" and problem.found == "quantize"
    assert "place 'quantize' before 'export'" in problem.hint


def test_validate_must_see_the_unoptimized_model():
    config, _ = compose("pipeline=[load,quantize,validate,benchmark]")
    (problem,) = _problems(config)
    assert problem.key == "pipeline[2]" and "before 'quantize'" in problem.hint


def test_benchmark_needs_a_baseline():
    config, _ = compose("pipeline=[load,benchmark]")
    (problem,) = _problems(config)
    assert "add 'validate' before 'benchmark'" in problem.hint


@pytest.mark.parametrize("pipeline, fragment", [
    ("[validate,load]", "starts with a source stage"),
    ("[load,validate,load]", "each stage at most once"),
    ("[]", "at least one stage"),
])
def test_malformed_pipelines(pipeline, fragment):
    config, _ = compose(f"pipeline={pipeline}")
    assert any(fragment in p.expected for p in _problems(config))


def test_every_problem_is_reported_at_once():
    config, _ = compose("pipeline=[load,validate,benchmrk]")
    config["benchmark"]["iters"] = "many"
    config["compile"]["backend"] = "tensorrt"
    config["colour"] = "blue"
    problems = _problems(config)
    rendered = "\n".join(p.render() for p in problems)
    assert "did you mean 'benchmark'?" in rendered          # unknown stage
    assert "colour" in rendered                             # unknown top-level key
    assert len(problems) >= 2


def test_unused_stage_configs_are_not_checked():
    config, _ = compose("pipeline=[load,validate]")
    config["compile"]["backend"] = "tensorrt"   # compile is not in the pipeline
    assert [s.name for s in compile_plan(config).stages] == ["load", "validate"]


def test_cuda_device_is_rejected_on_a_machine_without_one():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    config, _ = compose("device=cuda")
    (problem,) = _problems(config)
    assert problem.key == "device.type" and "use device=cpu" in problem.hint


def test_a_plugin_module_adds_a_stage(tmp_path, monkeypatch):
    (tmp_path / "my_plugin.py").write_text(textwrap.dedent('''
        from dataclasses import dataclass
        from ptflow.core.artifact import Form, RUNNABLE
        from ptflow.core.stage import register_stage

        @dataclass(frozen=True)
        class ProfileConfig:
            top: int = 5

        @register_stage("profile", config=ProfileConfig)
        class ProfileStage:
            """Pretend profiler."""
            requires = frozenset({"baseline"})
            provides = frozenset()
            def __init__(self, config): self.config = config
            def consumes(self): return RUNNABLE
            def produces(self, given): return given
            def preflight(self, env): return []
            def run(self, artifact, ctx): return artifact.with_metrics({"profile.top": self.config.top})
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    config, _ = compose("plugins=[my_plugin]", "pipeline=[load,validate,profile]", "+profile.top=3")
    plan = compile_plan(config)
    assert plan.stages[-1].name == "profile" and plan.stages[-1].config.top == 3
    sys.modules.pop("my_plugin", None)


def test_a_missing_plugin_is_a_config_problem():
    config, _ = compose("plugins=[no_such_plugin_module]")
    assert any(p.key == "plugins" and p.found == "no_such_plugin_module" for p in _problems(config))
