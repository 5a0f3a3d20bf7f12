"""`_target_` builders checked without importing them (a command line Hydra refused is
answered before torch loads): the same answer as importing them for a missing module or name,
and a pass, never a false problem, where the source cannot say."""
from __future__ import annotations

import sys

import pytest

from ptflow.core.targets import check_target


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A user's package on the import path, none of it importable without running code."""
    pkg = tmp_path / "userpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "models.py").write_text(
        "raise RuntimeError('importing me runs code')\n"
        "from torch import nn as torch_nn\n"
        "class Net:\n    pass\n"
        "def build(width=8):\n    return Net()\n"
        "SIZE, (A, B) = 3, (1, 2)\n")
    (pkg / "star.py").write_text("raise RuntimeError('no')\nfrom os.path import *\n")
    (pkg / "lazy.py").write_text("raise RuntimeError('no')\ndef __getattr__(name):\n    return name\n")
    (pkg / "broken.py").write_text("def (:\n")
    (tmp_path / "badparent").mkdir()
    (tmp_path / "badparent" / "__init__.py").write_text("raise ValueError('parent fails')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith(("userpkg", "badparent"))]:
        del sys.modules[name]


def _static(target: str, **kwargs) -> list:
    return check_target({"_target_": target, **kwargs}, "model.builder", imports=False)


@pytest.mark.parametrize("name", ["Net", "build", "SIZE", "A", "torch_nn"])
def test_names_the_source_defines_pass_without_running_it(project, name):
    assert _static(f"userpkg.models.{name}") == []
    assert "userpkg.models" not in sys.modules        # found, never executed


def test_a_missing_name_or_module_reads_as_when_imported(project):
    (problem,) = _static("userpkg.models.Nett")
    assert problem.key == "model.builder._target_"
    assert problem.hint == "module 'userpkg.models' has no 'Nett'; did you mean 'Net'?"
    (problem,) = _static("userpkg.nosuch.Net")
    assert "No module named 'userpkg.nosuch'" in problem.hint
    (problem,) = _static("elsewhere.models.Net")
    assert "it is neither an installed package nor a module in" in problem.hint
    (problem,) = _static("Net")
    assert "not a dotted path" in problem.hint


def test_what_the_source_cannot_say_passes_and_importing_tells_later(project):
    assert _static("userpkg.star.join") == []          # a star import
    assert _static("userpkg.lazy.anything") == []      # a module __getattr__
    assert _static("userpkg.broken.f") == []           # a syntax error: importing names it
    (problem,) = check_target({"_target_": "userpkg.broken.f"}, "model.builder")
    assert "SyntaxError" in problem.hint


def test_arguments_are_left_for_the_import(project):
    """The signature needs the callable: a wrong keyword is found once the line composes."""
    assert _static("userpkg.models.build", widht=3) == []


def test_a_parent_package_that_fails_is_named(project):
    (problem,) = _static("badparent.mod.f")
    assert "importing the package of 'badparent.mod' raised ValueError: parent fails" in problem.hint
