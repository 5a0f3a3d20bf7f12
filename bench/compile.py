"""Every CPU compile backend and runtime on the three bundled models (fp32, batch 150):
build time, the cold first call, steady-state p50 and the paired speedup over fp32 eager.
Inductor's cache starts empty (a temporary dir), so compile times are cold.

    python bench/compile.py [--models mlp,cnn,transformer] [--backends eager,inductor,...]
"""
from __future__ import annotations

import argparse
import logging
import os
import tempfile
import warnings
from pathlib import Path

from quantize import MODELS   # bench/quantize.py: model -> overrides

BACKENDS = "eager,inductor,inductor_max_autotune,aoti,onnxruntime,torchscript_trace,torchscript_script"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="mlp,cnn,transformer")
    parser.add_argument("--backends", default=BACKENDS)
    parser.add_argument("--iters", type=int, default=100)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(tmp) / "inductor")   # cold, and ptflow keeps it
        from quantize import run_one

        print(f"{'model':<12}{'compile':<22}{'build s':>9}{'1st call s':>11}{'fp32 ms':>9}{'p50 ms':>9}"
              f"{'p99 ms':>9}{'speedup':>9}{'max abs err':>13}")
        for model in args.models.split(","):
            for backend in args.backends.split(","):
                overrides = [*MODELS[model], "quantize=none", f"compile={backend}", "tracking=none",
                             "pipeline=[load,validate,quantize,compile,benchmark]", f"benchmark.iters={args.iters}"]
                try:
                    m = run_one(overrides, Path(tmp) / f"{model}-{backend}")
                except Exception as error:   # a backend that cannot take this model is a figure too
                    print(f"{model:<12}{backend:<22}  FAILED: {' '.join(str(error).split())[:100]}")
                    continue
                print(f"{model:<12}{backend:<22}{m.get('compile.build_s', 0):>9.2f}{m.get('compile.first_call_s', 0):>11.2f}"
                      f"{m['benchmark.baseline.p50_ms']:>9.3f}{m['benchmark.candidate.p50_ms']:>9.3f}"
                      f"{m['benchmark.candidate.p99_ms']:>9.3f}{m['benchmark.speedup_p50']:>8.2f}x"
                      f"{m['benchmark.max_abs_error']:>13.2e}" + ("  UNSTABLE" if m.get("benchmark.unstable") else ""),
                      flush=True)


if __name__ == "__main__":
    main()
