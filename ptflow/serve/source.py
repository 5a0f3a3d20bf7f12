"""Which export ``ptflow-serve SOURCE`` serves: SOURCE is an export dir (it holds
``manifest.json``), a run dir (``export/manifest.json``), an MLflow run id, or a model
ptflow registered (``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``).

A run id is looked up in the store ptflow uses (``--tracking-uri``, else
``MLFLOW_TRACKING_URI``, else ``sqlite:///outputs/mlflow.db``). Its export is read from the
run dir when that is on this machine and its manifest agrees with the store's copy (a
difference is refused: one was edited), otherwise downloaded from the run's artifacts
(``files/export.<format>/``) into a private folder, file by file as they are needed. A
registered model is served from the run that logged it, in the format it was logged in,
after ``logged_model_check`` confirms the registered model is that run's export, unaltered.
Nothing here trusts a file yet: ``verify`` checks each against the manifest's sha256.
"""
from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
RUN_ID = re.compile(r"^[0-9a-f]{32}$")


class SourceError(Exception):
    """SOURCE names no export ptflow can serve; the message says what was looked for."""


@dataclass
class Export:
    """An export dir's manifest, and where its files are (or come from)."""

    folder: Path
    manifest: dict[str, Any]
    origin: str                         # in words, for the start-up line
    run_id: str | None = None
    tracking_uri: str | None = None
    format_hint: str | None = None      # the format a models:/ URI was registered in
    _client: Any = field(default=None, repr=False)

    def entries(self) -> list[dict[str, Any]]:
        return [e for e in self.manifest.get("files", []) if isinstance(e, dict)]

    def entry(self, fmt: str) -> dict[str, Any] | None:
        return next((e for e in self.entries() if e.get("format") == fmt), None)

    def path(self, name: str, artifact_dir: str) -> Path:
        """The local path of export file `name`; downloaded from the run's `artifact_dir`
        (``files/export.<fmt>``) first when the export lives only in the store."""
        if "/" in name or "\\" in name or name in ("", ".", ".."):
            raise SourceError(f"the manifest names the file {name!r}: not a plain file name")
        local = self.folder / name
        if local.is_file() or self._client is None:
            return local
        try:
            got = self._client.download_artifacts(self.run_id, f"{artifact_dir}/{name}", str(self.folder / ".dl"))
        except Exception as error:  # noqa: BLE001 - any store failure is the same refusal
            raise SourceError(f"run {self.run_id} has no artifact {artifact_dir}/{name} to serve: {error}") from None
        Path(got).replace(local)
        return local


def resolve(source: str, tracking_uri: str | None, outputs_dir: Path = Path("outputs")) -> Export:
    """The export SOURCE names; SourceError saying what was looked for when none."""
    path = Path(source).expanduser()
    if path.is_dir():
        return _from_dir(path)
    if source.startswith("models:/"):
        return _from_registry(source, _client(tracking_uri, outputs_dir))
    if RUN_ID.match(source):
        client = _client(tracking_uri, outputs_dir)
        return _from_run(client, source, f"run {source}")
    raise SourceError(f"{source!r} is not a directory, an MLflow run id (32 hex digits) or models:/NAME/VERSION: "
                      "give an export dir (it holds manifest.json), a run dir (export/manifest.json), a run id "
                      "or a model ptflow registered")


def _read_manifest(file: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise SourceError(f"{file} is not a readable export manifest: {error}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), list):
        raise SourceError(f"{file} is not an export manifest (no 'files' list)")
    return manifest


def _from_dir(path: Path) -> Export:
    for folder in (path, path / "export"):
        if (folder / MANIFEST).is_file():
            kind = "export dir" if folder == path else "run dir"
            return Export(folder.resolve(), _read_manifest(folder / MANIFEST), f"{kind} {path}")
    raise SourceError(f"{path} holds no {MANIFEST} (an export dir) nor export/{MANIFEST} (a run dir): "
                      "give the run dir ptflow printed ('run dir ...') or its export/ folder")


def _client(tracking_uri: str | None, outputs_dir: Path) -> Any:
    from mlflow.tracking import MlflowClient

    from ptflow.runs.tracking import StoreUnavailable, existing_store

    uri = tracking_uri or f"sqlite:///{(outputs_dir / 'mlflow.db').resolve()}"
    origin = "--tracking-uri / MLFLOW_TRACKING_URI" if tracking_uri else f"--outputs-dir {outputs_dir}"
    try:
        uri = existing_store(uri, origin)
    except StoreUnavailable as error:
        raise SourceError(f"{error}: pass --tracking-uri URI, or serve a run dir") from None
    return MlflowClient(tracking_uri=uri)


def _from_run(client: Any, run_id: str, origin: str, fmt: str | None = None) -> Export:
    from ptflow.runs.logged_model_check import Untrusted, run_manifest

    try:
        run = client.get_run(run_id)
    except Exception as error:  # noqa: BLE001 - MLflow raises its own types per store
        raise SourceError(f"no run {run_id} in {client.tracking_uri}: {type(error).__name__}") from None
    with tempfile.TemporaryDirectory(prefix="ptflow-serve-manifest-") as check:
        try:
            manifest = run_manifest(client, run_id, Path(check))   # refuses a store copy unlike the run dir's
        except Untrusted as error:
            raise SourceError(str(error)) from None
    run_dir = run.data.tags.get("ptflow.run_dir")
    local = Path(run_dir) / "export" if run_dir else None
    if local is not None and (local / MANIFEST).is_file():
        return Export(local, manifest, f"{origin} (its run dir {run_dir})", run_id, client.tracking_uri, fmt)
    scratch = Path(tempfile.mkdtemp(prefix="ptflow-serve-"))   # the files are downloaded here as needed
    (scratch / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    return Export(scratch, manifest, f"{origin} (downloaded from {client.tracking_uri})", run_id,
                  client.tracking_uri, fmt, client)


def _from_registry(uri: str, client: Any) -> Export:
    from ptflow.runs.logged_model_check import Untrusted, check_logged_model

    body = uri.removeprefix("models:/")
    name, _, rest = body.partition("@") if "@" in body else body.rpartition("/")
    if not name or not rest:
        raise SourceError(f"{uri}: expected models:/NAME/VERSION or models:/NAME@ALIAS")
    try:
        version = (client.get_model_version_by_alias(name, rest) if "@" in body
                   else client.get_model_version(name, rest))
    except Exception as error:  # noqa: BLE001
        raise SourceError(f"{uri} is not a registered model version in {client.tracking_uri}: "
                          f"{type(error).__name__}") from None
    run_id = version.run_id or (version.tags or {}).get("ptflow.run_id")
    if not run_id:
        raise SourceError(f"{uri} was not logged by a run; ptflow serves the models its runs registered")
    tags = client.get_run(run_id).data.tags
    fmt = next((key.removeprefix("ptflow.model.") for key, value in tags.items()
                if key.startswith("ptflow.model.") and value == version.source), None)
    if fmt is None:
        raise SourceError(f"{uri} ({version.source}) is not a model run {run_id} logged from its export "
                          "(no ptflow.model.<format> tag names it)")
    try:
        check_logged_model(client, run_id, version.source, fmt)
    except Untrusted as error:
        raise SourceError(f"not serving {uri}: {error}") from None
    return _from_run(client, run_id, f"{uri} (run {run_id}, {fmt})", fmt)
