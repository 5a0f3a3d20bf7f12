"""What ptflow-compare knows it does not know: ties between recipes, the pick among tied ones,
and marks on measurements that are not like the others.

A speedup p50 is a point estimate with a 95% interval (metrics ``benchmark/speedup_ci_low`` and
``_high``). When two recipes' intervals share a value, the measurement does not tell them
apart, and ranking one above the other on the point estimate alone would be reading noise.
The rules, pure functions of ``compare.Row``s (so they are tested without a store):

* **tied**: two ranked rows of the same stability block (stable with stable, unstable with
  unstable: an unstable number never competes with a stable one), each with an interval, whose
  intervals overlap (closed: touching counts). A row without an interval (a run from before
  they were logged) is never tied: it ranks by its point estimate, and the table says "no CI".
* **groups** (the table): walking the ranking, the fastest row not yet in a group leads one;
  every later row of its block, not yet grouped, whose interval overlaps the leader's joins it.
  Rows keep their order by point estimate; each member shows ``#<leader's rank>``.
* **the pick** under a budget: the fastest qualifying row and every other qualifying row tied
  with it are the contenders; the pick is the contender with the smaller accuracy drop, then
  the smaller size (MB), then the higher point estimate. With ``strict`` (``--strict``) there
  are no ties: the pick is the fastest qualifying row.
* **marks**: ``†`` a ranked row measured in fewer fresh processes (metric
  ``benchmark/repeats``, 1 when not logged) than the most any ranked row has: its interval
  misses the run-to-run noise the others' include; ``‡`` a ranked row measured on another host
  (tag ``hostname``) than the one most ranked rows were measured on.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import NamedTuple, Protocol


class Row(Protocol):
    """What these rules read of a ``compare.Row`` (a protocol: compare imports this module)."""

    run_id: str
    name: str
    speedup: float | None
    speedup_ci_low: float | None
    speedup_ci_high: float | None
    stability: str | None
    drop: float | None
    size_mb: float | None
    repeats: int | None
    host: str | None


REPEAT_MARK, HOST_MARK = "†", "‡"
NO_CI = "no CI"
SAME_DIGITS = 9      # drops equal to 9 significant digits are equal (a relative drop × baseline is float noise)


def interval(row: Row) -> tuple[float, float] | None:
    """The row's 95% speedup interval, None when it logged none."""
    if row.speedup_ci_low is None or row.speedup_ci_high is None:
        return None
    return row.speedup_ci_low, row.speedup_ci_high


def overlaps(a: Row, b: Row) -> bool:
    """Both rows have an interval and the two share at least one value."""
    first, second = interval(a), interval(b)
    return first is not None and second is not None and first[0] <= second[1] and second[0] <= first[1]


def tied(a: Row, b: Row) -> bool:
    """Two different rows the measurement does not tell apart (the module's rule)."""
    same_block = (a.stability == "unstable") == (b.stability == "unstable")
    return a.run_id != b.run_id and same_block and overlaps(a, b)


def tie_groups(ranked: Sequence[Row]) -> dict[str, int]:
    """run id -> the rank (1-based position in `ranked`) of its group's leader, for every row in a
    group of two or more. `ranked` is the ranking order (``compare.rank``, ranked rows only)."""
    leader_of: dict[str, int] = {}
    for position, lead in enumerate(ranked, start=1):
        if lead.run_id in leader_of:
            continue
        members = [row for row in ranked[position:] if row.run_id not in leader_of and tied(lead, row)]
        for row in (lead, *members) if members else ():
            leader_of[row.run_id] = position
    return leader_of


def tie_cell(row: Row, leader_of: dict[str, int], strict: bool) -> str:
    """The table's `tied` cell of a ranked row: '#<leader>', 'no CI', or empty."""
    if strict:
        return ""
    if row.run_id in leader_of:
        return f"#{leader_of[row.run_id]}"
    return NO_CI if interval(row) is None else ""


def tie_legend(ranked: Sequence[Row], leader_of: dict[str, int], strict: bool) -> list[str]:
    """The lines under the table that explain its `tied` column (only those it uses)."""
    if strict:
        return ["--strict: ranked by speedup p50 alone; intervals not compared, no ties"]
    lines = ["tied #N: its 95% speedup interval overlaps that of rank N, the fastest of its group: the "
             "measurement does not tell them apart"] if leader_of else []
    if any(interval(row) is None for row in ranked):
        lines.append(f"{NO_CI}: no speedup interval logged (an older run): never tied, ranked by its point estimate")
    return lines


# ---- the pick among tied recipes ------------------------------------------------------------------

def preference(row: Row) -> tuple[float, float, float, str]:
    """The pick's order among contenders: smaller drop, smaller size, higher point estimate
    (then the name, so the pick never depends on the store's order)."""
    drop = math.inf if row.drop is None else float(f"{row.drop:.{SAME_DIGITS}g}")
    return (drop, math.inf if row.size_mb is None else row.size_mb, -(row.speedup or 0.0), row.name)


def contenders(qualifying: Sequence[Row], strict: bool = False) -> list[Row]:
    """The fastest qualifying row (`qualifying` is in ranking order, not empty) and every other
    qualifying row tied with it; only the fastest with `strict`."""
    fastest = qualifying[0]
    return [fastest] if strict else [fastest, *(row for row in qualifying[1:] if tied(fastest, row))]


def choose(rows: Sequence[Row]) -> Row:
    """The contender the pick rule prefers."""
    return min(rows, key=preference)


def why(picked: Row, rows: Sequence[Row], strict: bool = False) -> str:
    """Why `picked` is the pick among contenders `rows` (``contenders``), in one line."""
    if strict:
        return "the fastest qualifying recipe by speedup p50 (--strict: intervals not compared)"
    own = interval(picked)
    others = [row for row in rows if row.run_id != picked.run_id]
    if not others:
        return ("the fastest qualifying recipe; it logged no speedup interval (no CI), so no tie is judged"
                if own is None else f"the fastest qualifying recipe; no other qualifying recipe's interval "
                                    f"overlaps its [{own[0]:.2f}, {own[1]:.2f}]")
    listed = ", ".join(f"{row.name} {_speedup(row)}" for row in others)
    return f"{_speedup(picked)} is tied on speedup with {listed} (intervals overlap); " + "; ".join(
        _deciders(picked, others))


def _speedup(row: Row) -> str:
    span = interval(row)
    return f"{row.speedup:.2f}x" + ("" if span is None else f" [{span[0]:.2f}, {span[1]:.2f}]")


def _deciders(picked: Row, others: Sequence[Row]) -> list[str]:
    """For each rule that set `picked` before some of `others`, one clause naming them."""
    mine = preference(picked)
    beaten: dict[int, list[Row]] = {}
    for row in others:
        theirs = preference(row)
        rule = next((i for i in range(len(mine)) if mine[i] != theirs[i]), len(mine) - 1)   # same name too: by name
        beaten.setdefault(rule, []).append(row)
    metric = picked.metric or "metric"
    size = "no size logged" if picked.size_mb is None else f"{picked.size_mb:.2f} MB"
    clauses = {
        0: lambda rs: f"smaller {metric} drop ({picked.drop:.6g} vs " + ", ".join(
            f"{r.drop:.6g} for {r.name}" for r in rs) + ")",
        1: lambda rs: f"same drop, smaller size ({size} vs " + ", ".join(
            f"{'no size logged' if r.size_mb is None else f'{r.size_mb:.2f} MB'} for {r.name}" for r in rs) + ")",
        2: lambda rs: f"same drop and size, higher point estimate ({picked.speedup:.2f}x vs " + ", ".join(
            f"{r.speedup:.2f}x for {r.name}" for r in rs) + ")",
        3: lambda rs: "same drop, size and point estimate: first by name before " + ", ".join(r.name for r in rs),
    }
    return [clauses[rule](beaten[rule]) for rule in sorted(beaten)]


# ---- marks: measured unlike the others ----------------------------------------------------------

class Marks(NamedTuple):
    """The marks of each marked row (run id -> '†', '‡' or '†‡'), their CSV words, and the legend."""
    by_run: dict[str, str]
    words: dict[str, str]
    legend: list[str]


def repeats(row: Row) -> int:
    """Fresh processes the row's interval covers: 1 for a run from before repeats were logged."""
    return max(1, int(row.repeats)) if row.repeats is not None else 1


def measurement_marks(ranked: Sequence[Row]) -> Marks:
    """† and ‡ for the ranked rows (in ranking order): fewer repeats than the most any has; another
    host than the most common one (on equal counts, the fastest row's host)."""
    most = max((repeats(row) for row in ranked), default=1)
    hosts = Counter(row.host for row in ranked if row.host)
    home = hosts.most_common(1)[0][0] if hosts else None
    by_run: dict[str, str] = {}
    words: dict[str, str] = {}
    for row in ranked:
        fewer, away = repeats(row) < most, bool(home and row.host and row.host != home)
        if fewer or away:
            by_run[row.run_id] = REPEAT_MARK * fewer + HOST_MARK * away
            words[row.run_id] = " ".join(w for w, on in (("fewer_repeats", fewer), ("other_host", away)) if on)
    counts = sorted({repeats(row) for row in ranked if repeats(row) < most})
    legend = [f"{REPEAT_MARK} {n} repeat{'s' * (n > 1)} (others {most}): its interval covers "
              f"{'one process' if n == 1 else f'{n} processes'} only, so it leaves out run-to-run noise the "
              "others' include" for n in counts]
    away_hosts = sorted({row.host for row in ranked if row.host and home and row.host != home})
    others = "others" if len(hosts) == 2 else "most"
    legend += [f"{HOST_MARK} measured on host {host} ({others} on {home}): another machine's timings"
               for host in away_hosts]
    return Marks(by_run, words, legend)
