"""Every bad input and fault a user meets, through the real `ptflow` process: one table.

Each case runs `python -m ptflow ARGS` in its own directory and checks five things: the
exit code; that stderr names the key or file at fault (and holds no traceback); the
status of the MLflow run (or that none exists); that nothing half-written is left:
no partial file anywhere, no export without its manifest, a run record that agrees; and
that no crafted file's payload ran (it would create the directory's MARKER file).

Faults that need a broken machine (a full disk, a read-only directory) are injected by
tests/faults/sitecustomize.py, which patches the standard library in the child process,
never ptflow. Signals are real: the case waits until the run reaches a stage, then sends them.
"""
from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

import pytest

from ptflow.measure.device import usable_cores_here
from tests import fault_files as files

ROOT = Path(__file__).resolve().parents[2]
FAULTS = ROOT / "tests" / "faults"
QUICK = ("benchmark=quick",)
NO_EXPORT = ("experiment=latency_only", "benchmark=quick")
TINY_RUN = ("experiment=latency_only", "benchmark=quick", "quantize=none")
SIGTERM, SIGINT = signal.SIGTERM, signal.SIGINT


@dataclass(frozen=True)
class Case:
    family: str
    name: str
    args: tuple[str, ...]              # "{tmp}" is the case's directory
    code: int
    says: tuple[str, ...]              # all in stderr ("{tmp}" expanded)
    run: str | None                    # status of the one MLflow run; None: no run exists
    record: str | None = "same"        # the run dir record's status; "same" = run's, None: no run dir
    setup: Callable[[Path], None] | None = None
    fault: str = ""                    # PTFLOW_TEST_FAULT for the child
    signals: tuple[int, ...] = ()      # sent once `at` holds
    at: str = ""                       # "stage:<name>" or "mark" (the fault's mark file exists)
    tags: dict[str, str] = field(default_factory=dict)   # tag -> substring of its value
    fsize: int | None = None           # RLIMIT_FSIZE for the child, bytes

    @property
    def id(self) -> str:
        return f"{self.family}-{self.name}"


def _config(name, *args, says, family="config", **kw):
    return Case(family, name, args, 2, (*says, "nothing was run"), None, None, **kw)


_store = partial(_config, family="store")


def _weights(name, file, setup, *says):
    return Case("weights", name, (f"model.weights={{tmp}}/{file}",), 2,
                ("model.weights", f"{{tmp}}/{file}", *says, "nothing was run"), None, None, setup)


def _untrusted(name, file, setup, *says):
    """A model file that would run code (its payload creates {tmp}/MARKER): refused in pre-flight."""
    extra = tuple(s for s in says if "=" in s and " " not in s)   # overrides among the needles
    path = f"{{tmp}}/{files.GIVEN}/{file}"
    return Case("untrusted", name, ("model.builder=null", f"model.weights={path}", *extra), 2,
                ("model.weights", path, "would run code", *(s for s in says if s not in extra),
                 "nothing was run"), None, None, setup)


def _failed(family, name, args, *says, setup=None, fault="", fsize=None):
    return Case(family, name, args, 1, says, "FAILED", setup=setup, fault=fault, fsize=fsize)


def _warned(name, args, key, says, setup=None):
    return Case("warning", name, args, 0, ("ptflow: warning: ", says), "FINISHED", setup=setup,
                tags={f"ptflow.warning.{key}": says})


def _killed(name, args, sig, at, says, fault=""):
    code = 128 + sig
    return Case("signal", name, args, code, says, "KILLED", signals=(sig,), at=at, fault=fault,
                tags={"ptflow.kill_reason": signal.Signals(sig).name})


CASES = [
    # -- config: every problem found before anything runs (exit 2, no run, no run dir) -------
    _config("unknown-option", "quantize=int8_dynamik", says=("quantize", "did you mean 'int8_dynamic'?")),
    _config("unknown-key-and-type", "benchmark.iterz=5", "benchmark.warmup=abc",
            says=("2 config problem(s)", "benchmark.iterz", "benchmark.warmup: found 'abc'")),
    _config("seed-too-large", "seed=99999999999999999999999", says=("seed", "torch.manual_seed")),
    _config("empty-outputs-dir", "outputs_dir=", says=("outputs_dir", "filesystem root")),
    _config("outputs-dir-under-a-file", "outputs_dir={tmp}/afile/out", "tracking=none",
            says=("outputs_dir", "{tmp}/afile is a file"), setup=files.a_file),
    _config("negative-export-tolerance", "export.tolerance.pt2=-1", says=("export.tolerance.pt2", ">= 0")),
    _config("old-export-format-key", "export.format=pt2", says=("export.format", "replaced by export.formats=[pt2]")),
    _config("export-dir-under-a-file", "export.dir={tmp}/afile/export",
            says=("export.dir", "{tmp}/afile is a file"), setup=files.a_file),
    _config("yaml-syntax-error", "-cd", "{tmp}/cd", "quantize=broken",
            says=("{tmp}/cd/quantize/broken.yaml", "line 2"), setup=files.broken_yaml),
    _config("plugin-raises-on-import", "plugins=[raises_on_import]",
            says=("plugins", "raises_on_import", "plugin bug at import"), setup=files.modules),
    _config("plugin-syntax-error", "plugins=[bad_syntax]",
            says=("plugins", "bad_syntax", "SyntaxError"), setup=files.modules),
    _config("target-module-raises", "model.builder._target_=raises_on_import.build",
            says=("model.builder._target_", "RuntimeError: plugin bug at import"), setup=files.modules),
    _config("target-missing", "model.builder._target_=ptflow.zoo.digits.DigitsMPL",
            says=("model.builder._target_", "did you mean 'DigitsMLP'?")),
    _config("pkg-of-unknown-package", "model.weights=pkg://no_such_pkg/w.safetensors",
            says=("model.weights", "no_such_pkg")),
    _config("weights-missing", "model.weights={tmp}/nope.pt", says=("model.weights", "no file at {tmp}/nope.pt")),
    _config("stage-order", "pipeline=[load,validate,export,quantize,benchmark]",
            says=("pipeline[3]", "place 'quantize' before 'export'")),
    _config("sweep-without-multirun", "quantize=none,int8_dynamic", says=("quantize", "ptflow -m")),
    _config("max-dispersion-zero", "benchmark.max_dispersion=0", says=("benchmark.max_dispersion",)),
    _config("bad-job-in-sweep", "-m", "compile=eager,inductr", says=("compile", "did you mean 'inductor'?")),
    _config("empty-experiment", "tracking.experiment=", says=("tracking.experiment", "non-empty")),
    _config("reduce-overhead-on-cpu", "compile=inductor", "compile.mode=reduce-overhead",
            says=("compile.mode", "CUDA graphs")),

    # -- weights files: corrupt, empty or wrong files named in pre-flight (exit 2) ------------
    _weights("empty-pt", "empty.pt", partial(files.empty, name="empty.pt"), "is empty (0 bytes"),
    _weights("empty-safetensors", "empty.safetensors", partial(files.empty, name="empty.safetensors"),
             "is empty (0 bytes", "safetensors.torch.save_file"),
    _weights("random-pt", "noise.pt", partial(files.noise, name="noise.pt"), "neither a zip archive"),
    _weights("random-safetensors", "noise.safetensors", partial(files.noise, name="noise.safetensors"),
             "not a safetensors file"),
    _weights("truncated-safetensors", "cut.safetensors", files.truncated_safetensors, "is truncated"),
    _weights("truncated-zip", "cut.pt", files.truncated_zip, "no end-of-central-directory"),
    _weights("directory", "weights.pt", files.directory, "is a directory"),
    _weights("html-page", "page.safetensors", files.html_page, "HTML/XML page"),
    _weights("zip-not-a-checkpoint", "other.pt", files.zip_without_data, "no data.pkl"),

    # -- files that would run code when loaded: refused before anything runs, and nothing ran --
    _untrusted("pt2-pickled-sample-inputs", "evil.pt2", files.evil_pt2_sample_inputs, "data/sample_inputs/model.pt"),
    _untrusted("pt2-pickled-sample-inputs-format-pt2", "evil.pt2", files.evil_pt2_sample_inputs,
               "data/sample_inputs/model.pt", "model.format=pt2"),
    _untrusted("pt2-use-pickle-weight", "evil.pt2", files.evil_pt2_weight, "data/weights/weight_"),
    _untrusted("pt2-code-in-a-shape-expression", "evil.pt2", files.evil_pt2_expression, "models/model.json",
               "shape expression"),
    _untrusted("pt2-compiled-library", "evil.pt2", files.evil_pt2_library, "data/aotinductor/", "native code"),
    _weights("state-dict-unpickles-code", "evil.pt", files.evil_state_dict, "data.pkl", "eval",
             "model.trust_pickle=true"),

    # -- weights that only fail when read (exit 1, run FAILED) --------------------------------
    _failed("weights", "a-list-not-a-state-dict", ("model.weights={tmp}/list.pt", *NO_EXPORT),
            "stage 'load' failed", "model.weights", "{tmp}/list.pt", "holds a list", setup=files.a_list),
    _weights("pickled-model-refused", "full.pt", files.pickled_model, "pickled Python objects",
             "model.trust_pickle=true"),
    _failed("weights", "keys-do-not-match", ("model.weights={tmp}/renamed.pt", *NO_EXPORT),
            "{tmp}/renamed.pt", "missing from the file (8)", setup=files.renamed_keys),

    # -- the tracking store: decided in seconds, before anything runs (exit 2) ----------------
    _store("tracking-server-not-listening", "tracking.uri=http://127.0.0.1:{port}",
           says=("tracking.uri", "http://127.0.0.1:{port}", "Connection refused")),
    _store("read-only-outputs-no-db", "outputs_dir={tmp}/ro", fault="readonly:{tmp}/ro",
           says=("outputs_dir", "{tmp}/ro", "not writable"), setup=files.empty_dir),
    _store("read-only-outputs-with-db", "outputs_dir={tmp}/ro", fault="readonly:{tmp}/ro",
           says=("outputs_dir", "{tmp}/ro", "not writable"), setup=files.existing_store),
    _store("not-a-database", says=("outputs_dir", "{tmp}/outputs/mlflow.db", "not a database"),
           setup=files.garbage_db),

    # -- numbers that would be wrong: refused when the baseline is captured (exit 1) ----------
    _failed("metric", "float-targets", ("data.source._target_=tests.toy_models.digits_float_targets", *NO_EXPORT),
            "data.metric", "integer class ids", "data.metric=null"),
    _failed("metric", "labels-out-of-range",
            ("data.source._target_=tests.toy_models.digits_shifted_labels", *NO_EXPORT),
            "data.metric", "labels span 1..10", "10 classes"),
    _failed("metric", "one-column-output", ("model.weights=null", "model.builder.classes=1", *NO_EXPORT),
            "data.metric", "classes >= 2"),
    _failed("metric", "nan-outputs", ("model.weights={tmp}/nan.safetensors", *NO_EXPORT),
            "stage 'validate' failed", "NaN", setup=files.nan_bias),
    _failed("metric", "benchmark-batch-out-of-range", ("benchmark.batch=7", *NO_EXPORT),
            "benchmark.batch=7", "3 eval batch(es)"),

    # -- silent degradations now warn, on the console and as tags (exit 0) --------------------
    _warned("partial-load", ("model.weights={tmp}/headless.safetensors", "model.strict=false", *TINY_RUN),
            "load.strict", "model.strict=false", setup=files.without_head),
    _warned("dtype-cast", ("model.weights={tmp}/half.safetensors", *TINY_RUN), "load.dtype",
            "cast from float16", setup=files.half),
    _warned("threads-above-cores", (f"device.threads={usable_cores_here() + 1}", *TINY_RUN),
            "device.threads", f"device.threads={usable_cores_here() + 1}"),
    _warned("unstable-timings", ("benchmark.max_dispersion=1e-9", "benchmark.invalid_dispersion=100", *TINY_RUN),
            "benchmark.unstable",
            "timings are unstable"),

    # -- a full disk: one message naming the path, FAILED, partial files gone (exit 1) --------
    _failed("disk", "full-at-export", QUICK, "stage 'export' failed", "no space left on device",
            "/export/", fault="enospc:/export/"),
    _failed("disk", "full-at-summary", NO_EXPORT, "no space left on device", "summary.json",
            fault="enospc:summary.json"),
    _failed("disk", "full-at-latency-samples", NO_EXPORT, "stage 'benchmark' failed",
            "no space left on device", "latency_samples.json", fault="enospc:latency_samples"),
    # above the 4 MB a run needs to record itself, below the ~9.6 MB the unquantized export needs
    _failed("disk", "too-little-free-space", (*QUICK, "quantize=none"), "stage 'export' failed",
            "no space left on device", "MB free", fault="diskfree:6"),
    # below it: nothing runs, no MLflow run, a record that says so (no RUNNING left behind)
    Case("disk", "below-the-minimum-free-space", QUICK, 1,
         ("no space left on {tmp}/outputs: 1.00 MB free", "needs 4 MB"), None, "FAILED", fault="diskfree:1"),
    Case("disk", "record-unwritable-at-start", QUICK, 1,
         ("no space left on device writing {tmp}/outputs", "no run record could be written"), None, None,
         fault="enospc:ptflow_result.json"),
    # the disk fills up mid-run: the record stays RUNNING, its end is kept in the reserve (the
    # console says where, and what completes it), MLflow still gets the true end
    Case("disk", "record-unwritable-mid-run", QUICK, 1,
         ("stage 'export' failed: no space left on device", "is NOT complete", ".ptflow_result.reserve",
          "ptflow-runs close-stale --outputs-dir outputs"), "FAILED", "RUNNING",
         fault="enospcafter:latency_samples:ptflow_result.json|/export/",
         tags={"ptflow.error": "stage 'export' failed"}),
    _failed("disk", "file-size-limit", QUICK, "stage 'export' failed", "file size limit exceeded",
            "ulimit -f", fsize=2_000_000),
    Case("disk", "artifact-store-full", NO_EXPORT, 3,
         ("MLflow tracking", "no space left on device", "incomplete", "ptflow-runs relog"), "FINISHED",
         fault="enospc:mlartifacts", tags={"ptflow.incomplete": "no space left on device writing"}),

    # -- signals: the record says KILLED with the real exit code, partial files removed --------
    _killed("sigterm-in-benchmark", ("benchmark.iters=200000", *NO_EXPORT[:1]),
            SIGTERM, "stage:benchmark", ("SIGTERM received during stage 'benchmark'", "ended KILLED")),
    _killed("sigint-in-benchmark", ("benchmark.iters=200000", *NO_EXPORT[:1]),
            SIGINT, "stage:benchmark", ("SIGINT received during stage 'benchmark'",)),
    _killed("sigterm-mid-export-write", QUICK, SIGTERM, "mark", ("during stage 'export'",),
            fault="slowwrite:.model.partial:{tmp}/mark"),
    # the first signal starts the clean-up (slowed down here), the second cuts it short: the
    # record stays RUNNING with its process, for ptflow-runs close-stale to close
    Case("signal", "second-signal-exits-at-once", (*QUICK, "tracking=none"), 143,
         ("second SIGTERM: exiting now",), None, "RUNNING", signals=(SIGTERM, SIGTERM),
         at="stage:validate", fault="slowwrite:ptflow_result.json:{tmp}/mark"),
]


def test_the_table_is_big_enough_and_ids_are_unique():
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)


def _expand(text: str, tmp: Path, port: int) -> str:
    return text.replace("{tmp}", str(tmp)).replace("{port}", str(port))


def _reached(case: Case, tmp: Path) -> bool:
    if case.at == "mark":
        return (tmp / "mark").exists()
    stage = case.at.split(":", 1)[1]
    for path in tmp.glob("outputs/runs/*/*/ptflow_result.json"):
        try:
            return json.loads(path.read_text()).get("stage") == stage
        except ValueError:   # read while being renamed into place
            return False
    return False


def _launch(case: Case, tmp: Path, port: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(FAULTS), str(ROOT), str(tmp)] if case.fault else [str(ROOT), str(tmp)])}
    env.pop("PTFLOW_TEST_FAULT", None)
    if case.fault:
        env["PTFLOW_TEST_FAULT"] = _expand(case.fault, tmp, port)
    limit = case.fsize

    def child_limits():
        if limit:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # a write past the limit fails (EFBIG) instead
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    args = [_expand(a, tmp, port) for a in case.args]
    proc = subprocess.Popen([sys.executable, "-m", "ptflow", *args], cwd=tmp, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=child_limits)
    if case.signals:
        deadline = time.monotonic() + 180
        while not _reached(case, tmp) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        for sig in case.signals:
            proc.send_signal(sig)
            time.sleep(0.15)
    out, err = proc.communicate(timeout=600)
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def _runs(tmp: Path):
    from mlflow.tracking import MlflowClient

    stores = [p for p in tmp.rglob("mlflow.db") if p.read_bytes()[:15] == b"SQLite format 3"
              and p.parent != tmp / "ro"]
    runs = []
    for db in stores:
        client = MlflowClient(tracking_uri=f"sqlite:///{db}")
        experiment_ids = [e.experiment_id for e in client.search_experiments()]
        runs += client.search_runs(experiment_ids)
    return runs


def _assert_nothing_half_written(tmp: Path) -> None:
    partials = [p for p in tmp.rglob("*") if ".partial" in p.name]
    assert not partials, partials
    for exported in (p for p in tmp.rglob("*.pt2") if files.GIVEN not in p.relative_to(tmp).parts):
        manifest = exported.with_name("manifest.json")
        assert manifest.is_file(), f"{exported} has no manifest"
        sizes = {e["file"]: e["size_bytes"] for e in json.loads(manifest.read_text())["files"]}
        assert sizes[exported.name] == exported.stat().st_size
    for manifest in tmp.rglob("export/manifest.json"):
        for entry in json.loads(manifest.read_text())["files"]:
            assert (manifest.parent / entry["file"]).is_file()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_fault(case: Case, tmp_path: Path):
    port = files.free_port()
    if case.setup:
        case.setup(tmp_path)
    result = _launch(case, tmp_path, port)
    detail = f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    assert result.returncode == case.code, detail
    for needle in case.says:
        assert _expand(needle, tmp_path, port) in result.stderr, detail
    assert "Traceback" not in result.stderr, detail

    runs = _runs(tmp_path)
    if case.run is None:
        assert runs == [], [r.info.status for r in runs]
    else:
        (run,) = runs
        assert run.info.status == case.run, detail
        for tag, text in case.tags.items():
            assert text in run.data.tags.get(tag, ""), (tag, run.data.tags)

    records = list(tmp_path.glob("outputs/*/*/*/ptflow_result.json"))
    expected = case.run if case.record == "same" else case.record
    if expected is None:
        assert not records, records
    else:
        (record,) = records
        saved = json.loads(record.read_text())
        assert saved["status"] == expected, saved
        if expected != "RUNNING":
            assert saved["exit_code"] in (case.code, 0 if case.code == 3 else case.code)
    _assert_nothing_half_written(tmp_path)
    assert not (tmp_path / "MARKER").exists(), "a payload in a file ran"   # crafted files' evidence
