"""ptflow behaves as a Hydra app: Hydra's flags, sweep grammars and config features all
work, and ptflow checks what Hydra produces. Dry runs go through `ptflow.app.cli.run` in this
process (nothing runs, so they are quick); real runs start the `ptflow` process."""
from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

from ptflow.app import cli
from tests.conftest import STEADY, mlflow_runs, run_cli


@pytest.fixture
def inproc(tmp_path, monkeypatch, capsys):
    """`ptflow ARGS` in this process, from tmp_path: (exit code, stdout, stderr)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")      # restored afterwards; the CLI sets it

    def call(*args: str):
        code = cli.run(list(args))
        out, err = capsys.readouterr()
        return code, out, err
    yield call
    from hydra.core.hydra_config import HydraConfig

    HydraConfig.instance().cfg = None   # a finished Hydra app leaves its config behind in this process


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def _jobs(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("[")]


# -- Hydra expands the sweep; ptflow checks each job ------------------------------------

def test_glob_sweeps_expand_through_hydra(inproc):
    code, out, err = inproc("-m", "quantize=glob([int8_dyn*,n*])", "compile=eager,inductor", "dry_run=true")
    assert code == 0, err
    assert "dry run: 4 job(s) checked" in out
    assert {j.split()[0] for j in _jobs(out)} == {"[quantize=int8_dynamic", "[quantize=none"}


def test_range_and_choice_sweeps_plan_every_job(inproc):
    code, out, err = inproc("-m", "seed=range(0,3)", "quantize=choice(none,int8_dynamic)", "dry_run=true")
    assert code == 0, err
    assert "dry run: 6 job(s) checked" in out


def test_interval_is_refused_by_the_basic_sweeper_in_one_clear_line(inproc):
    code, out, err = inproc("-m", "seed=interval(0,3)", "dry_run=true")
    assert code == 2
    assert "interval() needs a sweeper that samples" in err and "Traceback" not in err


def test_a_bad_value_in_one_job_names_that_job_and_all_others(inproc):
    code, out, err = inproc("-m", "quantize=glob([int8_dyn*,n*])", "compile=eager,inductr")
    assert code == 2
    assert "did you mean 'inductor'?" in err
    assert "in job(s): quantize=int8_dynamic compile=inductr | quantize=none compile=inductr" in err


def test_each_jobs_own_plan_problem_names_the_job(inproc):
    code, out, err = inproc("-m", "compile=eager,inductor", "compile.mode=reduce-overhead")
    assert code == 2
    assert "'default' with backend 'eager'" in err and "in job(s): compile=eager compile.mode=reduce-overhead" in err
    assert "CUDA graphs" in err and "in job(s): compile=inductor compile.mode=reduce-overhead" in err


def test_list_values_survive_a_sweep(inproc):
    code, out, err = inproc("-m", "quantize.skip=[net.6],[net.0]", "dry_run=true")
    assert code == 0, err
    assert "dry run: 2 job(s) checked" in out and "skip=[net.6]" in out and "skip=[net.0]" in out


def test_sweeps_declared_in_config_are_checked_and_reported_as_theirs(inproc, tmp_path):
    _write(tmp_path / "extra" / "experiment" / "grid.yaml", """\
        # @package _global_
        # ptflow -m -cd extra experiment=grid — a sweep declared in config
        hydra:
          sweeper:
            params:
              quantize: none,int8_dynamic
              seed: 0,1
        """)
    code, out, err = inproc("-m", "-cd", str(tmp_path / "extra"), "experiment=grid", "dry_run=true")
    assert code == 0, err
    assert "dry run: 4 job(s) checked" in out


def test_run_flag_runs_one_job(inproc):
    code, out, err = inproc("--run", "dry_run=true")
    assert code == 0, err
    assert "dry run: 1 job(s) checked" in out


def test_hydra_mode_multirun_needs_no_dash_m(inproc):
    code, out, err = inproc("hydra.mode=MULTIRUN", "quantize=none,int8_dynamic", "dry_run=true")
    assert code == 0, err
    assert "dry run: 2 job(s) checked" in out


def test_a_sampling_sweeper_gets_its_search_space_probed_interval_included(inproc, tmp_path):
    study = """\
        # @package _global_
        # ptflow -m -cd studies experiment={name} — an Optuna search space declared in config
        defaults:
          - override /hydra/sweeper: optuna
        hydra:
          sweeper:
            direction: maximize
            n_trials: 2
            params:
              quantize: choice(none, int8_dynamic)
              {extra}
        """
    _write(tmp_path / "studies" / "experiment" / "wide.yaml",
           study.format(name="wide", extra="benchmark.max_dispersion: interval(0.1, 0.5)"))
    _write(tmp_path / "studies" / "experiment" / "typo.yaml", study.format(name="typo", extra="compile: choice(eager, inductr)"))
    code, out, err = inproc("-m", "-cd", str(tmp_path / "studies"), "experiment=wide", "dry_run=true")
    assert code == 0, err
    assert "dry run: 3 probe job(s) of the search space checked" in out     # 1 + one more per extra value
    assert "max_dispersion=0.1" in out and "max_dispersion=0.5" in out
    code, out, err = inproc("-m", "-cd", str(tmp_path / "studies"), "experiment=typo")
    assert code == 2 and "did you mean 'inductor'?" in err


def test_a_sweep_without_multirun_and_a_bad_key_are_both_reported(inproc):
    code, out, err = inproc("quantize=none,int8_dynamic", "benchmark.iterz=3")
    assert code == 2
    assert "ptflow -m quantize=none,int8_dynamic" in err and "did you mean 'iters'?" in err


# -- Hydra's flags and config sources -----------------------------------------------------

def test_config_name_and_config_path_choose_the_primary_config(inproc, tmp_path):
    _write(tmp_path / "mine" / "tuned.yaml", f"""\
        # ptflow -cp mine -cn tuned — the bundled config with a fixed seed
        defaults:
          - config
          - _self_
        seed: 7
        hydra:
          searchpath: [file://{cli.CONFIG_DIR}]
        """)
    code, out, err = inproc("-cp", "mine", "-cn", "tuned", "dry_run=true")
    assert code == 0, err
    code, out, err = inproc("--config-name", "confgi")
    assert code == 2 and "--config-name" in err and "did you mean 'config'?" in err


def test_the_documented_own_primary_config_inherits_ptflows_defaults(inproc, tmp_path):
    """docs/hydra-mlflow.md's example, as written there: `config` first, pkg://ptflow.conf."""
    import re

    from tests.conftest import ROOT

    page = (ROOT / "docs" / "hydra-mlflow.md").read_text()
    (example,) = re.findall(r"```yaml\n(# my_conf/tuned.yaml\n.*?)```", page, re.S)
    _write(tmp_path / "my_conf" / "tuned.yaml", example)
    code, out, err = inproc("-cp", "my_conf", "-cn", "tuned", "compile=inductor", "dry_run=true")
    assert code == 0, err
    assert "quantize=int8_static" in out and "compile=inductor" in out and "iters=200" in out
    _write(tmp_path / "my_conf" / "bare.yaml", example.replace("pkg://ptflow.conf", "pkg://nowhere.conf"))
    code, out, err = inproc("-cp", "my_conf", "-cn", "bare", "dry_run=true")
    assert code == 2 and "Could not load 'config'" in err and "searchpath: [pkg://ptflow.conf]" in err


def test_searchpath_adds_options_the_preflight_knows(inproc, tmp_path):
    _write(tmp_path / "more" / "quantize" / "none_but_skip_head.yaml", """\
        # ptflow quantize=none_but_skip_head — a user's own recipe file on the search path
        method: none
        skip: [net.6]
        """)
    searchpath = f"hydra.searchpath=[file://{tmp_path / 'more'}]"
    code, out, err = inproc(searchpath, "quantize=none_but_skip_head", "dry_run=true")
    assert code == 0, err
    assert "none_but_skip_head" in inproc("--help", searchpath)[1]


def test_hydra_interpolations_in_the_job_config(inproc):
    code, out, err = inproc("tracking.run_name=${hydra:runtime.choices.quantize}-${hydra:job.name}",
                            "dry_run=true")
    assert code == 0, err


def test_an_env_var_seed_is_an_int_as_omegaconf_would_make_it(inproc, monkeypatch):
    monkeypatch.setenv("PTFLOW_TEST_SEED", "3")
    code, out, err = inproc("seed=${oc.env:PTFLOW_TEST_SEED}", "dry_run=true")
    assert code == 0, err
    monkeypatch.setenv("PTFLOW_TEST_SEED", "three")
    code, out, err = inproc("seed=${oc.env:PTFLOW_TEST_SEED}", "dry_run=true")
    assert code == 2 and "seed: found 'three'; expected int" in err


def test_cfg_hydra_resolve_prints_the_resolved_hydra_node(inproc):
    code, out, err = inproc("--cfg", "hydra", "--resolve")
    assert code == 0, err
    assert "# @package hydra" in out and "outputs/runs/" in out and "${" not in out.split("help:")[0]


def test_help_lists_groups_of_every_config_dir_and_what_overrides_pick(inproc, tmp_path):
    _write(tmp_path / "cd" / "quantize" / "mine.yaml", "# ptflow -cd cd quantize=mine\nmethod: none\nskip: []\n")
    code, out, err = inproc("--help", "-cd", str(tmp_path / "cd"), "quantize=mine", "experiment=latency_only")
    assert code == 0
    (options,) = [line for line in out.splitlines() if line.startswith("  quantize ")]
    assert "mine" in options
    assert "with these overrides:" in out and "quantize=mine" in out
    assert "pipeline: load → validate → quantize → compile → benchmark" in out


def test_deleting_a_stage_group_refuses_and_names_the_pipeline_to_write(inproc):
    """`~quantize` removes the node, not the stage: ptflow says which pipeline to write."""
    code, out, err = inproc("~quantize", "~export", "benchmark.iterz=1", "dry_run=true")
    assert code == 2, err
    assert "3 config problem(s)" in err and "benchmark.iterz" in err
    assert "~quantize: found '~quantize'" in err and "'pipeline=[load,validate,compile,benchmark,export]'" in err
    assert "~export: found '~export'" in err and "'pipeline=[load,validate,quantize,compile,benchmark]'" in err
    code, out, err = inproc("~export", "pipeline=[load,validate,quantize,benchmark]", "dry_run=true")
    assert code == 0, err                      # no stage reads it: deleting the node is fine


def test_help_names_every_installed_command(inproc):
    import tomllib

    from tests.conftest import ROOT

    commands = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    code, out, err = inproc("--help")
    assert code == 0, err
    listed = {line.split()[0] for line in out.splitlines() if line.startswith("  ptflow")}
    assert set(commands) <= listed, set(commands) - listed


def test_version_names_ptflow_and_hydra(inproc):
    code, out, err = inproc("--version")
    assert code == 0 and out.startswith("ptflow 0.") and "Hydra 1.3" in out


# -- real runs --------------------------------------------------------------------------------

def test_chdir_keeps_one_store_and_verbose_shows_ptflow_debug(tmp_path):
    result = run_cli(tmp_path, "hydra.job.chdir=true", "hydra.verbose=true", "experiment=latency_only",
                     "benchmark=quick", "quantize=none")
    assert result.code == 0, result.stderr
    assert [p.relative_to(tmp_path) for p in tmp_path.rglob("mlflow.db")] == [Path("outputs/mlflow.db")]
    assert len(mlflow_runs(result)) == 1
    assert "stage benchmark: starting" in result.stdout      # ptflow's own log, shown by hydra.verbose
    assert "run dir             outputs/runs/" in result.stdout   # paths shown from where the user is


def test_experimental_rerun_repeats_a_logged_run(tmp_path):
    pickle_cb = "+hydra.callbacks.save_job_info._target_=hydra.experimental.callbacks.PickleJobInfoCallback"
    first = run_cli(tmp_path, pickle_cb, "experiment=latency_only", "benchmark=quick", "quantize=none", "seed=5")
    assert first.code == 0, first.stderr
    (pickled,) = tmp_path.glob("outputs/runs/*/*/.hydra/config.pickle")
    record = (pickled.parent.parent / "ptflow_result.json").read_text()
    again = run_cli(tmp_path, "--experimental-rerun", str(pickled))
    assert again.code == 0, again.stderr
    runs = mlflow_runs(first)
    assert len(runs) == 2 and {r.data.params["seed"] for r in runs} == {"5"}
    # a run dir of its own, like every run: the original's record is the original's
    assert (pickled.parent.parent / "ptflow_result.json").read_text() == record
    records = sorted(tmp_path.glob("outputs/runs/*/*/ptflow_result.json"))
    assert len(records) == 2 and len({r.parent for r in records}) == 2
    assert len({r.data.tags["ptflow.run_dir"] for r in runs}) == 2


def test_optuna_searches_within_the_accuracy_gate(tmp_path):
    """The shipped search: a recipe the accuracy gate rejects is a failed trial, not a crash."""
    result = run_cli(tmp_path, "-m", "experiment=search", "hydra.sweeper.n_trials=3",
                     "hydra.sweeper.params.compile='choice(eager)'", "benchmark=quick", "accuracy.max_drop=0.001",
                     *STEADY)
    assert result.code == 0, result.stderr
    assert "Best value" in result.stdout + result.stderr
    records = [json.loads(p.read_text()) for p in tmp_path.glob("outputs/multirun/*/*/*/ptflow_result.json")]
    assert len(records) == 3 and {r["status"] for r in records} == {"FINISHED"}
    for record in records:   # int8 loses 0.0022 top-1: over the budget, so no objective
        quantized = record["config"]["quantize"]["method"] == "int8_dynamic"
        assert (record["objective"] is None) == quantized
        assert quantized == ("objective" in record["warnings"])
    # one parent run for the whole search, every trial nested under it
    (parent,) = [r for r in mlflow_runs(result, parents=True) if r.data.tags.get("ptflow.sweep_parent") == "true"]
    assert parent.info.run_name.startswith("sweep search @") and parent.data.tags["ptflow.sweeper"] == "OptunaSweeper"
    assert {r.data.tags["mlflow.parentRunId"] for r in mlflow_runs(result)} == {parent.info.run_id}
    assert parent.info.status == "FINISHED" and parent.data.metrics["sweep/finished"] == 3
    assert "sweep/expected" not in parent.data.metrics   # Optuna decides the trials as it goes
    # the whole command line, and Optuna's own answer beside ptflow's pick (which follows the gate)
    assert "hydra.sweeper.n_trials=3" in parent.data.tags["ptflow.command"]
    assert parent.data.params["hydra.sweeper.n_trials"] == "3"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=result.tracking_uri)
    assert "optimization_results.yaml" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    best = {k.removeprefix("optuna.best."): v for k, v in parent.data.params.items() if k.startswith("optuna.best.")}
    assert best and best["quantize"] != "int8_dynamic" and "optuna/best_value" in parent.data.metrics
    assert parent.data.tags["ptflow.pick.budget"] == "0.001 (accuracy.max_drop)"
    picked = client.get_run(parent.data.tags["ptflow.best_run_id"])
    assert picked.data.params["quantize.method"] != "int8_dynamic"


@pytest.mark.slow
def test_a_search_whose_every_trial_is_invalid_ends_with_one_line_and_exit_4(tmp_path):
    """A busy machine, every trial flagged invalid: Optuna has no completed trial ("No trials are
    completed yet"); ptflow says what happened, the dispersion seen and what to do, exit 4."""
    result = run_cli(tmp_path, "-m", "experiment=search", "hydra.sweeper.n_trials=2",
                     "hydra.sweeper.params.compile='choice(eager)'", "hydra.sweeper.params.quantize='choice(none)'",
                     "benchmark=quick", "benchmark.max_dispersion=1e-9", "benchmark.invalid_dispersion=1e-9")
    assert result.code == 4, result.stderr
    (line,) = [line for line in result.stderr.splitlines() if "the search has no completed trial" in line]
    assert "all 2 trial(s) finished, but every one's timings were invalid (IQR/median up to " in line
    assert "above benchmark.invalid_dispersion=1e-09" in line and "Rerun on a quieter machine" in line
    assert "No trials are completed yet" not in result.stderr


def test_a_sweep_returns_the_objective_of_each_job(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.environ.pop("PTFLOW_TEST_FAULT", None)
    result = run_cli(tmp_path, "-m", "seed=0,1", "experiment=latency_only", "benchmark=quick", "quantize=none",
                     "objective=benchmark.candidate.p50_ms", *STEADY)
    assert result.code == 0, result.stderr
    records = [json.loads(p.read_text()) for p in tmp_path.glob("outputs/multirun/*/*/*/ptflow_result.json")]
    assert all(r["objective"] == r["metrics"]["benchmark.candidate.p50_ms"] for r in records)


def test_an_optimised_objective_of_a_stage_not_in_the_pipeline_is_refused(inproc):
    code, out, err = inproc("-m", "experiment=search", "objective=export.size_mb", "dry_run=true")
    assert code == 2 and "objective" in err and "'export' is not in the pipeline" in err
    code, out, err = inproc("objective=export.size_mb", "experiment=latency_only", "dry_run=true")
    assert code == 0, err                  # a single run hands nothing to a sweeper: no need


def test_an_enforced_accuracy_gate_needs_a_measured_task_metric(inproc):
    code, out, err = inproc("accuracy.enforce=true", "data.metric=null", "dry_run=true")
    assert code == 2 and "accuracy.enforce" in err and "data.metric" in err
    code, out, err = inproc("+accuracy_budget=0.01", "dry_run=true")   # the old name says where it went
    assert code == 2 and "accuracy.max_drop" in err


def test_an_invalid_measurement_hands_no_objective_to_a_sweeper():
    from ptflow.decide.objective import value

    metrics = {"benchmark.speedup_p50": 3.0}
    assert value(metrics, "benchmark.speedup_p50", {"benchmark.stability": "stable"}) == (3.0, None)
    assert value(metrics, "benchmark.speedup_p50", {"benchmark.stability": "unstable"}) == (3.0, None)
    got, why = value(metrics, "benchmark.speedup_p50", {"benchmark.stability": "invalid"})
    assert got is None and "invalid" in why
