"""One pipeline run inside a Hydra job: plan, device, tracking, engine, summary.

Every outcome is written to ``<run dir>/ptflow_result.json`` so a launcher in another
process (joblib, submitit) can still report it; failures end the MLflow run FAILED.
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ptflow import device, engine, summary
from ptflow.errors import ConfigError, PtflowError
from ptflow.plan import compile_plan
from ptflow.stage import RunContext
from ptflow.tracking import MlflowTracker, RunInfo

RESULT_FILE = "ptflow_result.json"


@dataclass
class Outcome:
    status: str                          # FINISHED, FAILED or CONFIG_ERROR
    run_dir: str
    overrides: list[str]
    exit_code: int = 0
    error: str | None = None
    run_id: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)


OUTCOMES: list[Outcome] = []   # in-process launchers: the CLI reads these for its exit code


def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def run(config: dict[str, Any], config_yaml: str, choices: dict[str, str], overrides: list[str],
        run_dir: Path, extra_tags: dict[str, str]) -> Outcome:
    """Run one pipeline; never raises for a user error (the outcome says what happened)."""
    started = time.perf_counter()
    outcome = Outcome("FINISHED", str(run_dir), overrides)
    tracker: MlflowTracker | None = None
    try:
        plan = compile_plan(config, choices)
        settings = plan.settings
        import torch

        device.apply(settings.device)
        torch.manual_seed(settings.seed)
        ctx = RunContext(run_dir, settings.device.name, settings.seed, config_hash(config),
                         device.capture(settings.device), engine.progress)
        outputs_dir = Path(settings.outputs_dir).resolve()
        if settings.tracking.enabled:
            tracker = MlflowTracker(settings.tracking, outputs_dir,
                                    RunInfo(config, config_yaml, overrides, extra_tags))
        artifact = engine.run(plan, ctx, [tracker] if tracker else [])
        record = summary.build(artifact, choices, run_dir, time.perf_counter() - started,
                               tracker.run_id if tracker else None, tracker.uri if tracker else None,
                               settings.tracking.experiment)
        summary_path = run_dir / "summary.json"
        summary_path.write_text(json.dumps(record, indent=2, default=str) + "\n")
        if tracker:
            tracker.finish(summary_path, artifact.files)
        outcome.summary, outcome.run_id = record, record["mlflow"]["run_id"]
        print(summary.render(record), flush=True)
    except ConfigError as error:
        outcome.status, outcome.exit_code, outcome.error = "CONFIG_ERROR", error.exit_code, str(error)
        print(f"ptflow: {error}", file=sys.stderr)
    except Exception as error:  # a stage failure, or a bug: either way, record it and say where
        outcome.status, outcome.exit_code, outcome.error = "FAILED", 1, str(error)
        outcome.run_id = tracker.run_id if tracker else None
        _report_failure(error, run_dir, tracker)
    finally:
        if tracker:
            tracker.close()
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / RESULT_FILE).write_text(json.dumps(asdict(outcome), indent=2, default=str) + "\n")
        OUTCOMES.append(outcome)
    return outcome


def _report_failure(error: Exception, run_dir: Path, tracker: MlflowTracker | None) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    detail = "".join(traceback.format_exception(error))
    (run_dir / "error.txt").write_text(f"{error}\n\n{detail}")
    lines = [f"ptflow: {error}" if isinstance(error, PtflowError) else f"ptflow: unexpected error: {detail}"]
    if tracker and tracker.run_id:
        lines.append(f"MLflow run {tracker.run_id} ended FAILED (tag ptflow.error, artifact error.txt)")
    lines.append(f"outputs so far, and the full traceback (error.txt), are in {run_dir}")
    print("\n".join(lines), file=sys.stderr, flush=True)


def hydra_task(cfg: Any) -> None:
    """The function Hydra calls for each job."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    hydra_cfg = HydraConfig.get()
    tags = {}
    if hydra_cfg.mode == RunMode.MULTIRUN:
        tags = {"ptflow.sweep": str(hydra_cfg.sweep.dir), "ptflow.job_num": str(hydra_cfg.job.num)}
    run(config=OmegaConf.to_container(cfg, resolve=True),
        config_yaml=OmegaConf.to_yaml(cfg, resolve=True),
        choices={k: str(v) for k, v in hydra_cfg.runtime.choices.items() if v is not None},
        overrides=list(hydra_cfg.overrides.task),
        run_dir=Path(hydra_cfg.runtime.output_dir),
        extra_tags=tags)
