"""Sweeps beyond one process: Hydra's submitit launcher (submitit's local executor runs each
job in its own process, as SLURM would on a node), ptflow's `hydra/launcher=slurm` config,
and a 16-job parallel sweep into a real `mlflow server` with one parent run over its jobs."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.mlflow_server import Server

BENCHMARK_METRICS = ("benchmark/speedup_p50", "benchmark/candidate.p50_ms",
                     "benchmark/top1_accuracy_delta", "export/size_mb")
JOB_ARTIFACTS = ("config.yaml", "summary.json")
PARENT_TAG = "ptflow.sweep_parent"
PARENT_ID_TAG = "mlflow.parentRunId"


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT), **extra}
    env.pop("PTFLOW_TEST_FAULT", None)
    return env


def _ptflow(cwd: Path, *args: str, timeout: int = 600, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ptflow", *args], cwd=cwd, env=_env(**env), text=True,
                          capture_output=True, timeout=timeout)


def _runs(uri: str, experiment: str = "ptflow"):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    return client, ([] if found is None else client.search_runs([found.experiment_id], max_results=1000))


def _artifacts(client, run_id: str, path: str | None = None) -> set[str]:
    return {a.path for a in client.list_artifacts(run_id, path)}


def _split_parent(runs) -> tuple[object | None, list]:
    parents = [r for r in runs if r.data.tags.get(PARENT_TAG) == "true"]
    assert len(parents) <= 1, [r.info.run_id for r in parents]
    return (parents[0] if parents else None), [r for r in runs if r.data.tags.get(PARENT_TAG) != "true"]


def _assert_job_runs(client, jobs, count: int, *artifacts: str) -> None:
    assert len(jobs) == count, [r.info.run_name for r in jobs]
    for run in jobs:
        assert run.info.status == "FINISHED", (run.info.run_name, run.data.tags.get("ptflow.error"))
        missing = [m for m in BENCHMARK_METRICS if m not in run.data.metrics]
        assert not missing, (run.info.run_name, missing)
        assert set(JOB_ARTIFACTS) <= _artifacts(client, run.info.run_id), run.info.run_name
        for path in artifacts:
            folder, _, name = path.rpartition("/")
            assert path in _artifacts(client, run.info.run_id, folder or None), (run.info.run_name, path)


def _assert_parent_contract(client, runs, expected: int, sweep_dir: Path | None = None) -> None:
    """One parent run per multirun: tagged, FINISHED, counting its jobs, with the comparison,
    and every job's run nested under it (mlflow.parentRunId)."""
    parent, jobs = _split_parent(runs)
    assert parent is not None, "no run tagged ptflow.sweep_parent=true: the sweep made no parent run"
    assert parent.info.status == "FINISHED"
    tags = parent.data.tags
    assert tags.get("ptflow.sweep_id")
    if sweep_dir is not None:
        assert tags.get("ptflow.sweep") == str(sweep_dir.resolve())
    assert parent.data.metrics.get("sweep/expected") == expected
    assert parent.data.metrics.get("sweep/finished") == expected
    assert parent.data.metrics.get("sweep/failed") == 0
    assert {r.data.tags.get(PARENT_ID_TAG) for r in jobs} == {parent.info.run_id}
    assert {"compare/compare.csv", "compare/compare.md"} <= _artifacts(client, parent.info.run_id, "compare")


def _sweep_dir(cwd: Path) -> Path:
    (found,) = (cwd / "outputs" / "multirun").glob("*/*")
    return found


# -- hydra/launcher=submitit_local: every job in a process of its own --------------------------

@pytest.mark.slow
def test_a_submitit_local_sweep_runs_and_records_every_job(tmp_path):
    started = time.monotonic()
    result = _ptflow(tmp_path, "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10",
                     "hydra.launcher.cpus_per_task=1", "benchmark=quick", "device.threads=1",
                     "quantize=none,int8_dynamic")
    assert result.returncode == 0, result.stderr + result.stdout
    assert "sweep: 2/2 job(s)" in result.stdout and "2 finished, 0 failed" in result.stdout
    sweep_dir = _sweep_dir(tmp_path)
    for num in ("0", "1"):   # the table read these; the jobs wrote them from their own processes
        record = json.loads((sweep_dir / num / "ptflow_result.json").read_text())
        assert record["status"] == "FINISHED" and record["exit_code"] == 0
    assert list(sweep_dir.glob(".submitit/*/*_log.out")), "submitit keeps each job's console in the sweep dir"
    client, runs = _runs(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    _, jobs = _split_parent(runs)
    _assert_job_runs(client, jobs, 2)
    assert len({r.data.tags["ptflow.process"] for r in jobs}) == 2            # two job processes
    assert sorted(r.data.params["quantize.method"] for r in jobs) == ["int8_dynamic", "none"]
    # the parent/child contract: the launching process's parent run, each job nested under it
    _assert_parent_contract(client, runs, 2, sweep_dir)
    print(f"submitit_local 2-job sweep: {time.monotonic() - started:.1f} s")


# -- hydra/launcher=slurm: ptflow's SLURM config (no cluster here: compose, and the sbatch script) --

def test_the_slurm_launcher_config_composes_with_its_defaults():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from ptflow.app.args import CONFIG_DIR

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3", job_name="ptflow"):
            cfg = compose("config", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"],
                          return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()
    launcher = cfg.hydra.launcher
    assert cfg.hydra.runtime.choices["hydra/launcher"] == "slurm"
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.nodes, launcher.tasks_per_node, launcher.cpus_per_task) == (1, 1, 4)
    assert launcher.gpus_per_node is None and launcher.partition == "gpu" and launcher.max_num_timeout == 0
    assert launcher.timeout_min == 60 and launcher.array_parallelism == 32 and launcher.setup is None
    assert OmegaConf.to_container(launcher, resolve=False)["submitit_folder"] == "${hydra.sweep.dir}/.submitit/%j"


def test_a_slurm_sweep_dry_run_checks_every_job(tmp_path):
    result = _ptflow(tmp_path, "-m", "hydra/launcher=slurm", "benchmark=quick", "quantize=none,int8_dynamic",
                     "dry_run=true", timeout=120)
    assert result.returncode == 0, result.stderr
    assert "dry run: 2 job(s) checked, nothing run" in result.stdout
    assert not (tmp_path / "outputs" / "multirun").exists()


FAKE_SBATCH = """#!/bin/sh
# records the script it was given, then refuses, as a cluster without this partition would
for last; do :; done
cp "$last" "$SBATCH_COPY"
echo "sbatch: error: invalid partition specified: $PARTITION" >&2
exit 1
"""


def test_slurm_settings_reach_the_sbatch_script(tmp_path):
    """No SLURM here: a fake `sbatch` first on PATH keeps the script submitit wrote, then
    refuses it. The launcher's config (and its overrides) must be in that script."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("srun", "#!/bin/sh\nexit 1\n")):   # submitit looks for srun first
        tool = bin_dir / name
        tool.write_text(text)
        tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    copy = tmp_path / "submitted.sh"
    work = tmp_path / "work"
    work.mkdir()
    result = _ptflow(work, "-m", "hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                     "hydra.launcher.timeout_min=30", "hydra.launcher.array_parallelism=4",
                     "hydra.launcher.setup=['export MLFLOW_TRACKING_URI=http://mlflow.internal:5000']",
                     "benchmark=quick", "quantize=none,int8_dynamic", timeout=120,
                     PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", SBATCH_COPY=str(copy), PARTITION="gpu")
    assert result.returncode == 1, result.stderr + result.stdout          # the submission failed: no job ran
    assert "the sweep's launcher failed" in result.stderr and "Traceback" not in result.stderr
    script = copy.read_text()
    sweep_dir = _sweep_dir(work)
    for line in ("#SBATCH --partition=gpu", "#SBATCH --time=30", "#SBATCH --cpus-per-task=4",
                 "#SBATCH --ntasks-per-node=1", "#SBATCH --nodes=1", "#SBATCH --mem=16GB",
                 "#SBATCH --array=0-1%2", "#SBATCH --job-name=ptflow",
                 "export MLFLOW_TRACKING_URI=http://mlflow.internal:5000"):
        assert line in script, (line, script)
    assert "--gpus-per-node" not in script
    assert f"#SBATCH --output={sweep_dir.resolve()}/.submitit/" in script      # each job's console: in the sweep dir
    assert f"{sys.executable} -u -m submitit.core._submit" in script             # this interpreter, on every node
    assert not list(sweep_dir.glob("*/ptflow_result.json"))


# -- 16 jobs, two at a time, into one mlflow server -------------------------------------------

@pytest.mark.slow
def test_sixteen_parallel_jobs_into_one_mlflow_server_nest_under_one_parent(tmp_path):
    server = Server(tmp_path / "server")
    server.start()
    try:
        work = tmp_path / "work"
        work.mkdir()
        started = time.monotonic()
        result = _ptflow(work, "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "benchmark=quick",
                         "device.threads=1", "quantize=int8_dynamic", "seed=range(0,16)",
                         f"tracking.uri={server.uri}")
        took = time.monotonic() - started
        assert result.returncode == 0, result.stderr[-4000:]
        assert "sweep: 16/16 job(s)" in result.stdout and "16 finished, 0 failed" in result.stdout
        assert "View run" not in result.stdout   # MLflow's per-run lines: the summary names the run already
        client, runs = _runs(server.uri)
        parent, jobs = _split_parent(runs)
        _assert_job_runs(client, jobs, 16, "files/export.pt2")
        assert sorted(int(r.data.params["seed"]) for r in jobs) == list(range(16))
        _assert_parent_contract(client, runs, 16, _sweep_dir(work))
        print(f"16-job joblib sweep (n_jobs=2) into mlflow server: {took:.1f} s")
        # ptflow-compare reads a server as it reads sqlite: the last sweep, every job a row
        compared = subprocess.run([sys.executable, "-m", "ptflow.review.compare_cli", "--tracking-uri", server.uri,
                                   "--max-accuracy-drop", "1%"], cwd=work, capture_output=True, text=True,
                                  timeout=300)
        assert compared.returncode in (0, 1), compared.stderr
        assert parent.info.run_id in compared.stdout
        assert all(r.info.run_id[:8] in compared.stdout for r in jobs)
    finally:
        server.stop()
