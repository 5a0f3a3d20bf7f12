"""The default `ptflow` run's work, written by hand the way a user would without ptflow: the
other side of the start-up overhead comparison in ``bench/cli_startup.py``.

    python bench/by_hand.py [--timed-s 1.0] [--out DIR]

The same work as ``ptflow benchmark.repeats=1`` (digits_mlp, int8_dynamic, eager, benchmark,
pt2 export, MLflow sqlite), not less: the bundled model and its held-out digits split as the
load stage builds them; finite, batch-first outputs and the baseline's accuracy (validate);
torchao int8 dynamic on a copy (quantize); both models warmed up and then timed in
interleaved turns, with the candidate's accuracy and agreement on every eval batch
(benchmark); torch.export with a dynamic batch dim, saved, reloaded in this process and
compared on every batch and on a batch of one (export); the config, the figures and the file
logged to a fresh MLflow sqlite store (tracking). The one ptflow import is the bundled
architecture, ``DigitsMLP``: its weights ship beside it.

What ptflow does beyond this — its pre-flight, the fresh-process load check, the early
torch.export trace, memory and FLOP passes, the histogram, the logged MLflow model — is
what the comparison counts as ptflow's cost.

``--timed-s`` is how long the interleaved timing lasts (ptflow stops by its CI rule, usually
after 0.5–2 s; cli_startup.py passes the paired ptflow run's ``benchmark.timed_s``). The last
line printed is JSON with the figures, the seconds spent timing (``timed_s``) and those spent
warming up and timing (``timed_section_s``, what ptflow's device lock spans).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

WEIGHTS = Path(__file__).resolve().parents[1] / "ptflow" / "zoo" / "digits_mlp.safetensors"
BATCH_SIZE = 150      # conf/data/digits.yaml: 450 held-out digits = 3 batches
WARMUP_CALLS, WARMUP_S = 10, 0.2    # conf/benchmark/default.yaml's warm-up minimums
MIN_SAMPLES, TURN_SAMPLES, BLOCK_S = 100, 10, 0.001
EXPORT_TOLERANCE = 1e-4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timed-s", type=float, default=1.0, help="seconds of interleaved timing")
    parser.add_argument("--out", type=Path, default=None, help="where mlflow.db and model.pt2 go (default: a temp dir)")
    args = parser.parse_args()
    if args.out is None:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(run(Path(tmp), args.timed_s)))
    else:
        args.out.mkdir(parents=True, exist_ok=True)
        print(json.dumps(run(args.out.resolve(), args.timed_s)))


def run(out: Path, timed_s: float) -> dict[str, float]:
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // 2))   # device=cpu, threads: null
    batches = load_data()
    baseline = load_model()
    base_outputs = validate(baseline, batches)
    candidate = quantize(baseline)
    metrics = {"validate.top1_accuracy": accuracy(base_outputs, batches)}
    metrics.update(benchmark(baseline, candidate, batches, base_outputs, timed_s))
    path = out / "model.pt2"
    metrics["export.reload_max_abs_error"] = export(candidate, batches, path)
    log_to_mlflow(out, metrics, path)
    return metrics


def load_data() -> list[tuple["torch.Tensor", "torch.Tensor"]]:
    """The held-out 25% of sklearn's digits (stratified, seed 0), pixels in [0, 1], in batches."""
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    features, labels = load_digits(return_X_y=True)
    _, x, _, y = train_test_split(features / 16.0, labels, test_size=0.25, random_state=0, stratify=labels)
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.int64)
    return [(x[i:i + BATCH_SIZE], y[i:i + BATCH_SIZE]) for i in range(0, len(x), BATCH_SIZE)]


def load_model() -> "torch.nn.Module":
    from safetensors.torch import load_file

    from ptflow.zoo.digits import DigitsMLP

    model = DigitsMLP(in_features=64, hidden=1024, depth=3, classes=10)
    model.load_state_dict(load_file(WEIGHTS), strict=True)
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def validate(model, batches) -> list["torch.Tensor"]:
    """The baseline's outputs on every batch, each finite and batch-first."""
    import torch

    outputs = []
    with torch.inference_mode():
        for x, _ in batches:
            out = model(x)
            if out.shape[0] != x.shape[0] or not bool(torch.isfinite(out).all()):
                raise SystemExit(f"baseline output {tuple(out.shape)} is not finite and batch-first")
            outputs.append(out)
    return outputs


def quantize(model):
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, PerRow, quantize_

    candidate = copy.deepcopy(model)
    quantize_(candidate, Int8DynamicActivationInt8WeightConfig(granularity=PerRow()))
    return candidate


def accuracy(outputs, batches) -> float:
    right = sum(int((out.argmax(-1) == y).sum()) for out, (_, y) in zip(outputs, batches))
    return right / sum(len(y) for _, y in batches)


def benchmark(baseline, candidate, batches, base_outputs, timed_s: float) -> dict[str, float]:
    """Warm each model up, time them in alternating turns, then their accuracy and agreement."""
    import torch

    x = batches[0][0]
    with torch.inference_mode():
        started = time.perf_counter()
        calls = {"baseline": warm_up(baseline, x), "candidate": warm_up(candidate, x)}
        samples, seconds = interleave({"baseline": baseline, "candidate": candidate}, calls, x, timed_s)
        section_s = time.perf_counter() - started
        cand_outputs = [candidate(b) for b, _ in batches]
    metrics = {}
    for role, values in samples.items():
        ms = sorted(v * 1e3 for v in values)
        metrics.update({f"{role}.p50_ms": statistics.median(ms), f"{role}.p90_ms": ms[int(0.9 * (len(ms) - 1))],
                        f"{role}.p99_ms": ms[int(0.99 * (len(ms) - 1))]})
    ratios = [b / c for b, c in zip(samples["baseline"], samples["candidate"])]
    agree = sum(int((a.argmax(-1) == b.argmax(-1)).sum()) for a, b in zip(base_outputs, cand_outputs))
    metrics.update({"speedup_p50": statistics.median(ratios), "timed_s": seconds, "timed_section_s": section_s,
                    "candidate.top1_accuracy": accuracy(cand_outputs, batches),
                    "top1_agreement": agree / sum(len(b) for b in base_outputs),
                    "max_abs_err": max(float((a - b).abs().max()) for a, b in zip(base_outputs, cand_outputs))})
    return metrics


def timed_block(model, x, calls: int) -> float:
    started = time.perf_counter_ns()
    for _ in range(calls):
        model(x)
    return (time.perf_counter_ns() - started) / 1e9 / calls


def warm_up(model, x) -> int:
    """A cold call, then at least WARMUP_CALLS calls and WARMUP_S seconds; the calls per
    sample that make a sample last BLOCK_S."""
    started = time.perf_counter()
    model(x)
    calls, per_call = 0, []
    while calls < WARMUP_CALLS or time.perf_counter() - started < WARMUP_S:
        per_call.append(timed_block(model, x, 1))
        calls += 1
    return max(1, round(BLOCK_S / statistics.median(per_call[-5:]) + 0.5))


def interleave(models, calls, x, timed_s: float) -> tuple[dict[str, list[float]], float]:
    """Turns of TURN_SAMPLES samples, A B then B A, each turn after 2 untimed blocks, until
    MIN_SAMPLES per model and `timed_s` seconds. (Per-call seconds by model, seconds spent.)"""
    samples = {role: [] for role in models}
    order = list(models)
    started = time.perf_counter()
    turn = 0
    while min(len(v) for v in samples.values()) < MIN_SAMPLES or time.perf_counter() - started < timed_s:
        for role in (order if turn % 2 == 0 else order[::-1]):
            for _ in range(2):
                timed_block(models[role], x, calls[role])
            samples[role] += [timed_block(models[role], x, calls[role]) for _ in range(TURN_SAMPLES)]
        turn += 1
    return samples, time.perf_counter() - started


def export(candidate, batches, path: Path) -> float:
    """torch.export with a dynamic batch dim, saved; reloaded and compared on every batch and
    on a batch of one. The largest difference."""
    import torch

    x = batches[0][0]
    program = torch.export.export(candidate, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, path)
    reloaded = torch.export.load(path).module()
    worst = 0.0
    with torch.inference_mode():
        for inputs in [b for b, _ in batches] + [x[:1]]:
            worst = max(worst, float((candidate(inputs) - reloaded(inputs)).abs().max()))
    if worst > EXPORT_TOLERANCE:
        raise SystemExit(f"the reloaded pt2 differs by {worst:.3g}")
    return worst


def log_to_mlflow(out: Path, metrics: dict[str, float], exported: Path) -> None:
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{out / 'mlflow.db'}")
    mlflow.set_experiment(experiment_id=mlflow.create_experiment(
        "by_hand", artifact_location=(out / "mlartifacts").as_uri()))
    with mlflow.start_run(run_name="digits_mlp-int8_dynamic-eager"):
        mlflow.log_params({"model": "digits_mlp", "quantize": "int8_dynamic", "granularity": "per_row",
                           "compile": "eager", "batch_size": BATCH_SIZE, "export": "pt2"})
        mlflow.log_metrics(metrics)
        mlflow.log_artifact(str(exported), artifact_path="files")


if __name__ == "__main__":
    main()
