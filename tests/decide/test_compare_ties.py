"""ptflow-compare knows what it does not know: recipes whose 95% speedup intervals overlap are
tied, the pick among tied ones goes by accuracy drop, then size, then point estimate (unless
--strict), and runs measured with fewer repeats or on another host are marked — all on Rows
built here, no store."""
from __future__ import annotations

import csv
import io
import sys
from types import SimpleNamespace

import pytest

from ptflow.decide import compare as cmp
from ptflow.decide import ties
from ptflow.review.compare_cli import _parser, format_table, picked_lines, terminal_width

BUDGET = cmp.Budget.parse("0.01")


def row(name, speedup, ci=None, drop=0.0, size=None, stability="stable", repeats=3, host="gpu-a", **more):
    """A ranked row; `ci` = (low, high) or None (a run from before intervals were logged)."""
    low, high = ci if ci else (None, None)
    return cmp.Row(run_id=f"{name:0<32}"[:32], name=name, status="FINISHED", speedup=speedup, speedup_ci_low=low,
                   speedup_ci_high=high, p50_ms=1.0 / speedup, delta=-drop, drop=drop, metric="top1_accuracy",
                   baseline_metric=0.9, stability=stability, size_mb=size, repeats=repeats, host=host, **more)


def groups(rows):
    return {r.name: n for r_id, n in ties.tie_groups([r for _, r in cmp.rank(rows)]).items()
            for r in rows if r.run_id == r_id}


# ---- ties ---------------------------------------------------------------------------------------

def test_overlapping_intervals_are_tied_with_the_fastest_and_disjoint_ones_are_not():
    rows = [row("a", 2.0, (1.9, 2.1)), row("b", 1.95, (1.85, 2.0)), row("c", 1.5, (1.4, 1.6)),
            row("d", 1.45, (1.3, 1.4))]          # d touches c's low end: closed intervals, tied
    assert groups(rows) == {"a": 1, "b": 1, "c": 3, "d": 3}
    assert groups([row("a", 2.0, (1.9, 2.1)), row("b", 1.5, (1.4, 1.6))]) == {}


def test_a_group_is_what_overlaps_its_leader_not_a_chain():
    # b overlaps a and c, but c does not overlap a: c is not tied with #1 (and b is taken)
    rows = [row("a", 2.0, (1.9, 2.1)), row("b", 1.8, (1.6, 1.95)), row("c", 1.6, (1.5, 1.7))]
    assert groups(rows) == {"a": 1, "b": 1}


def test_stable_and_unstable_runs_are_never_tied_and_rows_without_a_ci_never_are():
    rows = [row("s", 2.0, (1.9, 2.1)), row("u", 2.05, (1.5, 2.5), stability="unstable"), row("old", 2.0)]
    assert groups(rows) == {}
    shown = cmp.table(rows)
    tied = {r.name: line[3] for (_, r), line in zip(shown.ranked, shown.cells)}
    assert tied == {"s": "", "old": "no CI", "u": ""}
    assert any(note.startswith("no CI:") for note in shown.notes)


def test_the_table_shows_ties_in_terminal_markdown_and_csv():
    rows = [row("a", 2.0, (1.9, 2.1)), row("b", 1.95, (1.85, 2.0)), row("c", 1.2, (1.1, 1.3))]
    text = format_table(rows)
    assert "tied" in text.splitlines()[0] and "tied #N: its 95% speedup interval overlaps" in text
    assert [line.split()[5] for line in text.splitlines()[2:4]] == ["#1", "#1"]
    assert "| 2 | b | 1.95x [1.85, 2.00] | #1 |" in cmp._markdown(rows)
    table = list(csv.DictReader(io.StringIO(cmp._csv(rows))))
    assert [t["tied_with"] for t in table] == ["1", "1", ""]


# ---- the pick -----------------------------------------------------------------------------------

def test_the_pick_among_tied_prefers_the_smaller_drop_then_the_smaller_file():
    rows = [row("fast", 2.0, (1.9, 2.1), drop=0.004, size=2.0), row("exact", 1.95, (1.85, 2.0), drop=0.001, size=4.5),
            row("exact-small", 1.92, (1.8, 1.99), drop=0.001, size=2.4), row("slow", 1.2, (1.1, 1.3), drop=0.0)]
    choice = cmp.pick(rows, BUDGET)
    assert choice.row.name == "exact-small"
    assert "tied on speedup with fast 2.00x [1.90, 2.10], exact 1.95x [1.85, 2.00] (intervals overlap)" in choice.reason
    assert "smaller top1_accuracy drop (0.001 vs 0.004 for fast)" in choice.reason
    assert "same drop, smaller size (2.40 MB vs 4.50 MB for exact)" in choice.reason
    # equal drop and size: the higher point estimate; a slower untied run never competes
    same = [row("x", 2.0, (1.9, 2.1), size=3.0), row("y", 1.98, (1.9, 2.1), size=3.0), row("z", 1.0, (0.9, 1.1))]
    assert cmp.pick(same, BUDGET).row.name == "x"
    assert "higher point estimate (2.00x vs 1.98x for y)" in cmp.pick(same, BUDGET).reason


def test_the_pick_looks_only_at_runs_tied_with_the_fastest_qualifying_one():
    # 'over' is fastest but over budget; 'fast' leads the qualifying ones; 'tied' overlaps it, 'apart' does not
    rows = [row("over", 3.0, (2.9, 3.1), drop=0.5), row("fast", 2.0, (1.9, 2.1), drop=0.008),
            row("tied", 1.9, (1.85, 1.95), drop=0.002), row("apart", 1.5, (1.4, 1.6), drop=0.0)]
    choice = cmp.pick(rows, BUDGET)
    assert choice.row.name == "tied" and "apart" not in choice.reason
    assert cmp.pick(rows[:2] + rows[3:], BUDGET).reason.startswith("the fastest qualifying recipe; no other")
    assert "no CI" in cmp.pick([row("old", 2.0), row("older", 1.99)], BUDGET).reason


def test_strict_ranks_by_the_point_estimate_alone():
    rows = [row("fast", 2.0, (1.9, 2.1), drop=0.004), row("exact", 1.95, (1.85, 2.0), drop=0.0)]
    assert cmp.pick(rows, BUDGET).row.name == "exact"
    strict = cmp.pick(rows, BUDGET, strict=True)
    assert strict.row.name == "fast" and "--strict" in strict.reason
    shown = cmp.table(rows, strict=True)
    assert [line[3] for line in shown.cells] == ["", ""] and shown.leader_of == {}
    assert "--strict: ranked by speedup p50 alone" in format_table(rows, strict=True)
    assert list(csv.DictReader(io.StringIO(cmp._csv(rows, strict=True))))[0]["tied_with"] == ""
    assert "--strict" in _parser().format_help() and _parser().parse_args(["--strict"]).strict


def test_the_pick_is_printed_with_its_reason():
    rows = [row("fast", 2.0, (1.9, 2.1), drop=0.004), row("exact", 1.95, (1.85, 2.0), drop=0.0)]

    def missing(*_):
        raise OSError("no artifact")

    client = SimpleNamespace(tracking_uri="sqlite:///x.db", download_artifacts=missing)
    lines = picked_lines(client, cmp.pick(rows, BUDGET))
    assert lines[0].endswith(": exact") and lines[1].startswith("  why: 1.95x [1.85, 2.00] is tied on speedup")


# ---- the terminal ---------------------------------------------------------------------------------

def test_the_table_fits_the_terminal_and_a_pipe_gets_every_column(monkeypatch):
    rows = [row("digits_mlp-int8_static-inductor", 5.77, (5.5, 6.0), drop=0.0022),
            row("digits_mlp-int8_dynamic-eager", 1.31, (1.2, 1.4), drop=0.0022, stability="unstable"),
            row("digits_mlp-none-eager", 1.02, (0.98, 1.05), drop=0.0, repeats=1)]
    for width in (80, 100):    # the narrow layout: rank, recipe, speedup [CI], Δ, state
        text = format_table(rows, width=width)
        assert max(len(line) for line in text.splitlines()) <= width, text
        assert text.splitlines()[0].split() == ["rank", "recipe", "speedup", "p50", "[CI]", "metric", "Δ", "state"]
        assert "5.77x [5.50, 6.00]" in text and "not shown: tied, p50 ms, p99 ms" in text.replace("\n    ", " ")
    wide = format_table(rows, width=140)
    assert max(len(line) for line in wide.splitlines()) <= 140 and "p50 ms" in wide.splitlines()[0]
    full = format_table(rows)          # not a terminal: every column, as before
    assert all(name in full.splitlines()[0] for name in cmp.COLUMNS) and "not shown" not in full
    monkeypatch.setenv("COLUMNS", "90")
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert terminal_width() == 90      # a terminal, its width
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False)
    assert terminal_width() is None    # a pipe or a file: every column, whatever COLUMNS says


# ---- marks --------------------------------------------------------------------------------------

def test_fewer_repeats_and_another_host_are_marked_with_a_legend():
    rows = [row("a", 2.0, (1.9, 2.1)), row("one", 1.5, (1.45, 1.55), repeats=1),
            row("away", 1.2, (1.1, 1.3), host="laptop"), row("old", 1.1, repeats=None)]
    shown = cmp.table(rows)
    speedups = {r.name: line[2] for (_, r), line in zip(shown.ranked, shown.cells)}
    assert speedups == {"a": "2.00x [1.90, 2.10]", "one": "1.50x [1.45, 1.55]†", "away": "1.20x [1.10, 1.30]‡",
                        "old": "1.10x†"}   # no benchmark/repeats logged: one process
    text = format_table(rows)
    assert "† 1 repeat (others 3): its interval covers one process only" in text
    assert "‡ measured on host laptop (others on gpu-a)" in text
    assert "† 1 repeat (others 3)" in cmp._markdown(rows)
    marks = {t["recipe"]: t["marks"] for t in csv.DictReader(io.StringIO(cmp._csv(rows)))}
    assert marks == {"a": "", "one": "fewer_repeats", "away": "other_host", "old": "fewer_repeats"}


def test_nothing_is_marked_when_every_run_was_measured_alike():
    rows = [row("a", 2.0, (1.9, 2.1), repeats=None, host=None), row("b", 1.5, (1.4, 1.6), repeats=None, host=None)]
    assert cmp.table(rows).marks.by_run == {} and "†" not in format_table(rows)


def test_repeats_host_and_ci_scope_are_read_from_the_run():
    run = SimpleNamespace(info=SimpleNamespace(run_id="r" * 32, run_name="digits_mlp-bf16-eager", status="FINISHED",
                                               start_time=0),
                          data=SimpleNamespace(tags={"hostname": "gpu-a", "benchmark.ci_scope": "3 processes"},
                                               params={}, metrics={"benchmark/speedup_p50": 1.5,
                                                                   "benchmark/repeats": 3.0}))
    got = cmp.row_from_run(run)
    assert (got.repeats, got.host, got.ci_scope) == (3, "gpu-a", "3 processes")
    run.data.tags, run.data.metrics = {}, {"benchmark/speedup_p50": 1.5}
    assert ties.repeats(cmp.row_from_run(run)) == 1


@pytest.mark.parametrize("a, b, expected", [((1.0, 2.0), (2.0, 3.0), True), ((1.0, 2.0), (2.01, 3.0), False),
                                            ((1.0, 3.0), (1.5, 2.0), True), (None, (1.0, 2.0), False)])
def test_overlap_is_of_closed_intervals(a, b, expected):
    assert ties.overlaps(row("a", 1.5, a), row("b", 1.5, b)) is expected
