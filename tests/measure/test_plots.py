"""ptflow.measure.plots: PNGs of latency samples and the raw samples as CSV."""
from __future__ import annotations

import csv
import random
import struct
import subprocess
import sys

import pytest

from ptflow.measure import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_size(data: bytes) -> tuple[int, int]:
    """Width and height from the IHDR chunk, checking the PNG signature first."""
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _samples(seed: int = 0) -> dict[str, list[float]]:
    rng = random.Random(seed)
    return {"baseline": [rng.gauss(3.0, 0.2) for _ in range(200)] + [40.0],   # one stall
            "candidate": [rng.gauss(0.6, 0.05) for _ in range(200)]}


def _rows() -> list[dict]:
    rows = []
    for size in (1, 4, 16, 64):
        for role, scale in (("baseline", 3.0), ("candidate", 1.0)):
            p50 = scale * (0.5 + 0.05 * size)
            rows.append({"batch_size": size, "role": role, "p50_ms": p50, "p90_ms": p50 * 1.2,
                         "p50_ci_low_ms": p50 * 0.97, "p50_ci_high_ms": p50 * 1.03})
    return rows


def test_latency_histogram_is_a_png_and_the_same_numbers_give_the_same_bytes(tmp_path):
    first, second = tmp_path / "a.png", tmp_path / "b.png"
    assert plots.latency_histogram(_samples(), first) == first
    plots.latency_histogram(_samples(), second)
    data = first.read_bytes()
    assert _png_size(data) == (700, 420) and len(data) > 10_000
    assert data == second.read_bytes()
    assert b"matplotlib" not in data   # no version stamp: bytes do not change with the library version


def test_histogram_of_one_role_of_equal_samples_and_of_a_wide_spread(tmp_path):
    plots.latency_histogram({"candidate": [1.0] * 5}, tmp_path / "flat.png")
    plots.latency_histogram({"candidate": [0.01 * 1.1 ** i for i in range(100)]}, tmp_path / "wide.png")
    assert all(_png_size((tmp_path / name).read_bytes()) == (700, 420) for name in ("flat.png", "wide.png"))


def test_latency_vs_batch_draws_two_panels(tmp_path):
    path = plots.latency_vs_batch(_rows(), tmp_path / "batch.png")
    data = path.read_bytes()
    assert _png_size(data) == (1000, 420) and len(data) > 20_000


def test_latency_vs_batch_needs_its_keys_and_positive_numbers(tmp_path):
    with pytest.raises(ValueError, match="row 0 lacks p50_ms"):
        plots.latency_vs_batch([{"batch_size": 1, "role": "candidate"}], tmp_path / "x.png")
    with pytest.raises(ValueError, match="p50_ms > 0"):
        plots.latency_vs_batch([{"batch_size": 1, "role": "candidate", "p50_ms": 0}], tmp_path / "x.png")
    with pytest.raises(ValueError, match="at least one row"):
        plots.latency_vs_batch([], tmp_path / "x.png")
    with pytest.raises(ValueError, match="at least one role with samples"):
        plots.latency_histogram({"candidate": []}, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_samples_csv_has_one_row_per_sample(tmp_path):
    sizes = [{"batch_size": 8, "samples_ms": {"baseline": [1.5, 2.25], "candidate": [0.5, 0.75, 1.0]}}]
    path = plots.samples_csv(sizes, tmp_path / "samples.csv")
    rows = list(csv.DictReader(path.open()))
    assert list(rows[0]) == ["batch_size", "role", "index", "ms"]
    assert [(int(r["batch_size"]), r["role"], int(r["index"]), float(r["ms"])) for r in rows] == [
        (8, "baseline", 0, 1.5), (8, "baseline", 1, 2.25), (8, "candidate", 0, 0.5), (8, "candidate", 1, 0.75),
        (8, "candidate", 2, 1.0)]


def test_samples_csv_of_several_sizes_with_blocks_and_pair_order(tmp_path):
    """Records as benchmark's latency_samples.json holds them: even pairs run in `order`, odd reversed."""
    sizes = [{"batch_size": 1, "order": ["baseline", "candidate"], "calls_per_sample": {"baseline": 4, "candidate": 9},
              "samples_ms": {"baseline": [1.0, 2.0], "candidate": [3.0, 4.0]}},
             {"batch_size": 64, "order": ["baseline", "candidate"], "calls_per_sample": {"baseline": 1, "candidate": 1},
              "samples_ms": {"baseline": [5.0], "candidate": [6.0]}}]
    rows = list(csv.DictReader(plots.samples_csv(sizes, tmp_path / "s.csv").open()))
    assert [(r["batch_size"], r["role"], r["index"], r["calls_per_sample"], r["ran_first"]) for r in rows] == [
        ("1", "baseline", "0", "4", "1"), ("1", "baseline", "1", "4", "0"),
        ("1", "candidate", "0", "9", "0"), ("1", "candidate", "1", "9", "1"),
        ("64", "baseline", "0", "1", "1"), ("64", "candidate", "0", "1", "0")]


def test_samples_csv_names_what_a_record_lacks(tmp_path):
    with pytest.raises(ValueError, match="samples record 0 lacks batch_size"):
        plots.samples_csv([{"samples_ms": {"candidate": [1.0]}}], tmp_path / "s.csv")
    assert not (tmp_path / "s.csv").exists()


def test_importing_plots_imports_no_matplotlib_and_drawing_leaves_pyplot_alone(tmp_path):
    code = ("import sys; from pathlib import Path; from ptflow.measure import plots; "
            "print('matplotlib' in sys.modules); "
            f"plots.latency_histogram({{'candidate': [1.0, 2.0, 1.5]}}, Path({str(tmp_path / 'p.png')!r})); "
            "print('matplotlib.pyplot' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
