"""``ptflow-serve --package DIR``: one export format as a Docker build context and a KServe
InferenceService. DIR gets ``model/`` (the run's manifest, the served file and the example, hashed
while copied), ``requirements.txt`` (the served entry's ``versions`` pinned, and ptflow), a
``Dockerfile`` (non-root, ``ptflow-serve`` in exec form, a HEALTHCHECK), ``inferenceservice.yaml``
(KServe v1beta1, in the fields of the 0.21 SDK's models) and a ``README.md``, written into a hidden
sibling folder renamed into place at the end: a half-written package never looks complete.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import yaml

from ptflow.serve.verify import refusal

UID = 10001
NAME_MAX = 53    # KServe names the predictor's Service <name>-predictor: a DNS label of at most 63
AUTOSCALERS = {"hpa-cpu": 70, "concurrency": 8}   # default scaleTarget: % CPU; in-flight requests per replica
SET_HERE = ("--format", "--host", "--http-port", "--grpc-port", "--name", "--grace-s")
TORCH_BUILD = re.compile(r"^(cpu|cu\d+|rocm\d+(\.\d+)*|xpu)$")   # local labels with an index of their own
QUANTITY = re.compile(r"^\d+(\.\d+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
NOT_SOURCE = frozenset({".git", ".venv", "venv", "outputs", "build", "dist", "site", ".pytest_cache", ".whl"})


class PackageError(Exception):
    """No package written; the message names the file or option and how to fix it."""


@dataclass
class PackageOptions:
    image: str | None = None            # None: REGISTRY/<name>:<config hash>, a placeholder to replace
    cpu: str = "2"                      # requests and limits
    memory: str = "4Gi"
    min_replicas: int = 1
    max_replicas: int = 3
    autoscaler: str = "hpa-cpu"         # or "concurrency" (Knative's pod autoscaler)
    scale_target: int | None = None     # None: 70 (% CPU) for hpa-cpu, 8 in-flight requests for concurrency
    grace_s: float = 30.0
    http_port: int = 8080
    grpc_port: int = 8081
    server_args: list[str] = field(default_factory=list)   # more ptflow-serve options, after the package's own
    base_image: str | None = None       # None: python:<manifest versions.python major.minor>-slim
    ptflow_requirement: str | None = None


def kserve_name(name: str) -> str:
    """`name` made a KServe InferenceService name (``[a-z]([-a-z0-9]*[a-z0-9])?``, <= NAME_MAX), or PackageError."""
    label = re.sub(r"^[^a-z]+", "", re.sub(r"[^a-z0-9]+", "-", name.strip().lower())).strip("-")
    if not 1 <= len(label) <= NAME_MAX:
        raise PackageError(f"name {name!r} makes no Kubernetes name of 1..{NAME_MAX} characters ({label!r}; KServe "
                           "adds -predictor, within 63): pass --name of lowercase letters, digits, '-', from a letter")
    return label


def write_package(dest: Path, export_dir: Path, manifest: Mapping[str, Any], fmt: str, *, name: str,
                  options: PackageOptions | None = None, warn: Callable[[str], None] | None = None) -> list[Path]:
    """Write the package serving `fmt` of `export_dir` into `dest`; its files. Warnings go to `warn` and README."""
    o, dest, export_dir = options or PackageOptions(), Path(dest), Path(export_dir)
    notes: list[str] = []
    note = notes.append
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise PackageError(f"{dest} exists and is not an empty folder: give a new one (it becomes the Docker build "
                           "context, which must hold the package alone)")
    entry, example, target, manifest_bytes = _check(manifest, fmt, o, export_dir / "manifest.json")
    label = kserve_name(name)
    if label != name:
        note(f"name {name!r} is not a Kubernetes name: the InferenceService and the protocol model are {label!r}")
    found = re.match(r"^(\d+)\.(\d+)", str((manifest.get("versions") or {}).get("python") or ""))
    python = f"{found[1]}.{found[2]}" if found else "{}.{}".format(*sys.version_info[:2])
    if not found:
        note(f"manifest.json records no versions.python: the image has this Python, {python}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    try:
        partial.chmod(0o755)             # not mkdtemp's 0700
        (partial / "model").mkdir()
        for item, what in ((entry, f"the {fmt} file"), (example, "the example")):
            _copy_verified(export_dir / item["file"], partial / "model" / item["file"], item["sha256"], what)
        (partial / "model" / "manifest.json").write_bytes(manifest_bytes)   # the run's: its sha256 stays the run's
        ptflow_line = _ptflow_requirement(o, partial / "wheels", note)
        argv = ["ptflow-serve", "/model", "--format", fmt, "--host", "0.0.0.0", "--http-port", str(o.http_port),
                "--grpc-port", str(o.grpc_port), "--name", label, "--grace-s", f"{o.grace_s:g}", *o.server_args]
        image = o.image or f"REGISTRY/{label}:{str(manifest.get('config_hash') or 'latest')[:12]}"
        texts = {"requirements.txt": _requirements(entry, fmt, ptflow_line),
                 "Dockerfile": _dockerfile(o.base_image or f"python:{python}-slim", argv, o,
                                           (partial / "wheels").is_dir(), label),
                 "inferenceservice.yaml": _isvc_yaml(label, image, fmt, entry, o, target),
                 "README.md": _readme(label, image, fmt, entry, o, notes)}
        for file, text in texts.items():
            (partial / file).write_text(text, encoding="utf-8")
        partial.replace(dest)            # onto a missing or empty folder
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    for message in notes:
        (warn or (lambda m: print(f"ptflow-serve --package: warning: {m}", file=sys.stderr)))(message)
    return sorted(p for p in dest.rglob("*") if p.is_file())


def package_summary(paths: list[Path]) -> str:
    """What write_package wrote, one file a line, and the next commands."""
    root = Path(os.path.commonpath([p.parent for p in paths])) if paths else Path(".")
    return "\n".join([f"package  {root}", *(f"  {p.relative_to(root)!s:<40} {p.stat().st_size / 1e6:9.2f} MB"
                                             for p in paths), f"  next: see {root / 'README.md'}"])


def _check(manifest: Mapping[str, Any], fmt: str, o: PackageOptions, file: Path) -> tuple[dict, dict, int, bytes]:
    """The served entry, the example entry, the scale target and the bytes of manifest.json (`file`, which
    must hold `manifest`), after every option is checked."""
    try:
        raw = file.read_bytes()
        same = json.loads(raw) == dict(manifest)
    except (OSError, ValueError):
        raw, same = b"", False
    if not same:
        raise PackageError(f"{file} is not the manifest given: package the export dir as the run wrote it")
    entries = [e for e in manifest.get("files") or [] if isinstance(e, dict)]
    entry = next((e for e in entries if e.get("format") == fmt), None)
    if entry is None:
        found = ", ".join(str(e.get("format")) for e in entries) or "none"
        raise PackageError(f"the manifest has no {fmt!r} file (it has {found}): pass one of them, or re-run with "
                           f"export.formats=[{fmt}]")
    example = manifest.get("example") or {}
    for item, what in ((entry, f"the {fmt} entry"), (example, "the example entry")):
        name = item.get("file")
        if not (isinstance(name, str) and re.fullmatch(r"[^/\\]+", name) and name not in (".", "..")
                and re.fullmatch(r"[0-9a-f]{64}", str(item.get("sha256")))):
            raise PackageError(f"manifest.json: {what} has no plain file name and sha256 to check it by; re-export")
    if o.autoscaler not in AUTOSCALERS:
        raise PackageError(f"autoscaler {o.autoscaler!r}: choose {' or '.join(AUTOSCALERS)}")
    target = AUTOSCALERS[o.autoscaler] if o.scale_target is None else o.scale_target
    low = 1 if o.autoscaler == "hpa-cpu" else 0      # Kubernetes' HPA cannot scale to zero
    taken = [a for a in o.server_args if a.split("=", 1)[0] in SET_HERE]
    refused = refusal(fmt, "--trust-native-code" in o.server_args)
    for wrong, why in (
            (refused, f"the package would not serve: {refused}"),
            (not (1 <= target <= 100 if low else target >= 1), f"scale target {target} for {o.autoscaler}: a CPU "
             "utilization in 1..100 (%) for hpa-cpu, at least 1 request in flight per replica for concurrency"),
            (not low <= o.min_replicas <= o.max_replicas or o.max_replicas < 1,
             f"replicas {o.min_replicas}..{o.max_replicas}: need {low} <= min <= max and max >= 1"),
            (not (QUANTITY.match(str(o.cpu)) and QUANTITY.match(str(o.memory))),
             f"cpu {o.cpu!r}, memory {o.memory!r}: Kubernetes quantities (cpu '2' or '500m', memory '4Gi')"),
            (not all(1 <= p <= 65535 for p in (o.http_port, o.grpc_port)) or o.http_port == o.grpc_port,
             f"ports {o.http_port} (HTTP) and {o.grpc_port} (gRPC): two different ports in 1..65535"),
            (not 0 <= o.grace_s <= 3600, f"grace {o.grace_s} s: seconds in 0..3600 to finish requests after SIGTERM"),
            (taken, f"server args {taken} repeat what the package sets ({', '.join(SET_HERE)}): use its options")):
        if wrong:
            raise PackageError(why)
    return entry, example, target, raw


def _copy_verified(src: Path, dst: Path, want: str, what: str) -> None:
    """Copy `src` to `dst`, hashing the bytes written; PackageError naming `src` unless they are the manifest's."""
    digest = hashlib.sha256()
    try:
        with src.open("rb") as fin, dst.open("xb") as fout:
            for block in iter(lambda: fin.read(1 << 20), b""):
                digest.update(block)
                fout.write(block)
    except OSError as error:
        raise PackageError(f"cannot copy {what} {src}: {error.strerror or error}") from None
    if digest.hexdigest() != want:
        raise PackageError(f"{src} ({what}) has sha256 {digest.hexdigest()[:16]}…, its manifest records "
                           f"{want[:16]}…: it changed after the run wrote it. Package the run's own export")


def _requirements(entry: Mapping[str, Any], fmt: str, ptflow_line: str) -> str:
    lines = [f"# ptflow-serve's packages for model/{entry['file']} ({fmt}): the versions the run exported it with",
             "# (manifest.json, this format's files entry, 'versions'), local labels like +cpu left off."]
    pins = [""]
    for package, pinned in sorted((entry.get("versions") or {}).items()):
        public, _, local = str(pinned).partition("+")
        pins.append(f"{package}=={public}")
        if package in ("torch", "torchvision", "torchaudio") and TORCH_BUILD.match(local):
            lines += [f"# {package} {pinned}: PyTorch's {local} build, on its own index (PyPI's Linux torch has CUDA)",
                      f"# pip reads both indexes; ==X also matches X+{local} (PEP 440) and prefers it.",
                      f"--extra-index-url https://download.pytorch.org/whl/{local}"]
    return "\n".join(lines + pins + [ptflow_line]) + "\n"


def _ptflow_requirement(o: PackageOptions, wheels: Path, note: Callable[[str], None]) -> str:
    if o.ptflow_requirement:
        return o.ptflow_requirement
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"   # a source checkout: beside ptflow/
    if pyproject.is_file() and re.search(r'(?m)^name\s*=\s*"ptflow"\s*$', pyproject.read_text("utf-8")):
        return f"./wheels/{_build_wheel(pyproject.parent, wheels, note).name}[serve]"
    note(f"requirements.txt installs ptflow[serve]=={version('ptflow')} from the package index the image build "
         "uses: it must be there (or pass the ptflow requirement to use, e.g. a wheel's URL)")
    return f"ptflow[serve]=={version('ptflow')}"


def _build_wheel(root: Path, wheels: Path, note: Callable[[str], None]) -> Path:
    """ptflow's wheel, built from a copy: in place, setuptools leaves build/ and ships a stale build/lib."""
    with tempfile.TemporaryDirectory(prefix="ptflow-wheel-") as scratch:
        shutil.copytree(root, Path(scratch) / "src", symlinks=True, ignore=lambda folder, names: [
            n for n in names if n == "__pycache__" or n.endswith(".egg-info")
            or (Path(folder) == root and n in NOT_SOURCE)])
        done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                               "-w", str(wheels), str(Path(scratch) / "src")], capture_output=True, text=True)
    built = sorted(wheels.glob("ptflow-*.whl"))
    if done.returncode or len(built) != 1:
        raise PackageError(f"building ptflow's wheel from {root} failed (pip wheel exit {done.returncode}): "
                           f"{(done.stderr or done.stdout).strip()[-800:]}; pass a ptflow requirement to use instead")
    with zipfile.ZipFile(built[0]) as wheel:   # pyproject.toml's packages must list ptflow.serve
        if not any(n.startswith("ptflow/serve/") for n in wheel.namelist()):
            note(f"the wheel {built[0].name} built from {root} has no ptflow/serve/: the image could not serve")
    return built[0]


def _dockerfile(base: str, argv: list[str], o: PackageOptions, wheels: bool, label: str) -> str:
    probe = f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{o.http_port}/health', timeout=4)"
    return "\n".join([
        f"# ptflow-serve serving {label}: docker build -t IMAGE .  (this folder is the whole build context)",
        f"FROM {base}", "", "ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1", "",
        "# a fixed numeric uid: Kubernetes' runAsNonRoot can check it without /etc/passwd",
        f"RUN useradd --uid {UID} --user-group --create-home --shell /usr/sbin/nologin ptflow", "",
        "WORKDIR /build", "COPY requirements.txt ./", *(["COPY wheels/ ./wheels/"] if wheels else []),
        "RUN pip install --no-cache-dir -r requirements.txt", "",
        "COPY model/ /model/", "WORKDIR /home/ptflow", f"USER {UID}", f"EXPOSE {o.http_port} {o.grpc_port}", "",
        "# liveness on /health: slim images have no curl, Python's urllib asks (an error or non-2xx fails it)",
        "HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \\",
        f"  CMD {json.dumps(['python', '-c', probe])}",
        "# exec form: ptflow-serve gets SIGTERM itself, turns unready and finishes the requests in flight",
        f"# within --grace-s {o.grace_s:g} (docker stop -t {math.ceil(o.grace_s) + 5})",
        "STOPSIGNAL SIGTERM", f"CMD {json.dumps(argv)}", ""])


def _isvc_yaml(label: str, image: str, fmt: str, entry: Mapping[str, Any], o: PackageOptions, target: int) -> str:
    standard = o.autoscaler == "hpa-cpu"     # else Knative, which routes one port and sets the pod's grace itself
    ports = [("http1", o.http_port)] + ([("h2c", o.grpc_port)] if standard else [])
    container = {
        "name": "kserve-container", "image": image,
        "ports": [{"name": port, "containerPort": number, "protocol": "TCP"} for port, number in ports],
        "resources": {"requests": {"cpu": o.cpu, "memory": o.memory}, "limits": {"cpu": o.cpu, "memory": o.memory}},
        "livenessProbe": {"httpGet": {"path": "/health", "port": o.http_port}, "initialDelaySeconds": 10,
                          "periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 6},
        "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": o.http_port}, "periodSeconds": 5,
                           "timeoutSeconds": 5, "failureThreshold": 3},
        "securityContext": {"runAsNonRoot": True, "runAsUser": UID, "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]}}}
    predictor = {"minReplicas": o.min_replicas, "maxReplicas": o.max_replicas,
                 "scaleMetric": "cpu" if standard else "concurrency", "scaleTarget": target,
                 **({"terminationGracePeriodSeconds": math.ceil(o.grace_s) + 5} if standard else {}),
                 "containers": [container]}
    annotations = {"serving.kserve.io/deploymentMode": "Standard" if standard else "Knative",
                   **({"serving.kserve.io/autoscalerClass": "hpa"} if standard else {}),
                   "ptflow/format": fmt, "ptflow/sha256": entry["sha256"]}
    isvc = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": {"name": label, "annotations": annotations}, "spec": {"predictor": predictor}}
    head = (f"# KServe InferenceService {label}: ptflow-serve serving {fmt} ({entry['file']}) from the image\n"
            "# this folder's Dockerfile builds: put your pushed image, then kubectl apply -f inferenceservice.yaml\n")
    head += (f"# Standard mode (KServe < 0.16: RawDeployment), Kubernetes' HPA at {target}% of the CPU requested.\n"
             f"# Both ports are routed: the predictor's Service maps 80 to HTTP {o.http_port}, {o.grpc_port} to gRPC.\n"
             if standard else
             f"# Knative mode (KServe < 0.16: Serverless), Knative's autoscaler at {target} requests per replica.\n"
             "# Knative routes one container port: HTTP (REST, and the probes, which must use it); gRPC is not\n"
             "# routed (hpa-cpu routes both). The pod's grace is the revision's timeout (no terminationGracePeriod).\n")
    return head + yaml.safe_dump(isvc, sort_keys=False)


def _readme(label: str, image: str, fmt: str, entry: Mapping[str, Any], o: PackageOptions, notes: list[str]) -> str:
    http, grpc = o.http_port, o.grpc_port
    reach = (f"kubectl port-forward service/{label}-predictor {http}:80 {grpc}:{grpc} &  URL=http://localhost:{http}"
             if o.autoscaler == "hpa-cpu" else
             f"URL=$(kubectl get inferenceservice {label} -o jsonpath='{{.status.url}}')")
    ready = f"curl -s $URL/v2/models/{label}/ready -o /dev/null -w '%{{http_code}}\\n'   # 200 once ready"
    return f"""# {label}: ptflow-serve in a container

`model/` holds the run's `manifest.json` (every format the run exported; the image serves `--format {fmt}`),
`{entry['file']}` and the example, checked against the manifest's sha256 here and by ptflow-serve before it
reports ready. **Not tested here:** the machine that wrote this package has no container engine; the image
build, the container and the InferenceService were not run there.

```bash
docker build -t {image} .   # REGISTRY/...: a placeholder, tag it for your registry
docker run -d --rm --name {label} -p {http}:{http} -p {grpc}:{grpc} {image}   # HTTP {http}, gRPC {grpc}
URL=http://localhost:{http}; {ready}
docker stop -t {math.ceil(o.grace_s) + 5} {label}   # SIGTERM: requests in flight finish within {o.grace_s:g} s
docker push {image}   # and set it in inferenceservice.yaml (containers[0].image)
kubectl apply -f inferenceservice.yaml && kubectl get inferenceservice {label}   # READY True
{reach}
{ready}
```

Probes: liveness `GET /health`, readiness `GET /v2/health/ready`. Autoscaler, ports: atop `inferenceservice.yaml`.
""" + ("\nWarnings when it was written:\n" + "".join(f"- {n}\n" for n in notes) if notes else "")
