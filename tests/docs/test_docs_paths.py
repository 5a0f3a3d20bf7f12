"""What the documentation names exists under that name.

- every `ptflow.…` module path on the site and in the README imports as written, with no
  FutureWarning (an old path from before the package layout would warn: ptflow.moved);
- every repository file the pages name (`ptflow/…`, `stages/…`, `conf/…`, `bench/…`,
  `tests/…`, and each file of the tree in "How it fits together") exists;
- the old → new table of "Extending ptflow" is ptflow.moved.MOVED, row for row;
- the CLI reference names every option of every command.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from ptflow.moved import MOVED

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
PACKAGES = {"core", "inputs", "zoo", "measure", "decide", "runs", "app", "review", "stages", "conf", "moved"}
OLD_MODULES = {old.split(".")[1] for old in MOVED if old.count(".") == 1}
EXAMPLE_FILES = {"conf/model/my_model.yaml", "conf/data/my_data.yaml", "conf/profile/default.yaml"}   # a user's own
OLD_TABLE = re.compile(r"^## Old module paths\n.*?(?=^## |\Z)", re.S | re.M)


def _pages() -> dict[str, str]:
    pages = {str(p.relative_to(REPO)): p.read_text() for p in sorted(DOCS.rglob("*.md"))}
    pages["README.md"] = (REPO / "README.md").read_text()
    return pages


IMPORTED = re.compile(r"(?:\bfrom |\bimport |-m |_target_: |::: )$")


def _dotted_paths() -> dict[str, list[str]]:
    """ptflow.… paths rooted in a ptflow package or an old module name -> the pages naming them.

    An old module's name alone is also an MLflow tag's (`ptflow.sweep`, `ptflow.summary`):
    it counts where it is imported (`from`, `import`, `-m`, `_target_:`); an old module's
    name with a name after it counts when the new module has that name (`ptflow.hf.from_pretrained`).
    """
    found: dict[str, list[str]] = {}
    for page, text in _pages().items():
        text = OLD_TABLE.sub("", text)   # the old paths, on purpose
        for match in re.finditer(r"(?<![\w./-])ptflow(?:\.[A-Za-z_]\w*)+", text):
            path = match.group(0)
            root = path.split(".")[1]
            imported = bool(IMPORTED.search(text[max(0, match.start() - 12):match.start()]))
            if root in PACKAGES:
                found.setdefault(path, []).append(page)
            elif root in OLD_MODULES and (imported or path.count(".") > 1):
                found.setdefault(("import " if imported else "") + path, []).append(page)
    return found


CHECK = """
import importlib, json, sys, warnings
warnings.simplefilter("error", FutureWarning)
bad = {}
moved = json.loads(sys.argv[2])
for entry in json.loads(sys.argv[1]):
    path = entry.removeprefix("import ")
    parts = path.split(".")
    old = ".".join(parts[:2])
    if old in moved:   # an old module's name: a tag's, unless imported or the new module has the rest
        try:
            obj = importlib.import_module(moved[old])
            for name in parts[2:]:
                obj = getattr(obj, name)
        except AttributeError:
            continue
        bad[entry] = f"an old path: write {moved[old]}{path[len(old):]}"
        continue
    for cut in range(len(parts), 1, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        except FutureWarning as warning:
            bad[entry] = f"an old path: {warning}"
            break
        try:
            for name in parts[cut:]:
                obj = getattr(obj, name)
        except AttributeError as error:
            bad[entry] = f"{error}"
        break
    else:
        bad[entry] = "no such module"
print(json.dumps(bad))
"""


def test_every_module_path_in_the_docs_imports_under_its_new_name():
    paths = _dotted_paths()
    assert "ptflow.inputs.hf.from_pretrained" in paths and "ptflow.core.stage" in paths, sorted(paths)
    done = subprocess.run([sys.executable, "-c", CHECK, json.dumps(sorted(paths)), json.dumps(MOVED)],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    bad = json.loads(done.stdout.strip().splitlines()[-1])
    assert not bad, "\n".join(f"{path} ({', '.join(sorted(set(paths[path])))}): {why}" for path, why in bad.items())


def _tree_files(text: str) -> list[str]:
    """The files of the "How it fits together" tree: entries and `name.py` on each line."""
    block = text[text.index("## How it fits together"):]
    block = block[block.index("```\n") + 4:]
    block = block[:block.index("```")]
    stack: list[str] = []
    files = []
    for line in block.splitlines():
        indent = len(line) - len(line.lstrip(" "))
        if not line.strip() or indent > 6:       # a description's continuation line
            continue
        level = indent // 2
        first = line.split()[0]
        stack = stack[:level]
        if first.endswith("/"):
            stack.append(first)
        here = "".join(stack)
        files += [here + name for name in re.findall(r"(?<![\w/])(\w+\.py)\b", line)]
    return files


def test_every_repository_file_the_docs_name_exists():
    named: dict[str, list[str]] = {}
    for page, text in _pages().items():
        for path in re.findall(r"(?<![\w/.<-])((?:ptflow|stages|conf|bench|tests)/[\w./-]*\w\.(?:py|yaml|safetensors))",
                               text):
            if path not in EXAMPLE_FILES:
                named.setdefault(path, []).append(page)
    tree = _tree_files((DOCS / "extending" / "index.md").read_text())
    assert "ptflow/core/plan.py" in tree and "stages/quantize/registry.py" in tree, tree
    for path in tree:
        named.setdefault(path, []).append("docs/extending/index.md (How it fits together)")
    missing = {path: pages for path, pages in named.items() if not (REPO / path).exists()}
    assert not missing, "\n".join(f"{path}: named in {', '.join(sorted(set(p)))}" for path, p in missing.items())


def test_the_old_paths_table_is_ptflow_moved():
    section = OLD_TABLE.search((DOCS / "extending" / "index.md").read_text())
    assert section, "Extending ptflow has no '## Old module paths' section"
    rows = dict(re.findall(r"^\| `([\w.]+)` \| `([\w.]+)` \|$", section.group(0), re.M))
    assert rows == MOVED, ("the table differs from ptflow.moved.MOVED; regenerate its rows: "
                           + "".join(f"\n| `{old}` | `{new}` |" for old, new in MOVED.items()))


def _options(*command: str) -> set[str]:
    """The long options a command's argparse parser knows: its usage lines, from --help and
    from a bad option (`ptflow --help` is ptflow's own text; Hydra's parser prints its usage
    when refusing an option)."""
    usage = ""
    for extra in ("--help", "--no-such-option-for-the-docs-test"):
        done = subprocess.run([*command, extra], capture_output=True, text=True, timeout=120)
        usage += done.stderr + done.stdout
    return set(re.findall(r"\[(--[a-z][\w-]*)", usage)) - {"--help"}


def test_the_cli_reference_names_every_option():
    bin_dir = Path(sys.executable).parent
    reference = (DOCS / "cli.md").read_text()
    missing = {}
    for command in (["ptflow"], ["ptflow-compare"], ["ptflow-reproduce"], ["ptflow-runs", "relog"],
                    ["ptflow-runs", "close-stale"]):
        options = _options(str(bin_dir / command[0]), *command[1:])
        assert options, f"{command}: found no options in its usage"
        absent = sorted(o for o in options if f"`{o}" not in reference and f"{o} " not in reference)
        if absent:
            missing[" ".join(command)] = absent
    assert not missing, f"docs/cli.md lacks: {missing}"


def test_the_readme_links_resolve():
    """The README is read on its own (GitHub, PyPI): its links into docs/ must hold there too."""
    from markdown.extensions.toc import slugify

    def anchors(text: str) -> set[str]:
        text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
        names = [re.sub(r"[`*]", "", h) for h in re.findall(r"^#{1,6} (.+)$", text, re.M)]
        return {slugify(name, "-") for name in names}

    readme = (REPO / "README.md").read_text()
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", readme):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        file = REPO / path if path else REPO / "README.md"
        if not file.is_file():
            broken.append(f"{target}: no file {path}")
        elif anchor and anchor not in anchors(file.read_text()):
            broken.append(f"{target}: no heading #{anchor} in {path or 'README.md'}")
    assert not broken, "\n".join(broken)
