"""The design's import rules, each kept here: the package order, no import circle, stages
found by entry point only, and the CLI's start-up promise."""
from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.conftest import ROOT

# ptflow's packages, lowest first: each may import only the ones before it (and ptflow.moved).
ORDER = ("core", "inputs", "zoo", "measure", "decide", "runs", "app", "review", "serve")


def _sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _module(path: Path) -> str:
    """ptflow/core/plan.py -> ptflow.core.plan; stages/quantize/stage.py -> ptflow.stages.quantize.stage."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[0] == "stages":
        parts.insert(0, "ptflow")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every ptflow module `path` imports, at the top or inside functions."""
    module = _module(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.update([base] + [f"{base}.{alias.name}" for alias in node.names])
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name == "ptflow" or name.startswith("ptflow.")}


def _graph() -> dict[str, set[str]]:
    paths = _sources("ptflow") + _sources("stages")
    modules = {_module(p) for p in paths}
    graph = {}
    for path in paths:
        edges = set()
        for name in _imports(path):
            while name and name not in modules:   # ptflow.core.plan.Plan -> ptflow.core.plan
                name = name.rpartition(".")[0]
            if name and name != _module(path):
                edges.add(name)
        graph[_module(path)] = edges
    return graph


def test_no_module_is_in_an_import_circle():
    graph = _graph()

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    assert sorted(m for m in graph if m in reach(m)) == []


def test_every_ptflow_module_lives_in_a_package_of_the_order():
    loose = [p.name for p in (ROOT / "ptflow").glob("*.py") if p.name not in ("__init__.py", "__main__.py", "moved.py")]
    packages = {p.name for p in (ROOT / "ptflow").iterdir() if (p / "__init__.py").exists()}
    assert loose == [] and packages == set(ORDER)


def test_a_package_imports_only_the_packages_before_it():
    wrong = []
    for path in _sources("ptflow"):
        parts = path.relative_to(ROOT / "ptflow").parts
        if len(parts) < 2:
            continue
        mine = ORDER.index(parts[0])
        for name in _imports(path):
            other = name.split(".")[1] if name.count(".") else ""
            if other == "stages" or (other in ORDER and ORDER.index(other) > mine):
                wrong.append(f"{path.relative_to(ROOT)} imports {name}")
    assert wrong == []


def test_core_imports_no_other_ptflow_package():
    imported = {name.split(".")[1] for p in _sources("ptflow/core") for name in _imports(p) if name.count(".")}
    assert imported <= {"core"}, imported


def test_every_package_says_what_lives_there_and_what_it_may_import():
    for name in ORDER:
        doc = ast.get_docstring(ast.parse((ROOT / "ptflow" / name / "__init__.py").read_text())) or ""
        assert name == "zoo" or "May import" in doc, name
    for family in ("quantize", "compile", "export", "benchmark"):
        assert ast.get_docstring(ast.parse((ROOT / "stages" / family / "__init__.py").read_text())), family


def test_a_stage_family_registry_imports_nothing_of_its_family():
    for family in ("quantize", "compile", "export"):
        registry = ROOT / "stages" / family / "registry.py"
        assert not {n for n in _imports(registry) if n.startswith(f"ptflow.stages.{family}")}, family


def test_the_engine_never_imports_stages_by_name():
    pattern = re.compile(r"^\s*(from|import)\s+(ptflow\.)?stages\b", re.MULTILINE)
    assert [p.name for p in _sources("ptflow") if pattern.search(p.read_text())] == []


def test_stages_never_see_omegaconf_or_hydra():
    pattern = re.compile(r"^\s*(from|import)\s+(omegaconf|hydra)\b", re.MULTILINE)
    assert [p.name for p in _sources("stages") if pattern.search(p.read_text())] == []


def test_help_does_not_import_torch_or_mlflow():
    code = ("import sys; from ptflow.app.cli import run; run(['--help']); "
            "print(sorted(m for m in ('torch', 'mlflow', 'torchao') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("[]")
    assert "quantize" in out and "int8_dynamic" in out


def test_a_bare_help_imports_not_even_hydra():
    """`ptflow --help` alone has nothing to parse or compose: it lists the config groups."""
    code = ("import sys; from ptflow.app.cli import run; run(['--help']); "
            "print(sorted(m for m in ('hydra', 'omegaconf', 'torch', 'mlflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("[]") and "int8_dynamic" in out


# Libraries a run imports only once a stage or the tracker needs them (issue 19: a run's
# start-up, a rejected config and a dry run do not pay for them).
RUN_TIME_ONLY = ("mlflow", "torchao", "torch._dynamo", "onnx", "onnxruntime", "onnxscript", "matplotlib",
                 "transformers", "sklearn", "scipy")


def test_checking_a_config_imports_none_of_what_only_a_run_needs(tmp_path):
    """A rejected config and a dry run do not import the libraries of the run itself (a dry run
    imports torch: it imports the builders it checks); importing the run's own modules does not
    import them either."""
    code = textwrap.dedent(f"""
        import json, sys
        from ptflow.app.cli import run
        seen = {{}}
        def note(step, code):
            seen[step] = [code, [m for m in {RUN_TIME_ONLY!r} if m in sys.modules]]
        note("rejected", run(["quantize=int8_dynamik"]))
        note("dry run", run(["dry_run=true"]))
        import ptflow.app.job, ptflow.app.preflight, ptflow.measure.plots, ptflow.runs.mlflow_models
        import ptflow.runs.tracker, ptflow.stages.export.stage
        note("the run's modules", 0)
        print(json.dumps(seen))
        """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=True)
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == {"rejected": [2, []], "dry run": [0, []], "the run's modules": [0, []]}, done.stderr[-2000:]


def test_a_rejected_command_line_is_answered_without_torch(tmp_path):
    """Every stage module imports torch where it uses it, and a command line Hydra refuses
    checks the `_target_` builders from their source: the answer comes before torch loads.
    A typo in a builder's name is still in the same answer."""
    code = textwrap.dedent("""
        import json, sys
        from importlib.metadata import entry_points
        for entry in entry_points(group="ptflow.stages"):
            entry.load()
        import ptflow.stages.quantize, ptflow.stages.compile, ptflow.stages.export
        after_stages = "torch" in sys.modules
        from ptflow.app.cli import run
        code = run(["quantize=int8_dynamik", "model.builder._target_=ptflow.zoo.digits.DigitsMLPP"])
        print(json.dumps([after_stages, code, "torch" in sys.modules]))
        """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=True)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [False, 2, False], done.stderr[-2000:]
    assert "did you mean 'int8_dynamic'" in done.stderr
    assert "module 'ptflow.zoo.digits' has no 'DigitsMLPP'; did you mean 'DigitsMLP'?" in done.stderr


def test_the_command_line_modules_stay_small():
    """Hydra expands and composes; ptflow's command line and pre-flight only check."""
    sizes = {name: len((ROOT / "ptflow" / "app" / name).read_text().splitlines()) for name in ("cli.py", "preflight.py")}
    assert all(lines <= 250 for lines in sizes.values()), sizes


def test_every_package_ships_in_the_wheel():
    """pyproject lists packages by hand (stages/ and conf/ are mapped into ptflow): a package
    left out would be missing from every install but this checkout."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {_module(p) for p in _sources("ptflow") + _sources("stages") if p.name == "__init__.py"}
    assert on_disk - listed == set()
