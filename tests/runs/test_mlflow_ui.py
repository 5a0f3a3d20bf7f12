"""The MLflow UI, in a real browser: a sweep logged to a real `mlflow server`, then headless
Chromium opens the two pages ptflow prints (the experiment's runs and the sweep's parent run)
and finds there what a user looks for: the parent run in the runs table, and on its page the
pick (recipe, speedup, links) and the ranked table — the description rendered as Markdown.

Debian's `chromium` is needed (`.ci/run` installs it best effort); without it the test skips.
Set PTFLOW_UI_SCREENSHOTS=DIR to keep the screenshots and look at them yourself
(`bench/mlflow_ui.py` takes the README's from a full 8-job sweep)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from ptflow.runs import ui_links
from tests import browser
from tests.app.test_cluster import _ptflow, _runs, _split_parent
from tests.conftest import STEADY
from tests.mlflow_server import Server


@pytest.mark.slow
def test_the_sweep_and_its_pick_read_in_the_mlflow_ui(tmp_path):
    binary = browser.chromium()
    if binary is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium; .ci/run installs it best effort)")
    shots = Path(os.environ.get("PTFLOW_UI_SCREENSHOTS") or tmp_path / "shots")
    shots.mkdir(parents=True, exist_ok=True)
    server = Server(tmp_path / "server")
    server.start()
    try:
        work = tmp_path / "work"
        work.mkdir()
        result = _ptflow(work, "-m", "quantize=none,int8_dynamic,bf16", "benchmark=quick", "device.threads=1",
                         f"tracking.uri={server.uri}", *STEADY)
        assert result.returncode == 0, result.stderr[-4000:]
        _, runs = _runs(server.uri)
        parent, jobs = _split_parent(runs)
        eid, best = parent.info.experiment_id, parent.data.tags["ptflow.best_recipe"]
        page = ui_links.run_page(server.uri, eid, parent.info.run_id)
        assert f"sweep: the parent run's page: {page}" in result.stdout   # the address ptflow prints
        experiment = f"{server.uri}/{ui_links.runs_path(eid)}"

        html = browser.dom(binary, tmp_path / "profile", experiment)
        assert parent.info.run_name in html, "the experiment page shows no runs table with the sweep's parent"
        assert "Model training" in html
        html = browser.dom(binary, tmp_path / "profile", page)
        assert f"Pick: <strong>{best}</strong>" in html.replace("\n", ""), "the description's pick is not rendered"
        assert "ranked by speedup" in html and "<table" in html
        picked = parent.data.tags["ptflow.best_run_id"]
        assert f'href="#/experiments/{eid}/runs/{picked}?workflowType=machine_learning"' in html.replace("&amp;", "&")
        assert all(r.info.run_name.split(" @")[0] in html for r in jobs)   # child runs and table rows

        for name, url in (("experiment", experiment), ("parent-run", page)):
            png = shots / f"mlflow-{name}.png"
            shot = browser.screenshot(binary, tmp_path / "profile", url, png, height=1400)
            assert shot.returncode == 0 and png.is_file(), shot.stderr[-2000:]
            assert browser.distinct_colours(png) > 50, f"{png.name}: a blank page?"
    finally:
        server.stop()
