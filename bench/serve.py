"""Serving figures, side by side in one run, on the bundled MLP and CNN (fp32, exported pt2):

- overhead: ptflow-serve's p50 at concurrency 1 over gRPC on 127.0.0.1, minus the in-process
  p50 of the same file on the same batch-1 request (target <= 1 ms);
- dynamic batching: throughput at concurrency 32 over concurrency 1 (target >= 4x), and over
  batching off at 32;
- MLflow's own server: the same logged model under ``mlflow models serve`` (REST
  /invocations), at the same levels: ptflow's throughput at 16 over MLflow's (target >= 3x);
  and ptflow-serve over HTTP/JSON driven by the same aiohttp client as MLflow's server, so
  the client's own cost is the same on both sides.

  python bench/serve.py [--levels 1,2,4,8,16,32] [--duration-s 3] [--models mlp,cnn] [--out DIR]

Each request is one row (batch 1). ptflow-serve is driven by tritonclient's asyncio gRPC
client, the JSON endpoints by an aiohttp client with the same loop (ptflow.serve.loadgen_client's
run_level), each in its own process; server and client share the machine's cores.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = {"mlp": [], "cnn": ["experiment=digits_cnn"]}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def export_run(where: Path, overrides: list[str]) -> tuple[Path, str, str]:
    """A tracked run exporting pt2 (its MLflow model logged): (run dir, run id, models:/ URI)."""
    done = subprocess.run([sys.executable, "-m", "ptflow", "quantize=none", "benchmark=quick", "export.formats=[pt2]",
                           f"hydra.run.dir={where}/run", *overrides], cwd=where, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stdout[-2000:] + done.stderr[-2000:])
    lines = done.stdout.splitlines()
    run_id = next(line.split()[2] for line in lines if line.strip().startswith("MLflow run"))
    model = next(line.split()[2] for line in lines if line.strip().startswith("MLflow model"))
    return where / "run", run_id, model


def in_process_p50_ms(run_dir: Path, calls: int = 1000) -> float:
    from ptflow.serve.loaded import load
    from ptflow.serve.loadtest import request_inputs
    from ptflow.serve.source import resolve

    export = resolve(str(run_dir), None)
    served = load(export, "pt2", threads=1)
    arrays = list(request_inputs(export).values())
    for _ in range(50):
        served.run(arrays)
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        served.run(arrays)
        times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times)


def ptflow_levels(run_dir: Path, levels: str, duration: float, folder: Path) -> dict:
    from ptflow.serve.cli import parser
    from ptflow.serve.loadtest import measure
    from ptflow.serve.source import resolve

    args = parser().parse_args([str(run_dir), "--format", "pt2", "--threads", "1", "--levels", levels,
                                "--duration-s", str(duration)])
    return measure(str(run_dir), args, resolve(str(run_dir), None), folder)[1]


def rest_levels(where: Path, url: str, body: dict, levels: str, duration: float) -> list:
    """The aiohttp client (its own process) at `levels` against a JSON endpoint."""
    from ptflow.serve.loadgen import LevelResult

    job = where / f"rest-job-{time.monotonic_ns()}.json"
    job.write_text(json.dumps({"url": url, "body": body, "levels": levels, "duration_s": duration}))
    done = subprocess.run([sys.executable, __file__, "--rest-client", str(job)], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr[-2000:])
    return [LevelResult.from_json(json.loads(line)) for line in done.stdout.splitlines() if line.startswith("{")]


def ptflow_rest_levels(run_dir: Path, inputs: dict, levels: str, duration: float, where: Path) -> list:
    """ptflow-serve over HTTP/JSON, driven by the same aiohttp client as MLflow's server."""
    from ptflow.serve.loadtest import _Server

    server = _Server(str(run_dir), ["--format", "pt2", "--threads", "1"], where / "server-rest.log")
    try:
        server.wait_ready()
        body = {"inputs": [{"name": k, "datatype": "FP32", "shape": list(v.shape), "data": v.ravel().tolist()}
                           for k, v in inputs.items()]}
        return rest_levels(where, f"http://127.0.0.1:{server.http}/v2/models/model/infer", body, levels, duration)
    finally:
        server.stop()


def mlflow_levels(where: Path, model: str, body: list, levels: str, duration: float) -> list:
    port = _port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{where}/outputs/mlflow.db", "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    log = (where / "mlflow-serve.log").open("w")
    server = subprocess.Popen(["mlflow", "models", "serve", "-m", model, "--env-manager", "local", "-h", "127.0.0.1",
                               "-p", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        end = time.monotonic() + 240
        while time.monotonic() < end:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        else:
            raise SystemExit(f"mlflow models serve not up after 240 s: {where / 'mlflow-serve.log'}")
        return rest_levels(where, f"http://127.0.0.1:{port}/invocations", {"inputs": body}, levels, duration)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)


def rest_client(job_path: str) -> None:
    """Run in its own process: the levels against a JSON endpoint (MLflow's /invocations,
    ptflow-serve's /v2/models/NAME/infer), with aiohttp."""
    import aiohttp

    from ptflow.serve.loadgen_client import run_level, summarize

    job = json.loads(Path(job_path).read_text())
    payload = json.dumps(job["body"]).encode()

    async def go() -> None:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200)) as session:
            async def call() -> None:
                async with session.post(job["url"], data=payload,
                                        headers={"Content-Type": "application/json"}) as answer:
                    await answer.read()
                    if answer.status != 200:
                        raise RuntimeError(f"HTTP {answer.status}")
            for level in [int(x) for x in job["levels"].split(",")]:
                latencies, codes, example, window = await run_level(call, level, 1.0, job["duration_s"])
                print(json.dumps(summarize(level, "http", latencies, codes, example, window)), flush=True)
    asyncio.run(go())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--levels", default="1,2,4,8,16,32")
    p.add_argument("--duration-s", type=float, default=3.0)
    p.add_argument("--models", default="mlp,cnn")
    p.add_argument("--out", type=Path, default=None, help="where the PNGs go (default: a temp dir, printed)")
    p.add_argument("--rest-client", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.rest_client:
        rest_client(args.rest_client)
        return 0
    from ptflow.serve.load_plot import plot_loadtest
    from ptflow.serve.loadgen import format_table
    from ptflow.serve.loadtest import request_inputs
    from ptflow.serve.source import resolve

    started = time.monotonic()
    out = args.out or Path(tempfile.mkdtemp(prefix="ptflow-bench-serve-"))
    out.mkdir(parents=True, exist_ok=True)
    summary = []
    for name in args.models.split(","):
        where = Path(tempfile.mkdtemp(prefix=f"ptflow-bench-serve-{name}-"))
        run_dir, run_id, model = export_run(where, MODELS[name])
        inputs = request_inputs(resolve(str(run_dir), None))
        body = next(iter(inputs.values())).tolist()
        local = in_process_p50_ms(run_dir)
        results = ptflow_levels(run_dir, args.levels, args.duration_s, where)
        results["ptflow HTTP (aiohttp)"] = ptflow_rest_levels(run_dir, inputs, args.levels, args.duration_s, where)
        results["mlflow models serve"] = mlflow_levels(where, model, body, args.levels, args.duration_s)
        by = {label: {r.concurrency: r for r in rows} for label, rows in results.items()}
        on, off, ml = by["batching on"], by["batching off"], by["mlflow models serve"]
        rest = by["ptflow HTTP (aiohttp)"]
        top = max(on)
        mid = 16 if 16 in on else top
        print(f"\n== {name} (pt2, fp32, batch-1 requests; run {run_id}) ==")
        print(format_table(results))
        lines = [f"{name}: in-process p50 {local:.3f} ms; served p50 at c1 {on[1].p50_ms:.3f} ms: overhead "
                 f"{on[1].p50_ms - local:.3f} ms (target <= 1)",
                 f"{name}: batching: c{top}/c1 {on[top].throughput_per_s / on[1].throughput_per_s:.2f}x (target >= 4); "
                 f"on/off at c{top} {on[top].throughput_per_s / off[top].throughput_per_s:.2f}x",
                 f"{name}: vs mlflow models serve at c{mid}: {on[mid].throughput_per_s:.0f} / "
                 f"{ml[mid].throughput_per_s:.0f} req/s = {on[mid].throughput_per_s / ml[mid].throughput_per_s:.2f}x "
                 "(target >= 3)",
                 f"{name}: the same aiohttp client on both (HTTP/JSON) at c{mid}: {rest[mid].throughput_per_s:.0f} / "
                 f"{ml[mid].throughput_per_s:.0f} req/s = {rest[mid].throughput_per_s / ml[mid].throughput_per_s:.2f}x"]
        print("\n".join(lines))
        summary += lines
        png = plot_loadtest(results, out / f"serve-{name}.png", f"ptflow-serve vs mlflow models serve: {name} pt2")
        print(f"plot: {png}")
    print("\n" + "\n".join(summary))
    print(f"took {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
