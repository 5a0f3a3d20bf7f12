"""The latency pictures drawn by a process of their own: whole files when it works, a
warning naming the cause when it does not, and the run never waits on it forever."""
from __future__ import annotations

from ptflow.stages.benchmark.drawing import Drawing

SAMPLES = {"baseline": [1.0, 1.1, 0.9, 1.05] * 10, "candidate": [0.5, 0.55, 0.45, 0.52] * 10}


def test_the_child_draws_both_pictures(tmp_path):
    rows = [{"batch_size": b, "role": r, "p50_ms": p} for b, r, p in
            ((1, "baseline", 1.0), (1, "candidate", 0.5), (8, "baseline", 4.0), (8, "candidate", 2.0))]
    drawing = Drawing({"histogram": {"samples_ms": SAMPLES, "path": str(tmp_path / "h.png")},
                       "latency_vs_batch": {"rows": rows, "path": str(tmp_path / "b.png")}})
    assert drawing.finish() is None
    for name in ("h.png", "b.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not drawing.request.exists()                  # the request file is gone


def test_a_failed_drawing_says_why_and_leaves_no_picture(tmp_path):
    drawing = Drawing({"histogram": {"samples_ms": {}, "path": str(tmp_path / "h.png")}})
    error = drawing.finish()
    assert "exited 1" in error and "needs at least one role with samples" in error
    assert not (tmp_path / "h.png").exists() and not drawing.request.exists()


def test_the_stage_warns_when_its_pictures_fail(tmp_path):
    from ptflow.decide.accuracy import AccuracyConfig
    from ptflow.stages.benchmark.stage import BenchmarkConfig, BenchmarkStage, BenchmarkStageConfig

    warned = {}
    stage = BenchmarkStage(BenchmarkStageConfig(BenchmarkConfig(), AccuracyConfig()))
    stage._drawing = Drawing({"histogram": {"samples_ms": {}, "path": str(tmp_path / "h.png")}})
    stage._warn = warned.__setitem__
    stage.stop()
    assert warned["benchmark.plots"].startswith("the latency pictures (h.png) were not drawn: the drawing process exited 1")
    stage.stop()                                          # nothing left to wait for: no second warning
    assert len(warned) == 1


def test_a_hung_drawing_is_killed_after_the_wait(tmp_path):
    import subprocess
    import sys

    drawing = Drawing({"histogram": {"samples_ms": SAMPLES, "path": str(tmp_path / "h.png")}})
    drawing.process.wait()
    drawing.process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])   # stuck
    assert drawing.finish(timeout=0.2) == "drawing them took more than 0.2 s"
    assert drawing.process.returncode is not None        # killed, not left behind
