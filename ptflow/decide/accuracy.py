"""The accuracy gate: is a recipe's task-metric change within what the user accepts?

``accuracy.max_drop`` is the largest allowed drop, ``absolute`` (in the metric's units:
0.01 = one point of top-1) or ``relative`` (a fraction of the baseline's value). The
direction comes from the metric (top1_accuracy: higher is better) unless
``accuracy.higher_is_better`` says otherwise. Every judged run gets the MLflow tag
``accepted=true|false``; with ``accuracy.enforce=true`` a rejected run ends FAILED before
any later stage (no export is written).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

from ptflow.core.errors import ConfigError


class DropMode(str, enum.Enum):
    ABSOLUTE = "absolute"     # baseline - candidate, in the metric's units
    RELATIVE = "relative"     # (baseline - candidate) / |baseline|


@dataclass(frozen=True)
class AccuracyConfig:
    max_drop: float | None = 0.01        # null: nothing is rejected (runs still log the delta)
    mode: DropMode = DropMode.ABSOLUTE
    higher_is_better: bool | None = None  # null: the task metric's own direction
    enforce: bool = False                 # true: a rejected recipe fails the run; nothing is exported

    def __post_init__(self) -> None:
        if self.max_drop is not None and not self.max_drop >= 0:   # also rejects NaN
            raise ConfigError.single("max_drop", self.max_drop, "a drop >= 0 (e.g. 0.01) or null (no gate)")
        if self.enforce and self.max_drop is None:
            raise ConfigError.single("enforce", True, "false while accuracy.max_drop is null",
                                     "set accuracy.max_drop, e.g. accuracy.max_drop=0.01")


@dataclass(frozen=True)
class Verdict:
    metric: str
    baseline: float
    candidate: float
    drop: float            # in the config's mode (positive = worse)
    accepted: bool
    config: AccuracyConfig

    def metrics(self) -> dict[str, float]:
        found = {"accuracy.drop": self.drop, "accuracy.accepted": 1.0 if self.accepted else 0.0}
        if self.config.max_drop is not None:
            found["accuracy.max_drop"] = self.config.max_drop
        return found

    def explain(self) -> str:
        unit = " of the baseline" if self.config.mode is DropMode.RELATIVE else ""
        limit = "no limit" if self.config.max_drop is None else \
            f"accuracy.max_drop={self.config.max_drop:g} ({self.config.mode.value})"
        shown = f"{self.drop:.2%}" if self.config.mode is DropMode.RELATIVE else f"{self.drop:.4f}"
        verb = "within" if self.accepted else "more than"
        return (f"{self.metric} went from {self.baseline:.4f} (baseline) to {self.candidate:.4f}: "
                f"a drop of {shown}{unit}, {verb} {limit}")


def judge(config: AccuracyConfig, metric: str, baseline: float, candidate: float,
          metric_higher_is_better: bool) -> Verdict:
    higher = metric_higher_is_better if config.higher_is_better is None else config.higher_is_better
    drop = baseline - candidate if higher else candidate - baseline
    if config.mode is DropMode.RELATIVE:
        drop = drop / abs(baseline) if baseline else (0.0 if drop == 0 else float("inf"))
    accepted = config.max_drop is None or drop <= config.max_drop + 1e-12
    return Verdict(metric, baseline, candidate, drop, accepted, config)
