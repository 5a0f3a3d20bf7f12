"""The verdicts of `ptflow-reproduce`: is each export file and the task metric the same again?

A file with the source's sha256 is the same. Otherwise a byte-stable format (docs/recipes/export.md, "Byte
reproducibility": pt2, onnx, safetensors) is different; the others are loaded from both runs
and run on the same example inputs, and their outputs must agree within a tolerance: aoti
holds a freshly compiled shared library, and torchscript records the Python call stack of
its trace (ptflow's file paths and line numbers), so its bytes change with the checkout even
when nothing else does. The task metric (``data.metric``, as each stage logged it) must be
identical. What cannot be checked is UNCHECKED, never passed. Latency is noisy: shown only.

``file_verdicts``, ``metric_verdicts`` and ``exit_code`` are pure; ``OutputCheck`` loads files.
"""
from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ptflow.core.files import sha256_file

BYTE_STABLE = frozenset({"pt2", "onnx", "safetensors"})
WHY_BYTES_VARY = {"aoti": "aoti builds are not byte-stable",
                  "torchscript": "its bytes record the trace's call stack: ptflow's paths and line numbers"}
LATENCY_KEYS = ("benchmark/candidate.p50_ms", "benchmark/speedup_p50")   # shown for information only
SHA_SHOWN = 12
# formats whose file may be loaded from a tracking store: loading them runs no Python or native code
# (TorchScript's own unpickler; aoti holds a compiled library, a plugin's format is unknown)
LOADABLE_FROM_STORE = frozenset({"torchscript"})


class Outcome(str, enum.Enum):
    SAME = "same"
    DIFFERENT = "DIFFERENT"
    UNCHECKED = "UNCHECKED"   # could not be checked: not a pass


@dataclass(frozen=True)
class Verdict:
    item: str       # what was compared: "export pt2", "metric validate/top1_accuracy", "run status"
    outcome: Outcome
    detail: str

    def render(self, width: int = 34) -> str:
        return f"  {self.outcome.value:<10} {self.item:<{width}} {self.detail}"


# (source manifest entry, reproduction manifest entry) -> verdict on their outputs
CompareOutputs = Callable[[Mapping[str, Any], Mapping[str, Any]], Verdict]


def file_verdicts(source: Mapping[str, Any] | None, new: Mapping[str, Any] | None,
                  compare_outputs: CompareOutputs) -> list[Verdict]:
    """One verdict per file of the source's manifest (and per file only the reproduction has)."""
    if source is None:
        return [Verdict("export", Outcome.UNCHECKED, "the source run has no export manifest in its MLflow "
                        "artifacts (files/export.manifest/manifest.json): nothing to compare the new files with")]
    if new is None:
        return [Verdict("export", Outcome.DIFFERENT, "the reproduction wrote no export manifest")]
    mine = {entry["format"]: entry for entry in new.get("files", [])}
    verdicts = []
    for entry in source.get("files", []):
        fmt = entry["format"]
        other = mine.pop(fmt, None)
        item = f"export {fmt}"
        if other is None:
            verdicts.append(Verdict(item, Outcome.DIFFERENT, f"the reproduction exported no {fmt} file"))
        elif fmt in BYTE_STABLE or entry.get("sha256") == other.get("sha256"):
            verdicts.append(_same_bytes(item, entry, other))
        else:
            verdicts.append(compare_outputs(entry, other))
    verdicts += [Verdict(f"export {fmt}", Outcome.DIFFERENT, f"only the reproduction exported {entry['file']}")
                 for fmt, entry in mine.items()]
    if source.get("example"):   # the input example and the outputs the model gave for it
        verdicts.append(_same_bytes("export example", source["example"], new["example"]) if new.get("example")
                        else Verdict("export example", Outcome.DIFFERENT, "the reproduction wrote no input example"))
    return verdicts


def _same_bytes(item: str, source: Mapping[str, Any], new: Mapping[str, Any]) -> Verdict:
    a, b = source.get("sha256"), new.get("sha256")
    if not a:
        return Verdict(item, Outcome.UNCHECKED, f"the source manifest records no sha256 for {source.get('file')}")
    if a == b:
        return Verdict(item, Outcome.SAME, f"{new.get('file')}: sha256 {a[:SHA_SHOWN]}… identical")
    return Verdict(item, Outcome.DIFFERENT, f"{new.get('file')}: sha256 {str(b)[:SHA_SHOWN]}…, the source's "
                   f"{a[:SHA_SHOWN]}…")


def task_metric_keys(metric: str | None, source_metrics: Mapping[str, float]) -> list[str]:
    """The MLflow keys of the task metric as each stage logged it (validate/top1_accuracy,
    benchmark/top1_accuracy, benchmark/top1_accuracy_delta) and the accuracy gate's verdict."""
    if not metric:
        return []
    names = {metric, f"{metric}_delta"}
    keys = [k for k in source_metrics if k.partition("/")[2] in names]
    keys += [k for k in ("accuracy/drop", "accuracy/accepted") if k in source_metrics]
    return sorted(keys)


def metric_verdicts(metric: str | None, source: Mapping[str, float], new: Mapping[str, float]) -> list[Verdict]:
    if not metric:
        return [Verdict("metric", Outcome.SAME, "none to compare (data.metric is null: latency only)")]
    keys = sorted(set(task_metric_keys(metric, source)) | set(task_metric_keys(metric, new)))
    if not keys:
        return [Verdict(f"metric {metric}", Outcome.SAME,
                        "logged by neither run (no stage of the pipeline measures it)")]
    verdicts = []
    for key in keys:
        item = f"metric {key}"
        if key not in source:
            verdicts.append(Verdict(item, Outcome.DIFFERENT, f"{new[key]:.6g}; the source logged no value"))
        elif key not in new:
            verdicts.append(Verdict(item, Outcome.DIFFERENT,
                                    f"not logged by the reproduction (source {source[key]:g})"))
        elif _identical(source[key], new[key]):
            verdicts.append(Verdict(item, Outcome.SAME, f"{new[key]:.6g} in both"))
        else:
            verdicts.append(Verdict(item, Outcome.DIFFERENT, f"{new[key]!r}, the source's {source[key]!r}"))
    return verdicts


def _identical(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def latency_lines(source: Mapping[str, float], new: Mapping[str, float], width: int = 34) -> list[str]:
    return [f"  {'info':<10} {key:<{width}} {source[key]:.4g} then {new[key]:.4g} (timings vary: not compared)"
            for key in LATENCY_KEYS if key in source and key in new]


def context_lines(source_tags: Mapping[str, str], new_tags: Mapping[str, str],
                  source_manifest: Mapping[str, Any] | None, new_manifest: Mapping[str, Any] | None,
                  width: int = 34) -> list[str]:
    """What else differs between the two runs and may explain a difference: the code and the
    package versions (as the runs' tags and manifests record them)."""
    lines = []
    code = [(t.get("git_sha", "unknown")[:12], t.get("git_dirty") == "true") for t in (source_tags, new_tags)]
    if code[0] != code[1] or code[0][1]:
        shown = [f"{sha}{' (uncommitted changes)' if dirty else ''}" for sha, dirty in code]
        lines.append(f"  {'info':<10} {'code (git_sha)':<{width}} {shown[0]} then {shown[1]}")
    old, now = ((m or {}).get("versions", {}) for m in (source_manifest, new_manifest))
    changed = [f"{name} {old[name]} then {now.get(name)}" for name in sorted(old) if old[name] != now.get(name)]
    if changed and new_manifest:
        lines.append(f"  {'info':<10} {'versions':<{width}} {', '.join(changed)}")
    return lines


def planned_checks(config: Mapping[str, Any], manifest: Mapping[str, Any] | None) -> str:
    """What a reproduction of this source will compare, in words (for --dry-run)."""
    exported = "export" in (config.get("pipeline") or [])
    files = [e["format"] for e in (manifest or {}).get("files", [])] if exported else []
    example = ["example"] if exported and (manifest or {}).get("example") else []
    by_bytes = [f for f in files if f in BYTE_STABLE] + example
    others = [f for f in files if f not in BYTE_STABLE]
    parts = [f"{', '.join(by_bytes)} by sha256"] if by_bytes else []
    parts += [f"{', '.join(others)} by sha256, else by outputs"] if others else []
    parts += ["no export files (the source logged no manifest)"] if exported and manifest is None else []
    metric = (config.get("data") or {}).get("metric")
    return "; ".join([*parts, f"the task metric {metric}" if metric else "no task metric (data.metric is null)"])


def run_verdicts(source: Any, config: Mapping[str, Any], manifests: tuple[Any, Any], record: Any,
                 check: CompareOutputs) -> list[Verdict]:
    """All verdicts: the runs' status, each export file, the task metric. `source` is the MLflow
    run, `record` the reproduction's RunRecord, `manifests` (source's, reproduction's)."""
    from ptflow.runs.tracker import mlflow_metric_key

    status, error = source.info.status, source.data.tags.get("ptflow.error", "no error recorded")
    metric = (config.get("data") or {}).get("metric")
    new_metrics = {mlflow_metric_key(k): v for k, v in record.metrics.items()}
    if record.status != "FINISHED":
        ended = f"the reproduction ended {record.status}: {record.error or record.reason}"
        if status == "FINISHED":
            return [Verdict("run status", Outcome.DIFFERENT, ended)]
        # the failure may reproduce, but a failed run is never a reproduced result: what both logged is shown
        same = "with the same error" if error == record.error else f"too ({error})"
        return [Verdict("run status", Outcome.UNCHECKED, f"{ended}; the source ended {status} {same}"),
                *metric_verdicts(metric, source.data.metrics, new_metrics)]
    verdicts = [Verdict("run status", Outcome.SAME, "FINISHED in both") if status == "FINISHED" else
                Verdict("run status", Outcome.DIFFERENT, f"the source ended {status} ({error}); the reproduction "
                        "FINISHED")]
    if "export" in (config.get("pipeline") or []):
        verdicts += file_verdicts(*manifests, check)
    return verdicts + metric_verdicts(metric, source.data.metrics, new_metrics)


def exit_code(verdicts: Sequence[Verdict], reproduction_finished: bool) -> int:
    """0: every item the same; 1: something differs, could not be checked, or the run failed."""
    return 0 if reproduction_finished and verdicts and all(v.outcome is Outcome.SAME for v in verdicts) else 1


def headline(verdicts: Sequence[Verdict]) -> str:
    counts = {o: sum(v.outcome is o for v in verdicts) for o in Outcome}
    if counts[Outcome.SAME] == len(verdicts):
        return f"REPRODUCED: all {len(verdicts)} item(s) the same"
    parts = [f"{counts[o]} {o.value.lower()}" for o in (Outcome.DIFFERENT, Outcome.UNCHECKED) if counts[o]]
    return f"NOT REPRODUCED: {', '.join(parts)} of {len(verdicts)} item(s)"


class OutputCheck:
    """Compare an export that is not byte-stable (aoti, torchscript) of two runs by running both
    files on the same example inputs. `loaders()` maps each format to its registered load
    function; `locate` finds the source run's file (its run dir, else its MLflow artifacts)."""

    def __init__(self, loaders: Callable[[], Mapping[str, Callable[..., Any]]],
                 locate: Callable[[Mapping[str, Any]], Path | str], new_dir: Path, inputs: Callable[[], Any],
                 atol: float | None, rtol: float):
        self.loaders, self.locate, self.new_dir = loaders, locate, new_dir
        self.inputs, self.atol, self.rtol = inputs, atol, rtol
        self._loaders: Mapping[str, Callable[..., Any]] | None = None   # planned once, when first needed

    @classmethod
    def between(cls, client: Any, source: Any, config: Mapping[str, Any], record: Any,
                manifest: Mapping[str, Any] | None, scratch: Path, atol: float | None, rtol: float) -> "OutputCheck":
        """The check between the source run (MLflow) and the reproduction (its record, manifest)."""
        new_dir = Path(record.files.get("export.manifest", ".")).parent
        return cls(lambda: format_loaders(record.config),
                   lambda entry: source_file(client, source, config, entry, scratch / "files"),
                   new_dir, lambda: example_inputs(manifest, new_dir), atol, rtol)

    def __call__(self, source: Mapping[str, Any], new: Mapping[str, Any]) -> Verdict:
        fmt = source["format"]
        item = f"export {fmt}"
        if self._loaders is None:
            self._loaders = self.loaders()
        load = self._loaders.get(fmt)
        if load is None:
            return Verdict(item, Outcome.UNCHECKED, f"no loader registered for format '{fmt}' here")
        found = self.locate(source)
        if not isinstance(found, Path):
            return Verdict(item, Outcome.UNCHECKED, found)   # why the source file is not to be had
        atol = float(source.get("tolerance", 0.0)) if self.atol is None else self.atol
        try:
            inputs = self.inputs()
            if isinstance(inputs, str):
                return Verdict(item, Outcome.UNCHECKED, inputs)   # why there are no inputs to run
            compared = _compare(load(found, None), load(self.new_dir / new["file"], None), inputs, atol, self.rtol)
        except Exception as error:   # a file that fails to load or run: say which and why
            text = str(error).strip().splitlines()[0] if str(error).strip() else ""
            return Verdict(item, Outcome.UNCHECKED,
                           f"could not load and run both files: {type(error).__name__}: {text}")
        if compared is None:
            return Verdict(item, Outcome.DIFFERENT, "the two files return outputs of different structure or shape")
        worst, within, count = compared
        why = WHY_BYTES_VARY.get(fmt, "the format is not known to be byte-stable")
        detail = (f"{new['file']}: sha256 differs ({why}); outputs on the example ({count} tensor(s)) differ by "
                  f"at most {worst:.3g} (atol {atol:g}, rtol {self.rtol:g})")
        return Verdict(item, Outcome.SAME if within else Outcome.DIFFERENT, detail)


def _compare(first: Any, second: Any, inputs: Any, atol: float, rtol: float) -> tuple[float, bool, int] | None:
    """(largest abs difference, all within atol + rtol*|source|, tensors compared), or None
    when the outputs differ in structure or shape."""
    import torch

    from ptflow.core.spec import flatten_outputs

    with torch.inference_mode():
        a = [t for _, t in flatten_outputs(first(inputs))]
        b = [t for _, t in flatten_outputs(second(inputs))]
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        return None
    worst, within = 0.0, True
    for x, y in zip(a, b):
        if x.numel():
            x, y = x.double(), y.double()
            worst = max(worst, float((x - y).abs().max()))
            within = within and bool(torch.allclose(y, x, rtol=rtol, atol=atol, equal_nan=True))
    return worst, within, len(a)


def format_loaders(config: Mapping[str, Any]) -> dict[str, Callable[..., Any]]:
    """Each export format's registered load function, from the export stage that `config`
    plans (the stage registry: ptflow never imports a stage by name); {} if it does not plan."""
    from ptflow.app.settings import compile_plan
    from ptflow.core.errors import ConfigError

    try:
        plan = compile_plan(config)
    except ConfigError:
        return {}
    stage = next((p.stage for p in plan.stages if p.name == "export"), None)
    return {fmt.name: fmt.load for fmt in getattr(stage, "formats", [])}


def example_inputs(manifest: Mapping[str, Any] | None, export_dir: Path) -> Any:
    """Inputs to run both runs' files on: the rows of the reproduction's input example
    (``<name>.example.safetensors``), else the example saved inside its pt2 program; or why none."""
    from ptflow.core.spec import ModelInputs

    example = (manifest or {}).get("example")
    if example and (export_dir / example["file"]).is_file():
        from safetensors.torch import load_file

        tensors = load_file(str(export_dir / example["file"]))
        names = [entry["name"] for entry in example["inputs"]]
        values = [tensors[f"input.{name}"] for name in names]
        if example.get("passed_as") == "keyword":
            return ModelInputs(kwargs=dict(zip(names, values)))
        return ModelInputs(tuple(values))
    pt2 = next((e for e in (manifest or {}).get("files", []) if e["format"] == "pt2"), None)
    if pt2 and (export_dir / pt2["file"]).is_file():
        import io

        import torch

        from ptflow.inputs.archive_audit import audit_pt2_bytes

        data = (export_dir / pt2["file"]).read_bytes()
        problems = audit_pt2_bytes(data)
        if problems:
            return f"the reproduction's {pt2['file']} would run code when loaded: {problems[0]}"
        saved = torch.export.load(io.BytesIO(data)).example_inputs
        if saved is not None:
            args, kwargs = saved
            return ModelInputs(tuple(args), dict(kwargs or {}))
    return ("no example inputs to run the files on: the reproduction wrote no input example and no pt2 program "
            "holding one (add pt2 to export.formats)")


def source_file(client: Any, source: Any, config: Mapping[str, Any], entry: Mapping[str, Any],
                into: Path) -> Path | str:
    """The source run's copy of a manifest entry's file, checked against the sha256 its manifest
    records: from its run dir (or export.dir) if still there, else its MLflow artifacts (only
    for LOADABLE_FROM_STORE formats); or why not."""
    name, fmt, expected = entry["file"], entry["format"], entry.get("sha256")
    run_dir = source.data.tags.get("ptflow.run_dir")
    export_dir = (config.get("export") or {}).get("dir")
    local = [Path(export_dir) / name] if export_dir else []
    local += [Path(run_dir) / "export" / name] if run_dir else []
    for path in local:
        if path.is_file() and sha256_file(path) == expected:
            return path
    if fmt not in LOADABLE_FROM_STORE:
        why = ("it holds a compiled library (native code)" if fmt == "aoti"
               else "ptflow cannot tell that loading it runs no code")
        return (f"the source's {name} is not in its run dir on this machine ({run_dir or 'unknown'}), and ptflow does not "
                f"load a {fmt} file from the tracking store: {why}, and anyone who can write to the store could have "
                "replaced it; reproduce on the machine that holds the source's run dir")
    artifact = f"files/export.{fmt}/{name}"
    try:
        downloaded = Path(client.download_artifacts(source.info.run_id, artifact, str(into)))
    except Exception:   # not logged (tracking.log_exports=false), or the artifact store lost it
        return (f"the source's {name} is neither in its run dir ({run_dir or 'unknown'}) with the sha256 its "
                f"manifest records, nor in its MLflow artifacts ({artifact}; tracking.log_exports=false?)")
    if sha256_file(downloaded) != expected:
        return f"the source's {name} in its MLflow artifacts does not have the sha256 its manifest records"
    return downloaded

