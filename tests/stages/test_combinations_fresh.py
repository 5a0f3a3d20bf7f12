"""Every quantize × export cell the combinations table accepts on CPU, really run: each file it
writes loads in a fresh Python process by its manifest's load line (the export's own check),
and that line works pasted. One run per row, exporting every accepted format at once."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from ptflow.core import engine
from ptflow.app.settings import compile_plan
from tests.conftest import make_context
from tests.stages.test_combinations import FORMATS, TABLE, _cells, _config, loaded_files  # noqa: F401 (fixture)

ROWS = {row: [fmt for fmt, cell in zip(FORMATS, _cells(text)[-len(FORMATS):]) if cell in ("✓", "tol")]
        for row, text in TABLE.items()}
ROWS = {row: fmts for row, fmts in ROWS.items() if fmts}


@pytest.mark.slow
@pytest.mark.parametrize("row", ROWS, ids=list(ROWS))
def test_every_accepted_export_of_a_row_loads_in_a_fresh_process(tmp_path, loaded_files, row):  # noqa: F811
    config, choices = _config(row, loaded_files, None, ROWS[row][0])
    config["export"]["formats"] = ROWS[row]
    config["export"]["tolerance"] = {**config["export"]["tolerance"], "onnx": 0.05}   # the 'tol' cells
    plan = compile_plan(config, choices)
    torch.manual_seed(0)
    artifact = engine.run(plan, make_context(tmp_path, plan), ())
    manifest = json.loads((tmp_path / "export" / "manifest.json").read_text())
    assert [e["format"] for e in manifest["files"]] == ROWS[row]
    for entry in manifest["files"]:
        assert artifact.metrics[f"export.{entry['format']}.fresh_check_s"] > 0
        pasted = subprocess.run([sys.executable, "-c", entry["load"]], cwd=tmp_path / "export",
                                capture_output=True, text=True, timeout=300)
        assert pasted.returncode == 0, (entry["format"], entry["load"], pasted.stderr[-1500:])


BUNDLED = [(experiment, row) for experiment in ("digits_cnn", "digits_transformer")
           for row in ("none", "int8_dynamic", "int8_static")]


@pytest.mark.slow
@pytest.mark.parametrize("experiment, row", BUNDLED, ids=[f"{e}-{r}" for e, r in BUNDLED])
def test_the_other_bundled_models_export_files_that_load_fresh(tmp_path, experiment, row):
    """The CNN and the transformer (keyword inputs) through the same rows (aoti: the MLP's run covers it)."""
    from ptflow.app.settings import compile_plan as plan_of
    from tests.conftest import compose

    formats = [f for f in ROWS[row] if f != "aoti"]
    if experiment == "digits_transformer" and row == "int8_static":
        formats.remove("torchscript")   # tested below: it fails, and says why
    config, choices = compose(f"experiment={experiment}", "data.max_batches=1", "tracking=none", f"quantize={row}",
                              "quantize.calibration.batches=1", "pipeline=[load,validate,quantize,export]",
                              f"export.formats=[{','.join(formats)}]", "export.tolerance.onnx=0.05")
    plan = plan_of(config, choices)
    artifact = engine.run(plan, make_context(tmp_path, plan), ())
    manifest = json.loads((tmp_path / "export" / "manifest.json").read_text())
    assert [e["format"] for e in manifest["files"]] == formats
    assert all(artifact.metrics[f"export.{f}.fresh_check_s"] > 0 for f in formats)


@pytest.mark.slow
def test_a_traced_pt2e_transformer_bakes_its_batch_and_the_export_says_so(tmp_path):
    """The PT2E graph reshapes by the batch size; torch.jit.trace records it as a constant, so the
    torchscript file fails at the check's second batch size — with the cause, not torch's wrapper line."""
    from ptflow.app.settings import compile_plan as plan_of
    from ptflow.core.errors import StageError
    from tests.conftest import compose

    config, choices = compose("experiment=digits_transformer", "data.max_batches=1", "tracking=none",
                              "quantize=int8_static", "quantize.calibration.batches=1",
                              "pipeline=[load,validate,quantize,export]", "export.formats=[torchscript]")
    plan = plan_of(config, choices)
    with pytest.raises(StageError) as failed:
        engine.run(plan, make_context(tmp_path, plan), ())
    message = str(failed.value)
    assert "export.formats=torchscript" in message and "is invalid for input of size" in message
    assert "torch.jit.trace bakes them in" in message
