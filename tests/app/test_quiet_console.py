"""The terminal shows the run; library noise (torch's warnings and logs, torchao's import
lines, deprecations raised inside installed packages) goes to the run's ptflow.log only."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from ptflow.app.console import RunRecordsOnly
from tests.conftest import ROOT


def _record(name: str, message: str, *args) -> logging.LogRecord:
    return logging.LogRecord(name, logging.WARNING, __file__, 1, message, args, None)


def test_the_console_filter_passes_the_runs_records_and_drops_the_libraries():
    keep = RunRecordsOnly().filter
    library = Path(sysconfig.get_paths()["purelib"]) / "torch" / "nn" / "modules" / "rnn.py"
    assert keep(_record("ptflow.core.engine", "stage load: starting"))
    assert keep(_record("hydra.core.utils", "Setting JobRuntime"))
    assert not keep(_record("torch.fx.experimental.symbolic_shapes", "Unable to find user code"))
    assert not keep(_record("torchao", "Failed to load /x/_C_mxfp8.so"))
    assert not keep(_record("py.warnings", "%s", f"{library}:12: UserWarning: _flat_weights were assigned\n"))
    assert keep(_record("py.warnings", "%s", "/home/me/models/net.py:40: UserWarning: my own warning\n"))
    assert keep(_record("py.warnings", "%s", "ptflow.datasources:0: FutureWarning: ptflow.datasources is now ...\n"))


@pytest.mark.slow
def test_an_lstm_export_run_prints_only_ptflows_lines_and_logs_the_rest(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "ptflow", "~model.builder", "+model.builder={_target_: tests.toy_models.rows_lstm}",
                           "model.weights=null", "data=digits_rows", "data.max_batches=1", "quantize=int8_dynamic",
                           "tracking=none", "pipeline=[load,validate,quantize,export]"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr
    noise = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith(("ptflow:", "  "))]
    assert not noise, noise
    assert "_flat_weights" not in proc.stderr and "Warning:" not in proc.stderr
    assert "converted 5.9% of RowsRNN's weights" in proc.stderr      # ptflow's own warning stays
    (log,) = tmp_path.glob("outputs/runs/*/*/ptflow.log")
    assert "_flat_weights" in log.read_text()                          # kept, where it belongs
