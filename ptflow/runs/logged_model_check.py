"""Is the MLflow model about to be registered (or served) the one the run exported?

Anyone who can write to a shared tracking store can repoint a run's ``ptflow.model.<fmt>``
tag at a model of their own, or overwrite a logged model's files in place — and
``mlflow.pyfunc.load_model`` runs a model's ``loader_module`` and ``code/``. So before
ptflow registers a model it downloads it and checks, naming the first mismatch:

- the model was logged by this very run (``source_run_id``);
- its model file has the sha256 the run's export manifest records (and the manifest in the
  store agrees with the run dir's, when that is on this machine);
- its ``MLmodel`` holds exactly the flavours ptflow writes (``pytorch`` + ``python_function``
  loading with ``mlflow.pytorch``, or ``onnx`` + ``python_function`` with ``mlflow.onnx``),
  with no ``code``, no ``python_model``, no other loader — except a ``.pt2`` whose manifest
  entry ``requires`` modules: its pyfunc loader is ``code/ptflow_loader.py``, byte for byte
  the text ptflow writes for exactly those modules;
- it holds no file ptflow did not write (no ``model.pth`` for MLflow to unpickle, no other
  ``code/``), and its requirements name only the packages its manifest pins;
- a ``.pt2`` passes the archive audit (``ptflow.inputs.archive_audit``): no pickled code.
"""
from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

MANIFEST_ARTIFACT = "files/export.manifest/manifest.json"
COMMON_FILES = frozenset({"MLmodel", "conda.yaml", "python_env.yaml", "requirements.txt", "input_example.json",
                          "serving_input_example.json", "registered_model_meta"})
MODEL_FILE = {"pt2": "data/model.pt2", "onnx": "model.onnx"}
ENV = {"conda": "conda.yaml", "virtualenv": "python_env.yaml"}
ANY = object()
# flavour -> key -> the value ptflow writes (ANY: any value); a key not listed must not be there
FLAVOURS: dict[str, dict[str, dict[str, Any]]] = {
    "pt2": {"pytorch": {"model_data": "data", "code": None, "pytorch_version": ANY},
            "python_function": {"loader_module": "mlflow.pytorch", "data": "data", "code": None,
                                "pickle_module_name": "mlflow.pytorch.pickle_module", "env": ENV,
                                "python_version": ANY, "config": ANY}},
    "onnx": {"onnx": {"data": "model.onnx", "code": None, "onnx_version": ANY, "providers": ANY,
                      "onnx_session_options": None},
             "python_function": {"loader_module": "mlflow.onnx", "data": "model.onnx", "code": None, "env": ENV,
                                 "python_version": ANY}},
}
MAIN_FLAVOUR = {"pt2": "pytorch", "onnx": "onnx"}
BUILD_TOOLS = frozenset({"pip", "setuptools", "wheel"})
REQUIREMENT = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:(==|<=|>=)\s*([A-Za-z0-9.+!*-]+))?$")


class Untrusted(Exception):
    """The logged model is not what the run exported: the message names the mismatch."""


def model_id_of(uri: str) -> str:
    return uri.removeprefix("models:/").split("/")[0]


def check_logged_model(client: Any, run_id: str, uri: str, fmt: str) -> None:
    """Raise Untrusted unless the model at `uri` (models:/<model_id>) is the `fmt` file run
    `run_id` exported, unaltered. Downloads the model and the run's manifest."""
    from mlflow.artifacts import download_artifacts

    model = client.get_logged_model(model_id_of(uri))
    if model.source_run_id != run_id:
        raise Untrusted(f"{uri} was logged by run {model.source_run_id}, not by run {run_id} (its tag "
                        f"ptflow.model.{fmt} was pointed elsewhere)")
    with tempfile.TemporaryDirectory(prefix="ptflow-model-check-") as scratch:
        manifest = run_manifest(client, run_id, Path(scratch))
        entry = next((e for e in manifest.get("files", []) if e.get("format") == fmt), None)
        if entry is None or not entry.get("sha256"):
            raise Untrusted(f"run {run_id}'s export manifest records no {fmt} file to check {uri} against")
        folder = Path(download_artifacts(artifact_uri=model.artifact_location, dst_path=str(Path(scratch) / "model"),
                                         tracking_uri=client.tracking_uri))
        check_model_dir(folder, fmt, entry, run_id)


def run_manifest(client: Any, run_id: str, scratch: Path) -> dict[str, Any]:
    """The run's export manifest from the store; it must agree with the run dir's copy, when
    the run dir is on this machine."""
    try:
        stored = json.loads(Path(client.download_artifacts(run_id, MANIFEST_ARTIFACT, str(scratch))).read_text())
    except Exception as error:
        raise Untrusted(f"run {run_id} has no readable export manifest ({MANIFEST_ARTIFACT}): {error}") from None
    run_dir = client.get_run(run_id).data.tags.get("ptflow.run_dir")
    local = Path(run_dir) / "export" / "manifest.json" if run_dir else None
    if local is not None and local.is_file():
        try:
            here = json.loads(local.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            here = None
        if here is not None and here.get("files") != stored.get("files"):
            raise Untrusted(f"the export manifest in the store differs from the run dir's {local}: one was edited")
    return stored


def check_model_dir(folder: Path, fmt: str, entry: Mapping[str, Any], run_id: str | None = None) -> None:
    """Raise Untrusted unless the MLflow model directory `folder` is what ptflow writes for
    the manifest `entry` of format `fmt`."""
    import yaml

    from ptflow.core.files import sha256_file

    from ptflow.runs.model_loader import LOADER_MODULE, loader_source

    files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    requires = entry.get("requires") or [] if fmt == "pt2" else []
    loader_file = f"code/{LOADER_MODULE}.py"
    extra = sorted(files - COMMON_FILES - {MODEL_FILE[fmt]} - ({loader_file} if requires else set()))
    if extra:
        raise Untrusted(f"the model holds files ptflow does not write: {', '.join(extra[:5])}")
    model_file = folder / MODEL_FILE[fmt]
    if not model_file.is_file():
        raise Untrusted(f"the model has no {MODEL_FILE[fmt]}")
    digest = sha256_file(model_file)
    if digest != entry["sha256"]:
        raise Untrusted(f"its {MODEL_FILE[fmt]} has sha256 {digest[:12]}…, the run's manifest records "
                        f"{str(entry['sha256'])[:12]}… for {entry.get('file')}")
    try:
        mlmodel = yaml.safe_load((folder / "MLmodel").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise Untrusted(f"its MLmodel cannot be read: {error}") from None
    if requires:
        try:
            expected_loader = loader_source(list(requires))
        except ValueError as error:
            raise Untrusted(f"the run's manifest requires {error}") from None
        loader_path = folder / loader_file
        if loader_path.is_file() and loader_path.read_bytes() != expected_loader.encode("utf-8"):
            raise Untrusted(f"its {loader_file} is not the loader ptflow writes for {list(requires)}")
    _check_mlmodel(mlmodel, fmt, run_id, loader=(folder / loader_file).is_file() and bool(requires))
    _check_requirements(folder, entry)
    if fmt == "pt2":
        from ptflow.inputs.archive_audit import audit_pt2_bytes

        problems = audit_pt2_bytes(model_file.read_bytes())
        if problems:
            raise Untrusted(f"its {MODEL_FILE[fmt]} would run code when loaded: {problems[0]}")


def _check_mlmodel(mlmodel: Any, fmt: str, run_id: str | None, loader: bool = False) -> None:
    if not isinstance(mlmodel, dict) or not isinstance(mlmodel.get("flavors"), dict):
        raise Untrusted("its MLmodel has no flavors")
    if run_id is not None and mlmodel.get("run_id") not in (None, run_id):
        raise Untrusted(f"its MLmodel names run {mlmodel.get('run_id')}, not {run_id}")
    flavours, expected = mlmodel["flavors"], FLAVOURS[fmt]
    if loader:   # the pt2 pyfunc loads through code/ptflow_loader.py (checked by the caller)
        from ptflow.runs.model_loader import LOADER_MODULE

        expected = {**expected, "python_function": {**expected["python_function"], "loader_module": LOADER_MODULE,
                                                    "code": "code"}}
    unknown = sorted(set(flavours) - set(expected))
    if unknown or MAIN_FLAVOUR[fmt] not in flavours:
        raise Untrusted(f"its MLmodel has flavours {sorted(flavours)}; ptflow writes {sorted(expected)}")
    for name, fields in flavours.items():
        if not isinstance(fields, dict):
            raise Untrusted(f"its MLmodel flavour {name} is not a mapping")
        for key, value in fields.items():
            wanted = expected[name].get(key, KeyError)
            if wanted is KeyError:
                raise Untrusted(f"its MLmodel flavour {name} has {key}={value!r}, which ptflow never writes")
            if wanted is not ANY and value != wanted:
                raise Untrusted(f"its MLmodel flavour {name} has {key}={value!r}; ptflow writes {wanted!r}")


def _check_requirements(folder: Path, entry: Mapping[str, Any]) -> None:
    """Every package the model's environment files install is one its manifest pins (or mlflow)."""
    import yaml

    pins = {_name(k): str(v).split("+")[0] for k, v in (entry.get("versions") or {}).items()}
    allowed = set(pins) | {"mlflow"}
    lines: list[str] = []
    if (folder / "requirements.txt").is_file():
        lines += (folder / "requirements.txt").read_text(encoding="utf-8").splitlines()
    envs = {}
    for name in ("conda.yaml", "python_env.yaml"):
        if (folder / name).is_file():
            try:
                envs[name] = yaml.safe_load((folder / name).read_text(encoding="utf-8")) or {}
            except yaml.YAMLError as error:
                raise Untrusted(f"its {name} cannot be read: {error}") from None
    conda = envs.get("conda.yaml", {})
    if conda.get("channels", ["conda-forge"]) != ["conda-forge"]:
        raise Untrusted(f"its conda.yaml names channels {conda.get('channels')}; ptflow writes conda-forge only")
    for item in conda.get("dependencies") or []:
        if isinstance(item, dict) and set(item) == {"pip"}:
            lines += [str(line) for line in item["pip"] or []]
        elif not (isinstance(item, str) and re.match(r"^(python|pip)([<>=].*)?$", item)):
            raise Untrusted(f"its conda.yaml installs {item!r}, which ptflow does not write")
    python_env = envs.get("python_env.yaml", {})
    if (python_env.get("dependencies") or ["-r requirements.txt"]) != ["-r requirements.txt"]:
        raise Untrusted(f"its python_env.yaml installs {python_env.get('dependencies')}")
    for line in python_env.get("build_dependencies") or []:
        match = REQUIREMENT.match(str(line).strip())
        if not match or _name(match.group(1)) not in BUILD_TOOLS:
            raise Untrusted(f"its python_env.yaml builds with {line!r}, which ptflow does not write")
    for line in (raw.strip() for raw in lines):
        if not line or line.startswith("#"):
            continue
        match = REQUIREMENT.match(line)
        name = _name(match.group(1)) if match else None
        if name not in allowed or (name in pins and match.group(3) not in (None, pins[name])):
            raise Untrusted(f"it requires {line!r}; the run's manifest pins only "
                            + ", ".join(f"{k}=={v}" for k, v in sorted(pins.items())) + " (and mlflow)")


def _name(package: str) -> str:
    return package.lower().replace("_", "-")
