"""`ptflow-reproduce RUN_ID`: run a tracked run's config again and say what came out the same.

  ptflow-reproduce RUN_ID [--tracking-uri URI] [--outputs-dir DIR] [--atol A] [--rtol R] [--dry-run]
                         [--allow-target PATTERN ...] [--trust-pickle]

The run is found in the MLflow store ptflow would use (--tracking-uri, else
MLFLOW_TRACKING_URI, else sqlite:///<outputs-dir>/mlflow.db). Its logged config.yaml is
the resolved config, so options that came from a user's config dir need no dir now; it
lacks Hydra's node, so ptflow's own (run dir pattern, job name, logging) is put back. The
config runs again as a normal `ptflow` run in a new process, into the same experiment,
tagged ptflow.reproduces=RUN_ID. Then every export file of the source's manifest and the
task metric are compared (``ptflow.review.reproduce_check``).

A config from a store is untrusted input: before anything runs (the dry run included),
every ``_target_`` and plugin it names is shown and judged (``ptflow.review.reproduce_trust``);
one outside ptflow's own builders and the user's --allow-target patterns is refused.

Exit codes: 0 everything the same; 1 something differs or could not be checked, or a run
(the source or the reproduction) did not finish; 2 bad arguments, run or store not found.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ptflow.core.errors import first_line
from ptflow.review.reproduce_check import (OutputCheck, Verdict, context_lines, exit_code, headline, latency_lines,
                                    planned_checks, run_verdicts)
from ptflow.runs.record import RESULT_FILE, RunRecord
from ptflow.runs.tracking import StoreUnavailable, TrackingConfig, existing_store, sqlite_path, store_uri

PROG = "ptflow-reproduce"
CONFIG_NAME = "reproduce"
MANIFEST_ARTIFACT = "files/export.manifest/manifest.json"   # where the tracker logs the export manifest
UNGROUPED = frozenset({"hydra", "tracking", "tags"})         # top-level mappings never picked as a group option
PREFIX_SEARCH = 1000   # the latest runs searched for an abbreviated run id
MIN_PREFIX = 6
OPTION = re.compile(r"^[\w.\-]+(/[\w.\-]+)*$")


class Refused(Exception):
    """Exit 2: what was wrong with the arguments, the store or the run, and how to fix it."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.replace("`", ""),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_id", help="the MLflow run id (the summary's 'MLflow run' line)")
    parser.add_argument("--tracking-uri", help="the store holding the run (default: MLFLOW_TRACKING_URI, "
                                               "else sqlite:///<outputs-dir>/mlflow.db)")
    parser.add_argument("--outputs-dir", type=Path, help="the outputs_dir whose mlflow.db holds the run, and where "
                                                         "the new run's dir goes (default: outputs)")
    parser.add_argument("--atol", type=_tolerance, help="for files compared by outputs (aoti; torchscript whose bytes "
                        "differ): largest abs difference (default: the format's export.tolerance in the manifest)")
    parser.add_argument("--rtol", type=_tolerance, default=0.0, help="relative tolerance for those (default 0)")
    parser.add_argument("--dry-run", action="store_true",
                        help="rebuild the config and check it (ptflow dry_run=true); run and compare nothing")
    parser.add_argument("--allow-target", action="append", default=[], metavar="PATTERN",
                        help="allow a `_target_` or plugin of your own that the stored config names (a glob such as "
                             "'mymodels.*'; repeatable; also [tool.ptflow.reproduce] allow_targets in ./pyproject.toml)")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="allow a stored model.trust_pickle=true (unpickling model.weights runs code from it)")
    return parser


def _tolerance(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0 such as 1e-4, found {text!r}")
    return value


def _store(tracking_uri: str | None, outputs_dir: Path | None) -> tuple[str, str]:
    """(absolute store URI, which setting chose it); Refused when there is no store to read."""
    if tracking_uri:
        uri, origin = tracking_uri, "--tracking-uri"
    elif os.environ.get("MLFLOW_TRACKING_URI"):
        uri, origin = os.environ["MLFLOW_TRACKING_URI"], "MLFLOW_TRACKING_URI"
    else:
        folder = outputs_dir or Path("outputs")
        uri = store_uri(TrackingConfig(), folder.resolve())
        origin = f"--outputs-dir {folder}" if outputs_dir else "the default --outputs-dir outputs"
    try:
        uri = existing_store(uri, origin)
    except StoreUnavailable as error:
        raise Refused(f"{error}: nothing to look the run up in; pass --outputs-dir DIR (the outputs_dir the run "
                      "used) or --tracking-uri URI, or start the server") from None
    db = sqlite_path(uri)
    if db is not None and (not os.access(db, os.R_OK | os.W_OK) or not os.access(db.parent, os.W_OK)):
        raise Refused(f"the MLflow store {db} (chosen by {origin}) is read-only for this user: the "
                      "reproduction could not be recorded next to its source")
    return uri, origin


def _source_run(client: Any, run_id: str, uri: str, origin: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException as error:
        if error.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            raise Refused(f"the MLflow store {uri} (chosen by {origin}) did not answer: {first_line(error)}") from None
    except Exception as error:   # a dead server, a broken database
        raise Refused(f"the MLflow store {uri} (chosen by {origin}) did not answer: "
                      f"{type(error).__name__}: {first_line(error)}") from None
    latest = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=PREFIX_SEARCH,
                                order_by=["attributes.start_time DESC"])
    matches = [r for r in latest if r.info.run_id.startswith(run_id)] if len(run_id) >= MIN_PREFIX else []
    if len(matches) == 1:   # a unique prefix, as git takes one
        return matches[0]
    listed = "".join(f"\n  {r.info.run_id}  {r.info.run_name}  ({r.info.status})" for r in (matches or latest[:5]))
    if matches:
        raise Refused(f"{run_id!r} begins {len(matches)} run ids in {uri}; give more of it:{listed}")
    raise Refused(f"no run {run_id!r} in the MLflow store {uri} (chosen by {origin}); if it was tracked "
                  "elsewhere, pass --tracking-uri URI or --outputs-dir DIR (its summary printed the store after "
                  f"'open the UI')" + (f". The latest runs here:{listed}" if listed else ". This store has no runs"))


def _download(client: Any, run_id: str, path: str, into: Path) -> Path | None:
    try:
        return Path(client.download_artifacts(run_id, path, str(into)))
    except Exception:   # absent (MlflowException, OSError): the caller says what that means
        return None


def source_choices(config: Mapping[str, Any], tags: Mapping[str, str], known_groups: set[str]) -> dict[str, str]:
    """The option of each config group the source picked, from its tags (ptflow tags each group
    whose stage ran): the reproduction is named and tagged as the source was."""
    groups = (known_groups | {k for k, v in config.items() if isinstance(v, Mapping)}) - UNGROUPED
    return {g: tags[g] for g in sorted(groups) if g in tags and OPTION.match(tags[g]) and ".." not in tags[g]}


def write_config(folder: Path, config: Mapping[str, Any], choices: Mapping[str, str], header: str) -> None:
    """A primary config `reproduce.yaml` in `folder` that composes into `config`: each chosen
    group's node as `<group>/<option>.yaml` (so Hydra reports the same choices), the rest as
    plain keys, and ptflow's own `hydra:` node (run dir pattern, job name, logging)."""
    from omegaconf import OmegaConf

    from ptflow.app.args import CONFIG_DIR

    rest = _escaped(dict(config))
    defaults: list[Any] = []
    for group, option in choices.items():
        node = rest.pop(group) if isinstance(rest.get(group), Mapping) else None
        path = folder / group / f"{option}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        about = f"# {group}={option} as the source run resolved it\n"
        text = (about + OmegaConf.to_yaml(OmegaConf.create(node)) if node is not None   # Hydra reads @package
                else f"# @package _global_\n{about}{{}}\n")   # only first; an overlay's values are in the rest
        path.write_text(text, encoding="utf-8")
        defaults.append({group: option})
    hydra = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "config.yaml").get("hydra") or {}, resolve=False)
    primary = OmegaConf.create({"defaults": [*defaults, "_self_"], **rest, "hydra": hydra})
    (folder / f"{CONFIG_NAME}.yaml").write_text(header + OmegaConf.to_yaml(primary), encoding="utf-8")


def _escaped(value: Any) -> Any:
    """Resolved text that looks like an interpolation stays text when Hydra composes it again."""
    if isinstance(value, str):
        return value.replace("${", "\\${")
    if isinstance(value, Mapping):
        return {k: _escaped(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_escaped(v) for v in value]
    return value


def reproduction_config(config: Mapping[str, Any], run_id: str, uri: str, experiment: str,
                        outputs_dir: Path | None) -> tuple[dict[str, Any], list[str]]:
    """The source's config with what a reproduction must change — into the source's store and
    experiment, run dirs under `outputs_dir` (None: the store's folder for sqlite, else the
    source's), tagged as a reproduction — and each change as text."""
    import copy

    new = copy.deepcopy(dict(config))
    changes = []
    db = sqlite_path(uri)
    source_outputs = Path(str(config.get("outputs_dir") or "outputs"))
    if outputs_dir is None and db is not None and db.parent != source_outputs.resolve():
        outputs_dir = db.parent   # run dirs next to the store, as ptflow's own default puts them
    outputs_dir = outputs_dir or source_outputs
    tracking = new.setdefault("tracking", {})
    same_store = (not tracking.get("uri") and not os.environ.get("MLFLOW_TRACKING_URI")
                  and store_uri(TrackingConfig(), outputs_dir.resolve()) == uri)
    for key, value in (("uri", None if same_store else uri), ("experiment", experiment)):
        if tracking.get(key) != value:
            tracking[key] = value
            changes.append(f"tracking.{key}={value}")
    export = new.get("export")
    if isinstance(export, dict) and export.get("dir"):   # never overwrite the source's files
        changes.append(f"export.dir=null (was {export['dir']}: the new files go to the new run dir)")
        export["dir"] = None
    if isinstance(export, dict) and export.get("register_as"):   # a check, not a release
        changes.append(f"export.register_as=null (was {export['register_as']}: a reproduction registers no "
                       "new model version)")
        export["register_as"] = None
    # cache=off: every stage runs again, so "the same baseline" is a finding, not a cache read
    for key, value in (("outputs_dir", str(outputs_dir)), ("dry_run", False), ("cache", "off"),
                       ("reproduces", run_id)):
        if new.get(key) != value:
            new[key] = value
            changes.append(f"{key}={value}")
    return new, changes


def _find_record(outputs_dir: Path, pid: int, run_id: str, since: float) -> RunRecord | None:
    """The record the reproduction (process `pid`) wrote in a run dir of its own."""
    from ptflow.core.lifecycle import ProcessId, current_process

    host = current_process().host
    for path in sorted(outputs_dir.glob(f"runs/*/*/{RESULT_FILE}"), reverse=True):
        try:
            if path.stat().st_mtime < since - 1:
                continue
            record = RunRecord.load(path.parent)
        except (OSError, ValueError, TypeError):
            continue
        process = ProcessId.parse(record.process)
        if process and process.pid == pid and process.host == host and record.config.get("reproduces") == run_id:
            return record
    return None


def run(argv: Sequence[str]) -> int:
    args = _parser().parse_args(list(argv))
    try:
        return _reproduce(args)
    except Refused as refused:
        print(f"{PROG}: {refused}", file=sys.stderr)
        return 2


def _reproduce(args: argparse.Namespace) -> int:
    uri, origin = _store(args.tracking_uri, args.outputs_dir)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")   # one download bar per file otherwise
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    source = _source_run(client, args.run_id, uri, origin)
    run_id, status = source.info.run_id, source.info.status
    if status in ("RUNNING", "SCHEDULED"):
        raise Refused(f"run {run_id} is still {status}: reproduce it once it has ended (if its process is gone, "
                      "ptflow-runs close-stale ends it)")
    experiment = client.get_experiment(source.info.experiment_id).name
    with tempfile.TemporaryDirectory(prefix="ptflow-reproduce-") as scratch:
        scratch_dir = Path(scratch)
        config, source_manifest = _source_files(client, source, scratch_dir / "source")
        new_config, changes = reproduction_config(config, run_id, uri, experiment, args.outputs_dir)
        print(f"{PROG}: run {run_id} '{source.info.run_name}' ({status}) in {uri}, experiment '{experiment}'", flush=True)
        _vet(config, run_id, uri, args)
        print(f"{PROG}: its config.yaml again, with {', '.join(changes) or 'no changes'}", flush=True)
        command = _command(new_config, config, source, scratch_dir / "conf")
        if args.dry_run:
            print(f"{PROG}: would compare {planned_checks(config, source_manifest)}", flush=True)
            return subprocess.run([*command, "dry_run=true"]).returncode
        started = time.time()
        child = subprocess.Popen(command)
        try:
            code = child.wait()
        except KeyboardInterrupt:   # the run records itself KILLED (ptflow says where); nothing to compare
            child.wait()
            print(f"{PROG}: stopped; the reproduction of {run_id} was not compared", file=sys.stderr)
            return 130
        record = _find_record(Path(new_config["outputs_dir"]).resolve(), child.pid, run_id, started)
        if record is None:
            print(f"{PROG}: the reproduction of {run_id} did not start a run (ptflow exit {code}; its message is "
                  "above). Paths in the source's config are relative to where the source ran: run "
                  f"{PROG} from there (the source's run dir: {source.data.tags.get('ptflow.run_dir', 'unknown')})",
                  file=sys.stderr)
            return 1
        new_file = record.files.get("export.manifest")
        new_manifest = json.loads(Path(new_file).read_text(encoding="utf-8")) if new_file else None
        check = OutputCheck.between(client, source, config, record, new_manifest, scratch_dir, args.atol, args.rtol)
        verdicts = run_verdicts(source, config, (source_manifest, new_manifest), record, check)
    return _report(source, record, verdicts, (source_manifest, new_manifest))


def _vet(config: Mapping[str, Any], run_id: str, uri: str, args: argparse.Namespace) -> None:
    """Show what the stored config would run here; Refused, before anything runs, when any of it
    is not allowed (``ptflow.review.reproduce_trust``)."""
    from ptflow.review.reproduce_trust import judge_config, report, user_patterns

    patterns, note = user_patterns(args.allow_target, Path.cwd())
    if note:
        print(f"{PROG}: note: {note}", file=sys.stderr)
    judged = judge_config(config, patterns, args.trust_pickle)
    refused = [j for j in judged if not j.allowed]
    if not refused:
        print(f"{PROG}: what its config runs here (a stored config is untrusted input):\n{report(judged)}", flush=True)
        return
    allowable = [j.name for j in refused if j.why == "not in the allowlist"]
    fix = (f"if you trust {', '.join(repr(n) for n in allowable)}, allow them: "
           + " ".join(f"--allow-target {n}" for n in allowable)
           + " (globs such as 'mymodels.*' work; or list them under [tool.ptflow.reproduce] allow_targets in "
           "./pyproject.toml)" if allowable else "the others can never be allowed")
    raise Refused(f"run {run_id}'s config in {uri} would run code ptflow does not trust on this machine; anyone who "
                  f"can write to the store can change it, so nothing was run:\n{report(judged)}\n  fix: {fix}")


def _source_files(client: Any, source: Any, into: Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The source's resolved config (required) and export manifest (None when it has none)."""
    from omegaconf import OmegaConf

    if source.data.tags.get("ptflow.sweep_parent") == "true":
        children = client.search_runs([source.info.experiment_id],
                                      f"tags.mlflow.parentRunId = '{source.info.run_id}'", max_results=5)
        listed = "".join(f"\n  {r.info.run_id}  {r.info.run_name}  ({r.info.status})" for r in children)
        rank = shlex.join(["ptflow-compare", "--parent", source.info.run_id, "--tracking-uri", client.tracking_uri])
        raise Refused(f"run {source.info.run_id} is the parent run of sweep '{source.info.run_name}', not a job: "
                      f"reproduce one of its jobs ({rank} ranks them and "
                      f"prints the command for the best one){'; its jobs include:' + listed if listed else ''}")
    logged = _download(client, source.info.run_id, "config.yaml", into)
    if logged is None:
        raise Refused(f"run {source.info.run_id} has no config.yaml artifact: it was not made by ptflow, or its "
                      f"artifacts are gone from {source.info.artifact_uri}; {PROG} re-runs the resolved config "
                      "ptflow logs with every run")
    manifest = _download(client, source.info.run_id, MANIFEST_ARTIFACT, into)
    return (OmegaConf.to_container(OmegaConf.load(logged), resolve=False),
            json.loads(manifest.read_text(encoding="utf-8")) if manifest else None)


def _command(new_config: Mapping[str, Any], config: Mapping[str, Any], source: Any, folder: Path) -> list[str]:
    """Write the reproduction's primary config into `folder`; the `ptflow` command that runs it."""
    from ptflow.app.args import CONFIG_DIR
    from ptflow.app.overrides import option_groups

    choices = source_choices(config, source.data.tags, set(option_groups([CONFIG_DIR])))
    header = (f"# {PROG} {source.info.run_id} — the resolved config of that MLflow run, with ptflow's "
              "hydra settings\n")
    write_config(folder, new_config, choices, header)
    return [sys.executable, "-m", "ptflow", "-cp", str(folder), "-cn", CONFIG_NAME]


def _report(source: Any, record: RunRecord, verdicts: list[Verdict], manifests: tuple[Any, Any]) -> int:
    from ptflow.runs.summary import relative
    from ptflow.runs.tracker import mlflow_metric_key

    run_id = source.info.run_id
    new_id = record.tracking.run_id or "(not in MLflow: see the run's record)"
    width = max(len(v.item) for v in verdicts)
    lines = [f"\n{PROG}: {run_id} → MLflow run {new_id} (tag ptflow.reproduces={run_id}), "
             f"run dir {relative(record.run_dir)}", *(v.render(width) for v in verdicts)]
    lines += latency_lines(source.data.metrics, {mlflow_metric_key(k): v for k, v in record.metrics.items()}, width)
    lines += context_lines(source.data.tags, record.tags, *manifests, width)
    lines.append(headline(verdicts))
    print("\n".join(lines), flush=True)
    return exit_code(verdicts, record.status == "FINISHED")


def main() -> None:
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
