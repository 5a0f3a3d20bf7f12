"""What a run hands back to a Hydra sweeper: one metric, or nothing when the run does not count.

`objective` names a ptflow metric: `benchmark.speedup_p50` (higher is better: the sweeper's
`direction: maximize`) or e.g. `benchmark.candidate.p50_ms` (`direction: minimize`). A run
that did not finish, or whose task metric fell further below the baseline's than
`accuracy_budget`, returns None: Optuna records a failed trial and the search goes on,
the basic sweeper ignores it.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ptflow.errors import Problem


def problems(objective: str | None, budget: float | None, pipeline: tuple[str, ...],
             cfg: Mapping[str, Any], optimising: bool = False) -> list[Problem]:
    """Can this pipeline judge the budget, and — for a sweeper that optimises the objective
    (`optimising`) — produce the objective? A plain run or grid sweep need not."""
    found = []
    stage = (objective or "").split(".", 1)[0]
    if optimising and not objective:
        found.append(Problem("objective", None, "the metric the sweeper optimises, e.g. benchmark.speedup_p50"))
    elif optimising and stage not in pipeline:
        found.append(Problem("objective", objective, "a metric of a stage in the pipeline, e.g. "
                             "benchmark.speedup_p50", f"'{stage}' is not in the pipeline {list(pipeline)}; "
                             "add it, or set objective=null"))
    if budget is not None:
        metric = (cfg.get("data") or {}).get("metric")
        fidelity = (cfg.get("benchmark") or {}).get("fidelity", True)
        if budget < 0:
            found.append(Problem("accuracy_budget", budget, "the largest allowed drop of the task metric, >= 0"))
        elif "benchmark" not in pipeline or not metric or not fidelity:
            found.append(Problem("accuracy_budget", budget, "a pipeline that measures the task metric's "
                                 "change: benchmark in the pipeline, benchmark.fidelity=true and a data.metric",
                                 "or set accuracy_budget=null"))
    return found


def value(metrics: Mapping[str, float], objective: str | None, budget: float | None,
          task_metric: str | None, higher_is_better: bool) -> tuple[float | None, str | None]:
    """(the objective, or None and why not) for a run that finished with `metrics`."""
    if not objective:
        return None, None
    if objective not in metrics:   # e.g. a pipeline without benchmark: nothing to hand a sweeper
        return None, None
    if budget is not None and task_metric:
        delta = metrics.get(f"benchmark.{task_metric}_delta")
        drop = None if delta is None else (-delta if higher_is_better else delta)
        if drop is not None and drop > budget:
            return None, (f"{task_metric} dropped by {drop:.4f}, more than accuracy_budget={budget:g}: "
                          "this run is no candidate (a failed trial for a sweeper)")
    return float(metrics[objective]), None
