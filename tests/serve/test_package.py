"""``ptflow-serve --package``: the build context and InferenceService written for a real export.
The InferenceService is read back through the kserve 0.21 SDK's own models (and the Kubernetes
client's for the core types), refusing any key those models do not have; the Dockerfile, the
requirements and ``model/`` are checked as files; a changed export file, a used folder and a
name Kubernetes cannot take are refused, leaving nothing behind."""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ptflow.serve.package import PackageError, PackageOptions, kserve_name, package_summary, write_package

PRIMITIVE = {"str": str, "int": int, "bool": bool, "float": (int, float), "object": object}


@pytest.fixture(scope="module")
def export(mlp_export) -> Path:
    """The bundled digits MLP exported as pt2 and onnx by the real pipeline (tests/serve/conftest.py,
    shared with the serving tests)."""
    return mlp_export


def _manifest(export: Path) -> dict:
    return json.loads((export / "manifest.json").read_text())


@pytest.fixture(scope="module")
def pt2(export, tmp_path_factory):
    """The default package (HPA on CPU) of the pt2 file, its warnings; the name needs making a DNS label."""
    dest, warnings = tmp_path_factory.mktemp("pt2") / "pkg", []
    paths = write_package(dest, export, _manifest(export), "pt2", name="digits_mlp", options=PackageOptions(),
                          warn=warnings.append)
    return dest, paths, warnings


@pytest.fixture(scope="module")
def onnx(export, tmp_path_factory):
    """The onnx file on Knative's concurrency autoscaler, into an empty folder that exists, ptflow by requirement."""
    dest = tmp_path_factory.mktemp("onnx") / "pkg"
    dest.mkdir()
    options = PackageOptions(autoscaler="concurrency", scale_target=4, min_replicas=0, max_replicas=5, cpu="500m",
                             memory="1Gi", ptflow_requirement="ptflow[serve]==0.1.0", image="example.org/d:1")
    write_package(dest, export, _manifest(export), "onnx", name="digits", options=options, warn=lambda m: None)
    return dest


def sdk_object(data, klass: str):
    """`data` as the SDK model `klass`: kserve's V1beta1 classes, the Kubernetes client's for core
    types (kserve's ApiClient resolves only its own module's names). A key a model lacks fails."""
    import kserve.models
    import kubernetes.client

    if data is None:
        return None
    if found := re.fullmatch(r"list\[(.*)\]", klass):
        return [sdk_object(item, found[1]) for item in data]
    if found := re.fullmatch(r"dict\(([^,]*), (.*)\)", klass):
        return {key: sdk_object(value, found[2]) for key, value in data.items()}
    if klass in PRIMITIVE:
        assert isinstance(data, PRIMITIVE[klass]), (klass, data)
        return data
    if klass.startswith("V1beta1"):
        cls = getattr(kserve.models, klass)
        unknown = set(data) - set(cls.attribute_map.values())
        assert not unknown, f"{klass} has no field {sorted(unknown)}"
        return cls(**{attr: sdk_object(data[cls.attribute_map[attr]], kind) for attr, kind in cls.openapi_types.items()
                      if cls.attribute_map[attr] in data})
    obj = getattr(kubernetes.client, klass).from_dict(data)   # pydantic: strict types
    assert kubernetes.client.ApiClient().sanitize_for_serialization(obj) == data, f"{klass} drops a key of {data}"
    return obj


def _isvc(dest: Path):
    text = (dest / "inferenceservice.yaml").read_text()
    assert text.startswith("# KServe InferenceService")
    data = yaml.safe_load(text)
    return data, sdk_object(data, "V1beta1InferenceService")


def test_the_inferenceservice_is_a_kserve_sdk_object_with_hpa_on_cpu(pt2, export):
    import kserve

    data, isvc = _isvc(pt2[0])
    assert kserve.ApiClient().sanitize_for_serialization(isvc) == data      # nothing dropped on the way
    assert (isvc.api_version, isvc.kind, isvc.metadata.name) == ("serving.kserve.io/v1beta1", "InferenceService",
                                                                 "digits-mlp")
    assert isvc.metadata.annotations["serving.kserve.io/deploymentMode"] == "Standard"
    assert isvc.metadata.annotations["serving.kserve.io/autoscalerClass"] == "hpa"
    predictor = isvc.spec.predictor
    assert (predictor.scale_metric, predictor.scale_target) == ("cpu", 70)
    assert (predictor.min_replicas, predictor.max_replicas, predictor.termination_grace_period_seconds) == (1, 3, 35)
    [container] = predictor.containers
    assert container.name == "kserve-container"
    assert container.image == f"REGISTRY/digits-mlp:{_manifest(export)['config_hash'][:12]}"
    assert [(p.name, p.container_port) for p in container.ports] == [("http1", 8080), ("h2c", 8081)]
    assert container.resources.requests == container.resources.limits == {"cpu": "2", "memory": "4Gi"}
    assert (container.liveness_probe.http_get.path, container.liveness_probe.http_get.port) == ("/health", 8080)
    assert (container.readiness_probe.http_get.path, container.readiness_probe.http_get.port) == \
        ("/v2/health/ready", 8080)
    assert container.security_context.run_as_non_root and container.security_context.run_as_user == 10001


def test_the_concurrency_autoscaler_is_knative_with_its_one_http_port(onnx):
    data, isvc = _isvc(onnx)
    predictor = isvc.spec.predictor
    assert isvc.metadata.annotations["serving.kserve.io/deploymentMode"] == "Knative"
    assert (predictor.scale_metric, predictor.scale_target, predictor.min_replicas, predictor.max_replicas) == \
        ("concurrency", 4, 0, 5)
    assert predictor.termination_grace_period_seconds is None     # Knative refuses it
    [container] = predictor.containers
    assert container.image == "example.org/d:1"
    assert [(p.name, p.container_port) for p in container.ports] == [("http1", 8080)]
    assert container.resources.limits == {"cpu": "500m", "memory": "1Gi"}
    assert (container.liveness_probe.http_get.path, container.liveness_probe.http_get.port) == ("/health", 8080)
    assert "gRPC is not" in (onnx / "inferenceservice.yaml").read_text()


def test_the_dockerfile_runs_ptflow_serve_as_a_non_root_user(pt2, export):
    lines = re.sub(r"\\\n\s*", " ", (pt2[0] / "Dockerfile").read_text()).splitlines()   # continuations joined
    python = re.match(r"\d+\.\d+", _manifest(export)["versions"]["python"])[0]
    assert f"FROM python:{python}-slim" in lines
    user = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert user == ["10001"] and lines.index("USER 10001") > lines.index("COPY model/ /model/")
    assert "EXPOSE 8080 8081" in lines and "STOPSIGNAL SIGTERM" in lines
    [health] = [line for line in lines if line.startswith("HEALTHCHECK ")]
    assert "http://127.0.0.1:8080/health" in health and json.loads(health.partition(" CMD ")[2])[0] == "python"
    [cmd] = [line for line in lines if line.startswith("CMD ")]
    argv = json.loads(cmd.removeprefix("CMD "))
    assert argv[:4] == ["ptflow-serve", "/model", "--format", "pt2"]
    assert argv[argv.index("--name") + 1] == "digits-mlp" and argv[argv.index("--grace-s") + 1] == "30"
    assert argv[argv.index("--host") + 1] == "0.0.0.0" and argv[argv.index("--grpc-port") + 1] == "8081"


def test_model_holds_the_manifest_the_served_file_and_the_example_only(pt2, export):
    model = pt2[0] / "model"
    manifest = _manifest(export)
    assert sorted(p.name for p in model.iterdir()) == \
        sorted(["manifest.json", "model.pt2", manifest["example"]["file"]])
    assert (model / "manifest.json").read_bytes() == (export / "manifest.json").read_bytes()
    [entry] = [e for e in manifest["files"] if e["format"] == "pt2"]
    for name, sha in ((entry["file"], entry["sha256"]), (manifest["example"]["file"], manifest["example"]["sha256"])):
        assert hashlib.sha256((model / name).read_bytes()).hexdigest() == sha
    assert sorted(pt2[1]) == sorted(p for p in pt2[0].rglob("*") if p.is_file())
    assert "model/model.pt2" in package_summary(pt2[1])


def test_requirements_pin_the_runs_versions_and_ptflow(pt2, onnx, export):
    torch_version = _manifest(export)["versions"]["torch"]
    lines = [line for line in (pt2[0] / "requirements.txt").read_text().splitlines() if line and line[0] != "#"]
    assert f"torch=={torch_version.partition('+')[0]}" in lines
    if torch_version.endswith("+cpu"):
        assert lines[0] == "--extra-index-url https://download.pytorch.org/whl/cpu"
    [wheel] = (pt2[0] / "wheels").glob("ptflow-*.whl")
    assert lines[-1] == f"./wheels/{wheel.name}[serve]"
    (pt2[0] / "only-ptflow.txt").write_text(lines[-1] + "\n")     # pip reads the line from the package folder
    try:
        done = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--no-index",
                               "-r", "only-ptflow.txt"], cwd=pt2[0], capture_output=True, text=True)
    finally:
        (pt2[0] / "only-ptflow.txt").unlink()
    assert done.returncode == 0 and "Would install ptflow-" in done.stdout, done.stderr
    onnx_lines = (onnx / "requirements.txt").read_text().splitlines()
    [entry] = [e for e in _manifest(export)["files"] if e["format"] == "onnx"]
    assert "onnxruntime" in entry["versions"]
    assert all(f"{package}=={pinned.partition('+')[0]}" in onnx_lines
               for package, pinned in entry["versions"].items())
    assert onnx_lines[-1] == "ptflow[serve]==0.1.0" and not (onnx / "wheels").exists()
    assert not [w for w in pt2[2] if "wheel" in w], pt2[2]      # the wheel holds ptflow.serve
    assert any("digits-mlp" in w for w in pt2[2])                # the name was made a DNS label, and said so


@pytest.mark.parametrize("which", ["pt2", "example"])
def test_a_changed_export_file_is_refused_by_name_leaving_nothing(export, tmp_path, which):
    copy = tmp_path / "export"
    shutil.copytree(export, copy)
    manifest = _manifest(copy)
    changed = manifest["example"]["file"] if which == "example" else \
        next(e["file"] for e in manifest["files"] if e["format"] == which)
    data = bytearray((copy / changed).read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / changed).write_bytes(bytes(data))
    with pytest.raises(PackageError, match=re.escape(str(copy / changed))):
        write_package(tmp_path / "pkg", copy, _manifest(copy), "pt2", name="d",
                      options=PackageOptions(ptflow_requirement="ptflow[serve]"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]     # no package, no partial folder


def test_a_manifest_other_than_the_export_dirs_is_refused(export, tmp_path):
    manifest = _manifest(export)
    manifest["files"][0]["sha256"] = "0" * 64
    with pytest.raises(PackageError, match="is not the manifest given"):
        write_package(tmp_path / "pkg", export, manifest, "pt2", name="d")
    assert list(tmp_path.iterdir()) == []


def test_a_folder_in_use_is_refused(export, tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mine.txt").write_text("keep")
    with pytest.raises(PackageError, match="is not an empty folder"):
        write_package(tmp_path / "pkg", export, _manifest(export), "pt2", name="d")
    assert [p.name for p in (tmp_path / "pkg").iterdir()] == ["mine.txt"]


def test_names_are_made_dns_labels_or_refused(export, tmp_path):
    assert kserve_name("Digits_MLP v2") == "digits-mlp-v2" and kserve_name("3d-unet") == "d-unet"
    with pytest.raises(PackageError, match="makes no Kubernetes name of 1..53 characters"):
        write_package(tmp_path / "pkg", export, _manifest(export), "pt2", name="__42__")
    with pytest.raises(PackageError, match="KServe adds -predictor"):
        kserve_name("m" * 54)
    assert not (tmp_path / "pkg").exists()


@pytest.mark.parametrize("fmt, options, message", [
    ("aoti", {}, "has no 'aoti' file .it has pt2, onnx"),
    ("pt2", {"autoscaler": "rps"}, "choose hpa-cpu or concurrency"),
    ("pt2", {"scale_target": 150}, "1..100"),
    ("pt2", {"min_replicas": 0}, "need 1 <= min"),
    ("pt2", {"memory": "4 GB"}, "Kubernetes quantities"),
    ("pt2", {"grpc_port": 8080}, "two different ports"),
    ("pt2", {"server_args": ["--format=onnx"]}, "repeat what the package sets"),
])
def test_options_the_package_cannot_use_are_refused(export, tmp_path, fmt, options, message):
    with pytest.raises(PackageError, match=message):
        write_package(tmp_path / "pkg", export, _manifest(export), fmt, name="d", options=PackageOptions(**options))
    assert list(tmp_path.iterdir()) == []
