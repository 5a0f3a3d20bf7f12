"""Every CPU quantize recipe on the three bundled models, at batch 1 and the default batch
(150), with compile=eager and compile=inductor: speedup over the fp32 eager baseline
(paired: timed alternately in the same process), accuracy delta and model size.

    python bench/quantize.py [--models mlp,cnn,transformer] [--recipes int8_dynamic,...]
                             [--iters 100] [--batches 1,150]

In-process (one Python process, like a sweep with the basic launcher): each row compiles
its own plan and runs load -> validate -> quantize -> compile -> benchmark.
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import warnings
from pathlib import Path

MODELS = {"mlp": [], "cnn": ["experiment=digits_cnn"], "transformer": ["experiment=digits_transformer"]}


def run_one(overrides: list[str], run_dir: Path) -> dict[str, float]:
    from ptflow.app.args import CONFIG_DIR
    from ptflow.app.overrides import Source, compose_config
    from ptflow.app.settings import compile_plan
    from ptflow.core import engine
    from ptflow.core.stage import RunContext
    from ptflow.measure import device

    config, choices = compose_config(Source(CONFIG_DIR), overrides, resolve=True)
    plan = compile_plan(config, choices)
    device.apply(plan.settings.device)
    ctx = RunContext(run_dir, plan.settings.device.name, plan.settings.seed, "0" * 64,
                     device.capture(plan.settings.device), engine.progress)
    return dict(engine.run(plan, ctx).metrics)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="mlp,cnn,transformer")
    parser.add_argument("--recipes", default="none,int8_dynamic,int8_weight_only,int8_static,int8_qat,"
                                             "legacy_dynamic,bf16,fp16,autocast_bf16,autocast_fp16")
    parser.add_argument("--compile", default="eager,inductor")
    parser.add_argument("--batches", default="1,150")
    parser.add_argument("--iters", type=int, default=100)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    print(f"{'model':<12}{'recipe':<17}{'compile':<9}{'batch':>6}{'fp32 ms':>9}{'p50 ms':>9}{'speedup':>9}"
          f"{'acc delta':>11}{'MB before':>10}{'MB after':>9}{'quant s':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            for recipe in args.recipes.split(","):
                for backend in args.compile.split(","):
                    for batch in map(int, args.batches.split(",")):
                        overrides = [*MODELS[model], f"quantize={recipe}", f"compile={backend}",
                                     "experiment=latency_only" if not MODELS[model] else "pipeline=[load,validate,"
                                     "quantize,compile,benchmark]", "tracking=none", f"data.batch_size={batch}",
                                     "quantize.calibration.batch_size=150", f"benchmark.iters={args.iters}"]
                        if batch == 1:   # latency only: accuracy comes from the default-batch row
                            overrides += ["data.max_batches=8", "benchmark.fidelity=false"]
                        try:
                            m = run_one(overrides, Path(tmp) / f"{model}-{recipe}-{backend}-{batch}")
                        except Exception as error:   # a recipe that fails is a figure too
                            print(f"{model:<12}{recipe:<17}{backend:<9}{batch:>6}  FAILED: "
                                  f"{str(error).splitlines()[0][:110]}")
                            continue
                        delta = m.get("benchmark.top1_accuracy_delta")
                        print(f"{model:<12}{recipe:<17}{backend:<9}{batch:>6}{m['benchmark.baseline.p50_ms']:>9.3f}"
                              f"{m['benchmark.candidate.p50_ms']:>9.3f}{m['benchmark.speedup_p50']:>8.2f}x"
                              f"{'' if delta is None else f'{delta:+.4f}':>11}{m['quantize.size_mb_before']:>10.3f}"
                              f"{m['quantize.size_mb']:>9.3f}{m.get('quantize.quantize_s', 0):>8.1f}"
                              + ("  UNSTABLE" if m.get("benchmark.unstable") else ""), flush=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
