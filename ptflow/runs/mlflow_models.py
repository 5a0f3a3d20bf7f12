"""Exported files as MLflow models: the checked file itself, with signature and input example.

The export stage writes and verifies the files; once the run has finished, the tracker
logs each ``pt2`` and ``onnx`` file of the manifest as an MLflow model (a LoggedModel
linked to the run, loadable with ``mlflow.pytorch.load_model`` / ``mlflow.onnx.load_model``
and, where MLflow's flavor can, ``mlflow.pyfunc.load_model``) and registers one under
``export.register_as`` once the store's copy is checked (``ptflow.runs.logged_model_check``).
The model holds the very bytes the manifest hashes: nothing is re-exported or re-saved. Signature and input example come from ``<name>.example.safetensors``.

A ``.pt2`` that needs modules imported before it loads (its manifest entry's ``requires``:
PT2E's operator library, a Hugging Face output class, torchao's tensor subclasses) gets
their packages in ``requirements.txt`` and, for ``mlflow.pyfunc.load_model`` and ``mlflow
models serve``, a loader module ``code/ptflow_loader.py`` that imports exactly those modules
and then loads the file as ``mlflow.pytorch`` does (its text is fixed by ``loader_source``,
so the check before registering can compare it byte for byte). ``mlflow.pytorch.load_model``
runs no model code: import the ``requires`` modules first, as the manifest's load line does.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ptflow.runs.model_loader import LOADER_MODULE, loader_source

MODEL_FORMATS = ("pt2", "onnx")        # in the order register_as prefers them

MODEL_TAG = "ptflow.model.{fmt}"       # run tag: the logged model's models:/ URI
REGISTERED_TAG = "ptflow.registered"   # run tag: <name>/<version> when register_as registered one
AWAIT_REGISTRATION_S = 60


@dataclass(frozen=True)
class LoggedModel:
    format: str
    model_id: str
    uri: str                        # models:/<model_id>
    registered: str | None = None   # <name>/<version>


def model_name(manifest: Mapping[str, Any], fmt: str, stem: str | None = None) -> str:
    """The LoggedModel's name: the recipe (``stem``) or else the export's file stem, plus the
    format (int8_static-inductor-pt2, model-pt2)."""
    if stem is None:
        entry = next(e for e in manifest["files"] if e["format"] == fmt)
        stem = entry["file"].split(".")[0]
    return f"{stem}-{fmt}"


def log_exported_models(uri: str, run_id: str, manifest_path: Path, present_tags: Mapping[str, str],
                        stem: str | None = None) -> list[LoggedModel]:
    """Log every pt2/onnx file of the manifest not logged yet (its tag absent from the run)."""
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    example = manifest.get("example")
    if not example:   # a manifest from before examples existed: nothing to build a signature from
        return []
    export_dir = manifest_path.parent
    tensors = _load_example(export_dir / example["file"])
    entries = [e for e in manifest["files"] if e["format"] in MODEL_FORMATS]
    register_as = manifest.get("register_as")
    registering = next((e["format"] for fmt in MODEL_FORMATS for e in entries if e["format"] == fmt), None)
    logged = []
    with global_tracking_uri(uri):   # Model.log and the registry use MLflow's global URI
        for entry in entries:
            if MODEL_TAG.format(fmt=entry["format"]) in present_tags:
                continue
            builder = _log_pt2 if entry["format"] == "pt2" else _log_onnx
            model = builder(export_dir / entry["file"], manifest, example, tensors, run_id,
                            model_name(manifest, entry["format"], stem))
            if register_as and entry["format"] == registering:
                model = _register(model, run_id, register_as)
            logged.append(model)
    return logged


def _register(model: LoggedModel, run_id: str, name: str) -> LoggedModel:
    """Register the model just logged — once it is checked, as the store now holds it, to be
    the file the run exported (``ptflow.runs.logged_model_check``): another writer of the store
    could have changed it since."""
    import mlflow

    from ptflow.runs.logged_model_check import check_logged_model

    check_logged_model(mlflow.MlflowClient(), run_id, model.uri, model.format)
    version = mlflow.register_model(model.uri, name, await_registration_for=AWAIT_REGISTRATION_S)
    return dataclasses.replace(model, registered=f"{name}/{version.version}")


@contextlib.contextmanager
def global_tracking_uri(uri: str):
    """MLflow's global tracking URI set for a block, then put back as it was, environment
    included: ``mlflow.set_tracking_uri`` also exports MLFLOW_TRACKING_URI, which the next job
    of an in-process sweep would otherwise read as its own tracking.uri."""
    import mlflow
    from mlflow.tracking._tracking_service import utils

    saved_env, saved_global = os.environ.get("MLFLOW_TRACKING_URI"), utils._tracking_uri
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved_global)
        if saved_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved_env


def _load_example(path: Path) -> dict[str, Any]:
    from safetensors.numpy import load_file

    return load_file(str(path))


def signature(example: Mapping[str, Any], input_names: list[str | None] | None = None):
    """MLflow's tensor signature: the example's inputs and outputs, -1 where a dim is dynamic.
    A single unnamed input makes MLflow pass one array (not a dict) to the model."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    def schema(described, names):
        return Schema([TensorSpec(np.dtype(d["dtype"]), tuple(d["shape"]), name)
                       for d, name in zip(described, names)])

    names = input_names if input_names is not None else [d["name"] for d in example["inputs"]]
    outputs = example["outputs"]
    return ModelSignature(inputs=schema(example["inputs"], names),
                          outputs=schema(outputs, [None] if len(outputs) == 1 else [d["name"] for d in outputs]))


def _inputs(example: Mapping[str, Any], tensors: Mapping[str, Any], names: list[str] | None = None):
    """The example's inputs as MLflow takes them: one array, or a dict of named arrays."""
    described = example["inputs"]
    arrays = [tensors[f"input.{d['name']}"] for d in described]
    if len(arrays) == 1 and example.get("passed_as") != "keyword" and names is None:
        return arrays[0]
    return dict(zip(names or [d["name"] for d in described], arrays))


def _requirements(manifest: Mapping[str, Any], fmt: str) -> list[str]:
    entry = next(e for e in manifest["files"] if e["format"] == fmt)
    import mlflow

    pins = {"mlflow": mlflow.__version__, **entry.get("versions", {})}
    return [f"{package}=={version.split('+')[0]}" for package, version in sorted(pins.items())]


def _log(flavor: Any, manifest: Mapping[str, Any], fmt: str, run_id: str, name: str, **kwargs: Any) -> LoggedModel:
    """Model.log with a flavor writing the file as is. MLflow's serving check (reload and
    predict the example) is off: the export stage already reloaded this very file fresh and
    compared it on every eval batch, and the check would cost seconds per run."""
    import mlflow
    from mlflow.models import Model

    # Created here, in the run's experiment: Model.log alone would put it in MLflow's active
    # (default: 0) experiment, with its artifacts under ./mlruns of whatever dir ptflow ran in.
    experiment_id = mlflow.MlflowClient().get_run(run_id).info.experiment_id
    model = mlflow.initialize_logged_model(
        name=name, source_run_id=run_id, experiment_id=experiment_id,
        tags={"ptflow.format": fmt, "ptflow.config_hash": str(manifest.get("config_hash"))})
    info = Model.log(artifact_path=None, flavor=flavor, run_id=run_id, model_id=model.model_id, **kwargs)
    return LoggedModel(fmt, info.model_id, f"models:/{info.model_id}")


def _log_pt2(file: Path, manifest: Mapping[str, Any], example: Mapping[str, Any], tensors: Mapping[str, Any],
             run_id: str, name: str) -> LoggedModel:
    """The .pt2 program in MLflow's pytorch flavor layout (data/model.pt2), the same bytes."""
    input_example = _inputs(example, tensors)
    sig = signature(example, None if isinstance(input_example, dict) else [None])
    requirements = _requirements(manifest, "pt2")
    # MLflow's pytorch pyfunc feeds one array and expects one tensor back
    pyfunc = not isinstance(input_example, dict) and len(example["outputs"]) == 1
    requires = next(e for e in manifest["files"] if e["format"] == "pt2").get("requires") or []

    def save_model(path: str, mlflow_model: Any, **_: Any) -> None:
        import mlflow
        from mlflow.models.utils import _save_example
        from mlflow.utils.environment import _mlflow_conda_env, _PythonEnv
        import yaml

        root = Path(path)
        (root / "data").mkdir(parents=True)
        shutil.copyfile(file, root / "data" / "model.pt2")
        mlflow_model.signature = sig
        _save_example(mlflow_model, input_example, str(root))
        torch_version = manifest.get("versions", {}).get("torch", "")
        mlflow_model.add_flavor("pytorch", model_data="data", pytorch_version=torch_version, code=None)
        if pyfunc:
            loader = "mlflow.pytorch"
            if requires:   # a loader that imports what the file needs, then mlflow.pytorch's
                (root / "code").mkdir()
                (root / "code" / f"{LOADER_MODULE}.py").write_text(loader_source(requires), encoding="utf-8")
                loader = LOADER_MODULE
            mlflow.pyfunc.add_to_model(mlflow_model, loader_module=loader, data="data",
                                       pickle_module_name="mlflow.pytorch.pickle_module",
                                       code="code" if requires else None,
                                       conda_env="conda.yaml", python_env="python_env.yaml",
                                       model_config={"device": None})
        mlflow_model.save(str(root / "MLmodel"))
        (root / "requirements.txt").write_text("\n".join(requirements) + "\n")
        with (root / "conda.yaml").open("w") as handle:
            yaml.safe_dump(_mlflow_conda_env(additional_pip_deps=requirements, install_mlflow=False), handle,
                           default_flow_style=False)
        _PythonEnv.current().to_yaml(str(root / "python_env.yaml"))

    flavor = SimpleNamespace(__name__="mlflow.pytorch", save_model=save_model)
    return _log(flavor, manifest, "pt2", run_id, name, serialization_format="pt2", validate_serving_input=False)


def _log_onnx(file: Path, manifest: Mapping[str, Any], example: Mapping[str, Any], tensors: Mapping[str, Any],
              run_id: str, name: str) -> LoggedModel:
    """The .onnx file in MLflow's onnx flavor (runs with onnxruntime through pyfunc): the
    flavour's files, with the exported bytes themselves as model.onnx (MLflow's own save
    would serialise the proto again, and the manifest's sha256 would no longer match)."""
    import mlflow.onnx
    import onnx

    proto = onnx.load(str(file))
    initializers = {init.name for init in proto.graph.initializer}
    names = [i.name for i in proto.graph.input if i.name not in initializers]
    sig = signature(example, names)
    input_example = _inputs(example, tensors, names)
    requirements = _requirements(manifest, "onnx")

    def save_model(path: str, mlflow_model: Any, **_: Any) -> None:
        mlflow.onnx.save_model(proto, path, mlflow_model=mlflow_model, signature=sig, input_example=input_example,
                               pip_requirements=requirements, save_as_external_data=False,
                               onnx_execution_providers=_providers())
        shutil.copyfile(file, Path(path) / "model.onnx")

    flavor = SimpleNamespace(__name__="mlflow.onnx", save_model=save_model)
    return _log(flavor, manifest, "onnx", run_id, name, validate_serving_input=False)


def _providers() -> list[str]:
    """The onnxruntime providers this install has, CUDA first (MLflow's default names CUDA even
    where onnxruntime lacks it, and warns at every load)."""
    import onnxruntime

    available = onnxruntime.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
