"""The accuracy budget a pick is made under: ``ptflow-compare --max-accuracy-drop X``, a sweep's
``compare.max_accuracy_drop``, or else the ``accuracy.max_drop`` gate its jobs were judged by.

A budget is a drop in the metric's units (``0.01``) or a fraction of the baseline's metric
(``1%``). Light on imports: the plan checks ``compare.max_accuracy_drop`` with it."""
from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

DROP_SLACK = 1e-9                        # a drop equal to the budget, up to float noise, qualifies
NUMBER = re.compile(r"[0-9]*\.?[0-9]+([eE][-+]?[0-9]+)?")
UNSET = ("", "null", "None", "none")     # how a null param reads back from MLflow


class Row(Protocol):
    baseline_metric: float | None
    drop: float | None

    @property
    def unranked_reason(self) -> str | None: ...


@dataclass(frozen=True)
class Budget:
    """`value` in metric units, or a fraction of the baseline's metric when `relative`
    ('1%' -> value 0.01, relative)."""

    value: float
    relative: bool = False
    text: str = ""

    @classmethod
    def parse(cls, text: str, what: str = "--max-accuracy-drop") -> Budget:
        raw = str(text).strip()
        relative = raw.endswith("%")
        number = raw[:-1].strip() if relative else raw
        value = float(number) if NUMBER.fullmatch(number) else -1.0
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{what}: expected a number >= 0 in the metric's units (0.01) or a "
                             f"percentage of the baseline's metric (1%), found {text!r}")
        return cls(value / 100 if relative else value, relative, raw)

    def limit(self, row: Row) -> float | None:
        """The largest drop this row may have; None when relative and the baseline is unknown."""
        if self.relative:
            return None if row.baseline_metric is None else self.value * abs(row.baseline_metric)
        return self.value

    def min_delta(self, rows: Sequence[Row]) -> float | None:
        """The budget as the lowest delta allowed (the plot's line), from the first row with a limit."""
        limit = next((x for x in map(self.limit, rows) if x is not None), None)
        return None if limit is None else -limit

    def qualifies(self, row: Row) -> bool:
        return row.unranked_reason is None and self.within(row)

    def within(self, row: Row) -> bool:
        """Its accuracy drop is within the budget (whether or not its timings count)."""
        limit = self.limit(row)
        return row.drop is not None and limit is not None and row.drop <= limit + DROP_SLACK * max(1.0, abs(limit))


@dataclass(frozen=True)
class CompareConfig:
    """`compare.*`: what a sweep's parent run picks under when the sweep ends."""

    max_accuracy_drop: float | str | None = None   # null: the jobs' accuracy.max_drop, in their accuracy.mode

    def __post_init__(self) -> None:
        from ptflow.core.errors import ConfigError, Problem

        if self.max_accuracy_drop is None:
            return
        try:
            Budget.parse(str(self.max_accuracy_drop), "compare.max_accuracy_drop")
        except ValueError:
            raise ConfigError([Problem("max_accuracy_drop", self.max_accuracy_drop,
                                       "a drop in the metric's units (0.01) or a percentage of the baseline's "
                                       "metric ('1%'), or null", "null picks under accuracy.max_drop")]) from None


def from_run(params: Mapping[str, str], metrics: Mapping[str, float]) -> tuple[Budget, str] | None:
    """The budget a finished job's record implies, and where it came from: its param
    compare.max_accuracy_drop, else its accuracy gate (accuracy.max_drop, relative when the job
    judged relatively: metric accuracy/relative). None: neither is set."""
    given = params.get("compare.max_accuracy_drop", "")
    if given not in UNSET:
        try:   # a store's params are not checked by the plan: a malformed one is no budget
            return Budget.parse(given.strip("'\""), "compare.max_accuracy_drop"), "compare.max_accuracy_drop"
        except ValueError:
            return None
    gate = params.get("accuracy.max_drop", "")
    if gate in UNSET or not NUMBER.fullmatch(gate.strip()):
        return None
    value = float(gate)
    relative = metrics["accuracy/relative"] == 1 if "accuracy/relative" in metrics else \
        params.get("accuracy.mode") == "relative"
    return Budget(value, relative, f"{value * 100:g}%" if relative else f"{value:g}"), "accuracy.max_drop"


def of_runs(runs: Sequence[Any]) -> tuple[Budget, str] | None:
    """The budget of a sweep from its job runs (MLflow Run entities): the first finished job's
    (jobs of one sweep share it unless the sweep varies it)."""
    for run in sorted(runs, key=lambda r: (r.info.status != "FINISHED", r.info.start_time or 0)):
        found = from_run(dict(run.data.params), dict(run.data.metrics))
        if found is not None:
            return found
    return None
