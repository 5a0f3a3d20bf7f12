"""quantize × compile × export: the one table of what works, what the plan refuses (and why),
what needs CUDA and what fails at run time — the docs page "Which combinations work"
(docs/recipes/combinations.md) shows the same table. Every cell was probed on CPU (`ptflow dry_run=true` for the plan, then a real run of the
bundled MLP for each cell the plan accepts); here every cell is checked against the plan:
each refused cell names its reason, every other cell is accepted.

Refused cells already tested elsewhere (their reason is asserted there, their verdict here):
- tests/stages/test_compile.py::test_the_plan_refuses_what_cannot_work: none→cudagraphs,
  int8_dynamic→torchscript_trace, int8_dynamic→onnxruntime, bf16→onnxruntime,
  legacy_dynamic→aoti, legacy_dynamic→onnxruntime
- tests/stages/test_export_formats.py::test_the_plan_refuses_what_cannot_work: legacy_dynamic→pt2/onnx/aoti/safetensors,
  int8_dynamic→onnx/safetensors, int8_weight_only→torchscript, bf16→onnx
- tests/inputs/test_user_models.py::test_the_plan_refuses_stages_a_torchscript_model_cannot_go_through:
  loaded TorchScript→inductor, loaded TorchScript→pt2
- tests/stages/test_quantize.py::test_gpu_recipes_are_refused_on_cpu_before_any_work: int4_weight_only and
  float8_dynamic with the default compile=eager, export.formats=[pt2]
Run-time failures: a model that does not script fails in stage compile
(test_compile.py::test_a_model_that_does_not_script_fails_in_compile_with_the_stage_named; its one-line
message is tested below); an export that differs from the model by more than its tolerance fails in
stage export (test_export_formats.py::test_a_failing_format_leaves_no_file_and_no_manifest).
"""
from __future__ import annotations

import copy
import functools
import re

import pytest
import torch

from ptflow.app.settings import compile_plan
from ptflow.core.errors import ConfigError
from tests.conftest import ROOT, compose
from tests.user_inputs import _config as user_config
from tests.user_inputs import _program, _scripted

COMPILES = ("eager", "inductor", "inductor_max_autotune", "cudagraphs", "aoti", "onnxruntime",
            "torchscript_trace", "torchscript_script")
FORMATS = ("pt2", "aoti", "onnx", "safetensors", "torchscript")
LOADED = {"loaded TorchScript": "torchscript", "loaded .pt2": "pt2"}   # quantize=none on a loaded file

# ✓ works · CUDA: needs device=cuda (the plan refuses it on CPU; not probed here: no GPU)
# ✗x: refused at plan time, REASONS[x] · tol: the plan accepts it, but on the bundled MLP the reloaded
# ONNX file differs from the model by more than export.tolerance.onnx (1e-3): the run fails in stage
# 'export' unless the tolerance is raised · run: the plan accepts it and it fails in stage 'export'
# (a refusal missing on the export side).
#                       compile: eager inductor max_autotune cudagraphs aoti onnxruntime ts_trace ts_script
#                       | export: pt2 aoti onnx safetensors torchscript
TABLE = {
    "none":               "✓  ✓  ✓  CUDA ✓  ✓  ✓  ✓  | ✓  ✓  ✓   ✓  ✓",
    "int8_dynamic":       "✓  ✓  ✓  CUDA ✓  ✗a ✗b ✗b | ✓  ✓  ✗a  ✗a ✗a",
    "int8_weight_only":   "✓  ✓  ✓  CUDA ✓  ✗a ✗b ✗b | ✓  ✓  ✗a  ✗a ✗a",
    "int4_weight_only":   "CUDA CUDA CUDA CUDA CUDA ✗a ✗b ✗b | CUDA CUDA ✗a ✗a ✗a",
    "float8_dynamic":     "CUDA CUDA CUDA CUDA CUDA ✗a ✗b ✗b | CUDA CUDA ✗a ✗a ✗a",
    "int8_static":        "✓  ✓  ✓  CUDA ✓  ✓  ✗b ✗b | ✓  ✓  tol ✓  ✓",
    "int8_qat":           "✓  ✓  ✓  CUDA ✓  ✓  ✗b ✗b | ✓  ✓  tol ✓  ✓",
    "bf16":               "✓  ✓  ✓  CUDA ✓  ✗c ✗b ✗b | ✓  ✓  ✗c  ✓  ✓",
    "fp16":               "✓  ✓  ✓  CUDA ✓  ✓  ✗b ✗b | ✓  ✓  tol ✓  ✓",
    "autocast_bf16":      "✓  ✓  ✓  CUDA ✓  ✗c ✗b ✗b | ✓  ✓  ✗c ✓  ✓",
    "autocast_fp16":      "✓  ✓  ✓  CUDA ✓  ✓  ✗b ✗b | ✓  ✓  tol ✓  ✓",
    "legacy_dynamic":     "✓  ✓  ✓  CUDA ✗d ✗d ✓  ✓  | ✗d ✗d ✗d  ✗d ✓",
    "loaded TorchScript": "✓  ✗e ✗e ✗e ✗e ✗e ✗e ✗e | ✗e ✗e ✗e  ✗e ✓",
    "loaded .pt2":        "✓  ✓  ✓  CUDA ✓  ✓  ✗f ✗f | ✓  ✓  ✓   ✓  ✗f",
}

# compile -> export: export writes the module compile started from, but the plan goes by the form
# compile hands on. quantize=none; the exceptions (other rows) are listed in PAIR_EXCEPTIONS.
PAIRS = {
    "eager":                 "✓  ✓  ✓  ✓  ✓",
    "inductor":              "✓  ✓  ✓  ✓  ✓",
    "inductor_max_autotune": "✓  ✓  ✓  ✓  ✓",
    "cudagraphs":            "CUDA CUDA CUDA CUDA CUDA",
    "aoti":                  "✓  ✓  ✓  ✓  ✓",
    "onnxruntime":           "✓  ✓  ✓  ✓  ✓",
    "torchscript_trace":     "✗p ✗p ✗p ✗p ✓",
    "torchscript_script":    "✗p ✗p ✗p ✗p ✓",
}
# torch.compile keeps a legacy_dynamic model packed: what needs torch.export stays refused after it.
# A loaded .pt2 program compiled by inductor/aoti/onnxruntime is no longer 'exported' to the plan, and
# export.formats=[torchscript] traces its module fine (probed) — the same module it refuses without compile.
PAIR_EXCEPTIONS = {
    **{("legacy_dynamic", backend, fmt): "✗d" for backend in ("inductor", "inductor_max_autotune")
       for fmt in ("pt2", "aoti", "onnx", "safetensors")},
    **{("loaded .pt2", backend, "torchscript"): "✓" for backend in ("inductor", "aoti", "onnxruntime")},
}

# what each footnote's refusal says (a substring of the plan's problem)
REASONS = {
    "a": "tensor subclasses",                         # torchao: onnx, safetensors, jit.trace cannot take them
    "b": "cannot be TorchScripted",                   # any quantize recipe -> torchscript_*
    "c": "no bfloat16 Gemm",                          # bf16 / autocast_bf16 -> onnxruntime, onnx
    "d": "torch.ao's packed",                         # legacy_dynamic -> anything built on torch.export
    "e": "'load' hands on the model as 'scripted'",   # a loaded TorchScript archive
    "f": "'load' hands on the model as 'exported'",   # a loaded .pt2 program
    "p": "'compile' hands on the model as 'scripted'",  # torchscript_* -> a torch.export format
}
CUDA_REASON = "needs device=cuda"

COVERED = {("none", "cudagraphs"), ("int8_dynamic", "torchscript_trace"), ("int8_dynamic", "onnxruntime"),
           ("bf16", "onnxruntime"), ("legacy_dynamic", "aoti"), ("legacy_dynamic", "onnxruntime"),
           ("legacy_dynamic", "export pt2"), ("legacy_dynamic", "export onnx"), ("legacy_dynamic", "export aoti"),
           ("legacy_dynamic", "export safetensors"), ("int8_dynamic", "export onnx"),
           ("int8_dynamic", "export safetensors"), ("int8_weight_only", "export torchscript"),
           ("bf16", "export onnx"), ("loaded TorchScript", "inductor"), ("loaded TorchScript", "export pt2"),
           ("int4_weight_only", "eager"), ("float8_dynamic", "eager"), ("int4_weight_only", "export pt2"),
           ("float8_dynamic", "export pt2")}

TINY = ("model.weights=null", "model.builder.hidden=32", "model.builder.depth=2", "data.max_batches=1",
        "benchmark=quick", "tracking=none")


def _cells(text: str) -> list[str]:
    return text.replace("|", " ").split()


def table_cells() -> list[tuple[str, str, str]]:
    """(row, column, cell) for every cell: columns are compile backends, then 'export <format>'."""
    columns = list(COMPILES) + [f"export {fmt}" for fmt in FORMATS]
    found = []
    for row, text in TABLE.items():
        cells = _cells(text)
        assert len(cells) == len(columns), row
        found += [(row, column, cell) for column, cell in zip(columns, cells)]
    return found


def pair_cells() -> list[tuple[str, str, str, str]]:
    """(row, compile, format, cell): quantize=none through every compile backend into every format,
    plus the exceptions."""
    found = [("none", backend, fmt, cell) for backend, text in PAIRS.items()
             for fmt, cell in zip(FORMATS, _cells(text))]
    return found + [(row, backend, fmt, cell) for (row, backend, fmt), cell in PAIR_EXCEPTIONS.items()]


@pytest.fixture(scope="module")
def loaded_files(tmp_path_factory):
    directory = tmp_path_factory.mktemp("loaded")
    return {"torchscript": str(_scripted(directory)), "pt2": str(_program(directory))}


@functools.cache
def _composed(row: str) -> tuple[dict, dict]:
    if row in LOADED:
        return user_config()                               # a random-input tiny model; weights set below
    return compose(*TINY, f"quantize={row}")


@functools.cache
def _compile_node(backend: str) -> dict:
    return compose(f"compile={backend}")[0]["compile"]


def _config(row: str, files: dict, backend: str | None = None, fmt: str | None = None) -> tuple[dict, dict]:
    """The config of one cell: load, validate, quantize, then compile (+ benchmark) and/or export."""
    config, choices = copy.deepcopy(_composed(row))
    if row in LOADED:
        config["model"].update({"builder": None, "weights": files[LOADED[row]]})
    pipeline = ["load", "validate", "quantize"]
    if backend:
        config["compile"] = copy.deepcopy(_compile_node(backend))
        choices = {**choices, "compile": backend}
        pipeline += ["compile", "benchmark"]
    if fmt:
        config["export"]["formats"] = [fmt]
        pipeline += ["export"]
    config["pipeline"] = pipeline
    return config, choices


def _problems(config: dict, choices: dict) -> list[str] | None:
    """The plan's problems, rendered; None when it accepts the config."""
    try:
        compile_plan(config, choices)
    except ConfigError as error:
        return [p.render() for p in error.problems]
    return None


def _split(column: str) -> tuple[str | None, str | None]:
    return (None, column.split()[1]) if column.startswith("export ") else (column, None)


REFUSED = [(row, column, cell) for row, column, cell in table_cells()
           if cell.startswith("✗") and (row, column) not in COVERED]
REFUSED_PAIRS = [c for c in pair_cells() if c[3].startswith("✗")]


@pytest.mark.parametrize("row, column, cell", REFUSED, ids=[f"{r}->{c}" for r, c, _ in REFUSED])
def test_the_plan_refuses_the_cell_with_its_reason(loaded_files, row, column, cell):
    problems = _problems(*_config(row, loaded_files, *_split(column)))
    assert problems is not None, f"{row} -> {column}: the plan accepts it; the table says {cell}"
    assert any(REASONS[cell[1]] in p for p in problems), problems


@pytest.mark.parametrize("row, backend, fmt, cell", REFUSED_PAIRS,
                         ids=[f"{r}->{b}->{f}" for r, b, f, _ in REFUSED_PAIRS])
def test_the_plan_refuses_the_compile_export_pair_with_its_reason(loaded_files, row, backend, fmt, cell):
    problems = _problems(*_config(row, loaded_files, backend, fmt))
    assert problems is not None, f"{row} -> {backend} -> {fmt}: the plan accepts it; the table says {cell}"
    assert any(REASONS[cell[1]] in p for p in problems), problems


def test_every_other_cell_is_as_the_table_says(loaded_files):
    """Cells accepted by the table are accepted by the plan; CUDA cells are refused on CPU for the
    device; the refused cells tested elsewhere are refused here too."""
    if torch.cuda.is_available():
        pytest.skip("the CUDA cells are checked as CPU refusals")
    wrong = []
    cells = [(row, *_split(column), cell) for row, column, cell in table_cells()
             if not cell.startswith("✗") or (row, column) in COVERED]
    cells += [(row, backend, fmt, cell) for row, backend, fmt, cell in pair_cells() if not cell.startswith("✗")]
    for row, backend, fmt, cell in cells:
        problems = _problems(*_config(row, loaded_files, backend, fmt))
        if cell == "CUDA":
            ok = problems is not None and any(CUDA_REASON in p for p in problems)
        elif cell.startswith("✗"):
            ok = problems is not None
        else:   # ✓, tol, run: the plan accepts it
            ok = problems is None
        if not ok:
            wrong.append(f"{row} -> {backend or '-'} -> {fmt or '-'}: table {cell}, plan {problems or 'accepts'}")
    assert not wrong, "\n".join(wrong)


def test_every_recipe_backend_and_format_has_its_row_or_column():
    from ptflow.stages.compile import backends
    import ptflow.stages.compile.stage  # noqa: F401 (each stage registers what ptflow ships)
    from ptflow.stages.export import formats
    import ptflow.stages.export.stage  # noqa: F401
    from ptflow.stages.quantize import recipes
    import ptflow.stages.quantize.stage  # noqa: F401

    assert set(TABLE) == set(recipes()) | set(LOADED)
    assert set(COMPILES) == set(backends()) == set(PAIRS)
    assert set(FORMATS) == set(formats())


def _docs_table() -> dict[str, list[str]]:
    """The docs page's combined table, row -> cells (✗ and a footnote letter, ✓, CUDA, tol, run)."""
    text = (ROOT / "docs" / "recipes" / "combinations.md").read_text()
    heading = re.search(r"^#+ Which combinations work[ \t]*$", text, re.MULTILINE)
    assert heading is not None, "docs/recipes/combinations.md lost its 'Which combinations work' heading"
    rows = {}
    for line in text[heading.end():].splitlines()[1:]:
        if line.startswith("#"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 14 and not set(cells[1]) <= set("-: "):
            name = cells[0].strip("`")
            rows[name] = [re.sub(r"\s+", "", c).replace("<sup>", "").replace("</sup>", "") for c in cells[1:]]
    return rows


def test_the_docs_table_is_this_table():
    rows = _docs_table()
    assert set(TABLE) <= set(rows), sorted(set(TABLE) - set(rows))
    assert {name: cells for name, cells in rows.items() if name in TABLE} == \
        {row: _cells(text) for row, text in TABLE.items()}


SCALE = 0.5   # a module-level float: TorchScript cannot close over it


class _DoesNotScript(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * SCALE


def test_a_model_that_does_not_script_says_why_and_where_in_one_line():
    """Run-time, not plan time: whether code scripts depends on the code. TorchScript's own
    message starts with a blank line (the console showed 'RuntimeError: ' and nothing more)."""
    from ptflow.core.errors import InputError
    from ptflow.stages.compile.legacy import _script

    with pytest.raises(InputError) as caught:
        _script(_DoesNotScript())
    message = str(caught.value)
    assert "\n" not in message and message.startswith("compile=torchscript_script: torch.jit.script cannot "
                                                      "compile _DoesNotScript: python value of type 'float'")
    assert "test_combinations.py, line " in message and "use compile=torchscript_trace" in message


# --- AOTI packages: byte-identical exports ----------------------------------------------------

def _export_aoti(run_dir):
    import hashlib

    from ptflow.core import engine
    from tests.conftest import make_context

    config, choices = compose(*TINY, "model.builder.hidden=16", "model.builder.depth=1",
                              "pipeline=[load,validate,export]", "export.formats=[aoti]")
    plan = compile_plan(config, choices)
    torch.manual_seed(plan.settings.seed)   # as the job runner does: the same config, the same weights
    engine.run(plan, make_context(run_dir, plan), ())
    package = run_dir / "export" / "model.aoti.pt2"
    return package, hashlib.sha256(package.read_bytes()).hexdigest()


@pytest.mark.slow
def test_two_aoti_exports_of_the_same_config_are_byte_identical(tmp_path):
    """~25 s on 2 cores with a cold inductor cache (two AOTInductor builds). The second build
    reuses the cache, where inductor has appended its build commands to the generated sources
    once more; the partial file's name (with the pid) no longer names the zip's top directory."""
    import zipfile

    first, digest = _export_aoti(tmp_path / "a")
    second, again = _export_aoti(tmp_path / "b")
    assert digest == again
    with zipfile.ZipFile(second) as package:
        names = package.namelist()
        sources = [package.read(n) for n in names if n.endswith(".cpp")]
    assert {n.split("/")[0] for n in names} == {"archive"}
    assert sources and all(s.count(b"// Compile cmd") == 1 for s in sources)


def test_only_the_last_copy_of_the_build_commands_is_kept():
    from ptflow.stages.export.torch_formats import _one_copy_of_build_commands

    code = b"void kernel() {}\n"
    block = b"\n// Compile cmd\n// g++ -c k.cpp\n// Link cmd\n// g++ -shared k.o\n"
    newer = b"\n// Compile cmd\n// g++ -O3 -c k.cpp\n// Link cmd\n// g++ -shared k.o\n"
    assert _one_copy_of_build_commands(code + block + block + newer) == code + newer
    assert _one_copy_of_build_commands(code + block) == code + block
    assert _one_copy_of_build_commands(code) == code
    assert _one_copy_of_build_commands(code + block + b"// more\n") == code + block + b"// more\n"
