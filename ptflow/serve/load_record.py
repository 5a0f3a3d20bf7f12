"""The load test's MLflow record: a run of its own beside the served run, linked by tags.

The load test measures a server, not the pipeline run that produced the served file, so it
does not write into that run's metrics: it makes a sibling run in the same experiment
(``serve-loadtest-<id8>``, tag ``ptflow.served_run_id``; no ``mlflow.parentRunId``) holding
the figures, the picture and ``loadtest.json``, and leaves on the served run only two tags
pointing at it (``ptflow.loadtest_run_id``, ``ptflow.served.throughput_per_s``).
"""
from __future__ import annotations

import json
import re
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

if TYPE_CHECKING:
    from ptflow.serve.loadgen import LevelResult

ARTIFACT_DIR = "serve"


def label_slug(label: str) -> str:
    """``"Batching on (8)"`` -> ``"batching_on__8_"``: lowercase, non-alphanumerics -> ``_``."""
    return re.sub(r"[^a-z0-9]", "_", label.lower())


def summary(results_by_label: Mapping[str, Sequence[LevelResult]]) -> dict[str, float]:
    """The first label's best OK throughput over its levels, and its p50 at concurrency 1."""
    first = next(iter(results_by_label.values()), [])
    out: dict[str, float] = {}
    if first:
        out["serve/throughput_per_s_max"] = max(r.throughput_per_s for r in first)
    at_one = [r.p50_ms for r in first if r.concurrency == 1 and r.p50_ms is not None]
    if at_one:
        out["serve/p50_ms_c1"] = at_one[0]
    return out


def level_metrics(results_by_label: Mapping[str, Sequence[LevelResult]]) -> dict[str, float]:
    """``serve/<label-slug>/c<N>/<figure>`` for every label and level (latencies when measured)."""
    out: dict[str, float] = {}
    for label, results in results_by_label.items():
        for r in results:
            base = f"{ARTIFACT_DIR}/{label_slug(label)}/c{r.concurrency}"
            figures = {"throughput_per_s": r.throughput_per_s, "p50_ms": r.p50_ms, "p95_ms": r.p95_ms,
                       "p99_ms": r.p99_ms, "errors": float(r.errors)}
            out.update({f"{base}/{k}": float(v) for k, v in figures.items() if v is not None})
    return out


def log_loadtest(tracking_uri: str, served_run_id: str, results_by_label: Mapping[str, Sequence[LevelResult]],
                 png: Path | None, params: Mapping[str, str]) -> str:
    """Record the load test as a new run beside ``served_run_id``; tag the served run with it.

    Returns the new run's id. The new run ends FINISHED, or FAILED with tag ``ptflow.error``
    when logging raises (the error is raised again).
    """
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    served = client.get_run(served_run_id)   # raises MlflowException naming the id when it is not there
    tags = {"ptflow.served_run_id": served_run_id, "ptflow.kind": "loadtest"}
    run = client.create_run(served.info.experiment_id, run_name=f"serve-loadtest-{served_run_id[:8]}", tags=tags)
    run_id = run.info.run_id
    sums = summary(results_by_label)
    try:
        now = int(time.time() * 1000)
        metrics = {**level_metrics(results_by_label), **sums}
        client.log_batch(run_id, params=[Param(str(k), str(v)) for k, v in params.items()],
                         metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
                         tags=[RunTag("ptflow.labels", json.dumps(list(results_by_label)))])
        if png is not None:
            client.log_artifact(run_id, str(png), ARTIFACT_DIR)
        with tempfile.TemporaryDirectory(prefix="ptflow-loadtest-") as tmp:
            doc = Path(tmp) / "loadtest.json"
            doc.write_text(json.dumps({"served_run_id": served_run_id, "params": dict(params),
                                       "results": {label: [r.to_json() for r in results]
                                                   for label, results in results_by_label.items()}},
                                      indent=2) + "\n")
            client.log_artifact(run_id, str(doc), ARTIFACT_DIR)
    except BaseException as exc:
        try:
            client.set_tag(run_id, "ptflow.error", f"{type(exc).__name__}: {exc}"[:5000])
            client.set_terminated(run_id, "FAILED")
        except Exception:   # the store itself failing: the logging error is the one to raise
            pass
        raise
    client.set_terminated(run_id, "FINISHED")
    client.set_tag(served_run_id, "ptflow.loadtest_run_id", run_id)
    if "serve/throughput_per_s_max" in sums:
        client.set_tag(served_run_id, "ptflow.served.throughput_per_s", f"{sums['serve/throughput_per_s_max']:.1f}")
    return run_id
