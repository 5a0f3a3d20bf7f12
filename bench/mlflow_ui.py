"""The README's sweep, as it reads in the MLflow UI: an 8-job sweep (four quantize recipes x two
compile backends) logged to a real `mlflow server` on 127.0.0.1, then headless Chromium takes
screenshots of the experiment's runs and of the sweep's parent run (its description holds the
pick and the ranked table).

  python bench/mlflow_ui.py [--out docs/img] [--benchmark default|quick] [--budget 0.001]

Prints the sweep's last lines (its table, the pick, the parent run's page) and the time it
took; writes mlflow-experiment.png and mlflow-parent-run.png into --out. Needs Debian's
`chromium`. tests/runs/test_mlflow_ui.py checks the same pages on a 3-job sweep."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ptflow.runs import ui_links  # noqa: E402
from tests import browser  # noqa: E402
from tests.mlflow_server import Server  # noqa: E402

SWEEP = ("quantize=none,int8_dynamic,bf16,int8_static", "compile=eager,inductor")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    parser.add_argument("--benchmark", default="default", help="the benchmark config of every job")
    parser.add_argument("--budget", default="0.001", help="compare.max_accuracy_drop: what the pick is made under")
    args = parser.parse_args()
    binary = browser.chromium()
    if binary is None:
        print("no chromium on PATH (Debian: apt-get install chromium)", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ptflow-ui-") as tmp:
        server = Server(Path(tmp) / "server")
        server.start()
        try:
            started = time.monotonic()
            env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
            done = subprocess.run([sys.executable, "-m", "ptflow", "-m", *SWEEP, f"benchmark={args.benchmark}",
                                   f"compare.max_accuracy_drop={args.budget}", f"tracking.uri={server.uri}"],
                                  cwd=tmp, env=env, capture_output=True, text=True, timeout=3600)
            took = time.monotonic() - started
            lines = done.stdout.splitlines()
            tail = lines[next((i for i, line in enumerate(lines) if line.startswith("sweep: ")), 0):]
            print("\n".join(tail))
            print(f"sweep of 8 jobs: {took:.0f} s, exit {done.returncode}")
            if done.returncode != 0:
                print(done.stderr[-3000:], file=sys.stderr)
                return 1
            page = next(line.split("page: ", 1)[1].split(" ")[0] for line in tail if "parent run's page" in line)
            eid = page.split("#/experiments/", 1)[1].split("/", 1)[0]
            pages = {"experiment": f"{server.uri}/{ui_links.runs_path(eid)}", "parent-run": page}
            for name, url in pages.items():
                png = args.out / f"mlflow-{name}.png"
                shot = browser.screenshot(binary, Path(tmp) / "profile", url, png, width=1600, height=1200)
                colours = browser.distinct_colours(png) if png.is_file() else 0
                print(f"{png}: exit {shot.returncode}, {colours} colours")
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
