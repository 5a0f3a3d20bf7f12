"""What a run hands back to a Hydra sweeper: one metric, or nothing when the run does not count.

`objective` names a ptflow metric: `benchmark.speedup_p50` (higher is better: the sweeper's
`direction: maximize`) or e.g. `benchmark.candidate.p50_ms` (`direction: minimize`). A run
that did not finish, that the accuracy gate rejected (tag accepted=false, see
ptflow.decide.accuracy), or whose timings are invalid (tag benchmark.stability=invalid), returns None: Optuna records a failed trial and the search goes on, the
basic sweeper ignores it.
"""
from __future__ import annotations

from collections.abc import Mapping

from ptflow.core.errors import Problem


def problems(objective: str | None, pipeline: tuple[str, ...], optimising: bool = False) -> list[Problem]:
    """For a sweeper that optimises the objective (`optimising`): can this pipeline produce
    it? A plain run or grid sweep need not."""
    stage = (objective or "").split(".", 1)[0]
    if optimising and not objective:
        return [Problem("objective", None, "the metric the sweeper optimises, e.g. benchmark.speedup_p50")]
    if optimising and stage not in pipeline:
        return [Problem("objective", objective, "a metric of a stage in the pipeline, e.g. "
                        "benchmark.speedup_p50", f"'{stage}' is not in the pipeline {list(pipeline)}; "
                        "add it, or set objective=null")]
    return []


def value(metrics: Mapping[str, float], objective: str | None,
          tags: Mapping[str, str]) -> tuple[float | None, str | None]:
    """(the objective, or None and why not) for a run that finished with `metrics`."""
    if not objective:
        return None, None
    if objective not in metrics:   # e.g. a pipeline without benchmark: nothing to hand a sweeper
        return None, None
    if tags.get("benchmark.stability") == "invalid" and objective.startswith("benchmark."):
        return None, ("the timings of this run are invalid (benchmark.stability=invalid: IQR/median above "
                      "benchmark.invalid_dispersion): it returns no objective (a failed trial for a sweeper)")
    if tags.get("accepted") == "false":
        return None, ("the accuracy gate rejected this recipe (accepted=false): it returns no objective "
                      "(a failed trial for a sweeper)")
    return float(metrics[objective]), None
