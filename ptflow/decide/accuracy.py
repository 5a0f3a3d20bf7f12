"""The accuracy gate: is a recipe's task-metric change within what the user accepts?

``accuracy.max_drop`` is the largest allowed change for the worse, ``absolute`` (in the
metric's units: 0.01 = one point of top-1) or ``relative`` (a fraction of the baseline's
value: 0.01 = 1%). The direction comes from the metric (top1_accuracy: higher is better;
mse: lower is better) unless ``accuracy.higher_is_better`` says otherwise. ``accuracy.mode``
null (the default) is relative for a lower-is-better metric, whose units are the targets'
(an error of 0.01 means nothing on its own), and absolute for a higher-is-better one. Every
judged run gets the MLflow tag ``accepted=true|false``; with ``accuracy.enforce=true`` a
rejected run ends FAILED before any later stage (no export is written).
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from ptflow.core.errors import ConfigError


class DropMode(str, enum.Enum):
    ABSOLUTE = "absolute"     # baseline - candidate, in the metric's units
    RELATIVE = "relative"     # (baseline - candidate) / |baseline|


@dataclass(frozen=True)
class AccuracyConfig:
    max_drop: float | None = 0.01        # null: nothing is rejected (runs still log the delta)
    mode: DropMode | None = None         # null: relative for a lower-is-better metric, else absolute
    higher_is_better: bool | None = None  # null: the task metric's own direction
    enforce: bool = False                 # true: a rejected recipe fails the run; nothing is exported

    def __post_init__(self) -> None:
        if self.max_drop is not None and not self.max_drop >= 0:   # also rejects NaN
            raise ConfigError.single("max_drop", self.max_drop, "a drop >= 0 (e.g. 0.01) or null (no gate)")
        if self.enforce and self.max_drop is None:
            raise ConfigError.single("enforce", True, "false while accuracy.max_drop is null",
                                     "set accuracy.max_drop, e.g. accuracy.max_drop=0.01")

    def direction(self, metric_higher_is_better: bool) -> bool:
        """Whether higher is better: accuracy.higher_is_better, else the metric's own direction."""
        return metric_higher_is_better if self.higher_is_better is None else self.higher_is_better

    def drop_mode(self, higher_is_better: bool) -> DropMode:
        """accuracy.mode, else relative for a lower-is-better metric and absolute otherwise."""
        if self.mode is not None:
            return self.mode
        return DropMode.ABSOLUTE if higher_is_better else DropMode.RELATIVE


def describe(config: AccuracyConfig, metric: str, metric_higher_is_better: bool) -> str:
    """The gate in words, with the mode that applies and why: the plan's line, e.g.
    'accuracy gate: mse may rise at most 1% of the baseline (relative: mse is lower-is-better) ...'."""
    higher = config.direction(metric_higher_is_better)
    worse = "drop" if higher else "rise"
    if config.max_drop is None:
        return f"accuracy gate: none (accuracy.max_drop=null): the change of {metric} is logged, nothing is rejected"
    mode = config.drop_mode(higher)
    if config.mode is not None:
        why = f"accuracy.mode={mode.value}"
    elif config.higher_is_better is not None:
        why = f"accuracy.higher_is_better={'true' if higher else 'false'}"
    else:
        why = f"{metric} is {'higher' if higher else 'lower'}-is-better"
    limit = f"{config.max_drop * 100:g}% of the baseline" if mode is DropMode.RELATIVE else \
        f"{config.max_drop:g} in its units"
    then = "fails the run and exports nothing (accuracy.enforce=true)" if config.enforce else \
        "is tagged accepted=false"
    return f"accuracy gate: {metric} may {worse} at most {limit} ({mode.value}: {why}); a recipe past it {then}"


@dataclass(frozen=True)
class Verdict:
    metric: str
    baseline: float
    candidate: float
    drop: float            # in `mode` (positive = worse)
    accepted: bool
    config: AccuracyConfig
    mode: DropMode         # the mode judged by: accuracy.mode, or the default for the metric's direction
    higher_is_better: bool = True

    def metrics(self) -> dict[str, float]:
        found = {"accuracy.drop": self.drop, "accuracy.accepted": 1.0 if self.accepted else 0.0,
                 "accuracy.relative": 1.0 if self.mode is DropMode.RELATIVE else 0.0}
        if self.config.max_drop is not None:
            found["accuracy.max_drop"] = self.config.max_drop
        return found

    def explain(self) -> str:
        relative = self.mode is DropMode.RELATIVE
        unit = " of the baseline" if relative else ""
        limit = "no limit" if self.config.max_drop is None else \
            f"accuracy.max_drop={self.config.max_drop:g} ({self.mode.value})"
        shown = f"{self.drop:.2%}" if relative else f"{self.drop:.4f}"
        worse = "drop" if self.higher_is_better else "rise"
        verb = "within" if self.accepted else "more than"
        return (f"{self.metric} went from {self.baseline:.4f} (baseline) to {self.candidate:.4f}: "
                f"a {worse} of {shown}{unit}, {verb} {limit}")


def judge(config: AccuracyConfig, metric: str, baseline: float, candidate: float,
          metric_higher_is_better: bool) -> Verdict:
    """The verdict on `candidate` vs `baseline`: the drop (positive = worse) in the mode that
    applies (accuracy.mode, or by default relative for a lower-is-better metric), accepted
    when it is at most accuracy.max_drop. A NaN candidate is never accepted under a limit."""
    higher = config.direction(metric_higher_is_better)
    mode = config.drop_mode(higher)
    drop = baseline - candidate if higher else candidate - baseline
    if mode is DropMode.RELATIVE:
        drop = _relative(drop, baseline)
    accepted = config.max_drop is None or drop <= config.max_drop + 1e-12
    return Verdict(metric, baseline, candidate, drop, accepted, config, mode, higher)


def _relative(drop: float, baseline: float) -> float:
    """`drop` as a fraction of |baseline|; from a baseline of 0 any loss is infinite (any gain -inf)."""
    if baseline:
        return drop / abs(baseline)
    return drop if drop == 0 or math.isnan(drop) else math.copysign(math.inf, drop)
