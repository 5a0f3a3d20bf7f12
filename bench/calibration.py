"""Does a larger calibration set reduce quantization error? int8_static (PT2E) on the
bundled models, calibrated on 1 ... 1024 train examples, judged on the 450 held-out ones:
top-1 delta, mean abs error and cosine similarity of the logits vs the fp32 model.

    python bench/calibration.py [--models cnn,mlp] [--sizes 1,4,16,64,256,1024] [--observer histogram]
"""
from __future__ import annotations

import argparse
import logging
import math
import tempfile
import warnings
from pathlib import Path

from quantize import MODELS, run_one   # bench/quantize.py: one in-process pipeline run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="cnn,mlp,transformer")
    parser.add_argument("--sizes", default="1,4,16,64,256,1024")
    parser.add_argument("--observer", default="histogram")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    print(f"{'model':<12}{'examples':>9}{'top1 delta':>12}{'mean abs err':>14}{'p99 abs err':>13}{'cosine':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            for size in map(int, args.sizes.split(",")):
                batch = min(size, 128)
                overrides = [*MODELS[model], "quantize=int8_static", f"quantize.observer={args.observer}",
                             f"quantize.calibration.batches={math.ceil(size / batch)}",
                             f"quantize.calibration.batch_size={batch}", "compile=eager", "tracking=none",
                             "pipeline=[load,validate,quantize,benchmark]", "benchmark=quick"]
                m = run_one(overrides, Path(tmp) / f"{model}-{size}")
                leaf = "benchmark.fidelity.output"
                print(f"{model:<12}{int(m['quantize.calibration_examples']):>9}"
                      f"{m['benchmark.top1_accuracy_delta']:>+12.4f}{m[leaf + '.mean_abs_error']:>14.4f}"
                      f"{m[leaf + '.p99_abs_error']:>13.4f}{m[leaf + '.cosine']:>10.5f}", flush=True)


if __name__ == "__main__":
    main()
