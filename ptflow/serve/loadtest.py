"""``ptflow-serve SOURCE --loadtest``: start the server (batching on, then off), drive it with
tritonclient's gRPC client over the concurrency levels, print the table, draw the PNG and
record both next to the served run in MLflow.

Each request is one row of the manifest's example (batch 1), so requests/s are
inferences/s. The server runs in its own process with the options given here, the client
in another (``loadgen_client``); on 2 cores all three share the machine, as a sidecar
client would. The second server is told the format the first one chose, so both serve the
same file.
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import datetime
from pathlib import Path

import numpy as np

from ptflow.serve.source import Export
from ptflow.serve.verify import Refused, read_example

PASSED = ("name", "threads", "instances", "max_batch_size", "max_queue_delay_ms", "max_queue", "timeout_ms",
          "device", "tracking_uri", "outputs_dir")
FLAGS = ("trust_native_code", "allow_nonfinite")


def request_inputs(export: Export) -> dict[str, np.ndarray]:
    """One batch-1 request: the first row of each of the example's inputs."""
    from safetensors.numpy import load as load_arrays

    arrays = load_arrays(read_example(export))
    inputs = {}
    for item in (export.manifest.get("example") or {}).get("inputs") or []:
        value = arrays.get("input." + item["name"])
        if value is None:
            raise Refused(f"the example file holds no input {item['name']!r}")
        inputs[item["name"]] = value[:1] if item["shape"] and item["shape"][0] == -1 else value
    return inputs


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_args(args: argparse.Namespace, fmt: str | None) -> list[str]:
    out = []
    for name in PASSED:
        value = getattr(args, name)
        if value is not None:
            out += [f"--{name.replace('_', '-')}", str(value)]
    out += [f"--{name.replace('_', '-')}" for name in FLAGS if getattr(args, name)]
    return out + (["--format", fmt] if fmt else [])


class _Server:
    def __init__(self, source: str, extra: list[str], log: Path) -> None:
        self.http, self.grpc = _port(), _port()
        self.log = log
        cmd = [sys.executable, "-m", "ptflow.serve.cli", source, "--http-port", str(self.http),
               "--grpc-port", str(self.grpc), *extra]
        self.proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 300.0) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise Refused(f"the server exited {self.proc.returncode} before it was ready:\n"
                              + self.log.read_text(errors="replace")[-2000:])
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/v2/health/ready", timeout=2) as answer:
                    if answer.status == 200:
                        found = re.search(r"ready: model '[^']*' \((\w+) on", self.log.read_text(errors="replace"))
                        return found.group(1) if found else ""
            except OSError:
                pass
            time.sleep(0.2)
        raise Refused(f"the server was not ready after {timeout:.0f} s (log: {self.log})")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def measure(source: str, args: argparse.Namespace, export: Export, folder: Path,
            labels: tuple[tuple[str, list[str]], ...] = (("batching on", []), ("batching off", ["--no-batching"])),
            ) -> tuple[str, dict]:
    """Serve `source` once per label and load-test it; (format served, results by label)."""
    from ptflow.serve.loadgen import run_loadtest

    levels = [int(x) for x in str(args.levels).split(",") if x.strip()]
    inputs = request_inputs(export)
    fmt, results = args.format, {}
    for label, extra in labels:
        server = _Server(source, _server_args(args, fmt) + extra, folder / f"server-{label.replace(' ', '-')}.log")
        try:
            fmt = server.wait_ready() or fmt
            print(f"{label}: serving {fmt}; {len(levels)} levels x {args.duration_s:g} s", file=sys.stderr)
            results[label] = run_loadtest(f"127.0.0.1:{server.grpc}", args.name, inputs, levels,
                                          duration_s=args.duration_s, warmup_s=min(1.0, args.duration_s))
        finally:
            server.stop()
    return fmt or "", results


def run_loadtest_command(args: argparse.Namespace, export: Export) -> int:
    from ptflow.serve.load_plot import plot_loadtest
    from ptflow.serve.loadgen import LoadTestError, format_table

    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    folder = Path(args.outputs_dir) / "loadtests" / f"{(export.run_id or 'export')[:8]}-{stamp}"
    folder.mkdir(parents=True, exist_ok=True)
    try:
        fmt, results = measure(args.source, args, export, folder)
    except LoadTestError as error:
        print(f"ptflow-serve: the load test failed: {error}", file=sys.stderr)
        return 3
    table = format_table(results)
    (folder / "loadtest.txt").write_text(table + "\n")
    png = plot_loadtest(results, folder / "loadtest.png", f"ptflow-serve {fmt} ({args.source})")
    print(table)
    print(f"figures: {folder / 'loadtest.txt'}, plot: {png}")
    run_id = export.run_id or _run_of_dir(args, export)
    if run_id is None:
        print("not recorded in MLflow: no run found for this export (serve a RUN_ID, or a run dir from a tracked "
              "run, to record the load test next to its run)", file=sys.stderr)
        return 0
    from ptflow.serve.load_record import log_loadtest

    params = {"format": fmt, "levels": args.levels, "duration_s": args.duration_s, "protocol": "grpc",
              "max_batch_size": args.max_batch_size, "max_queue_delay_ms": args.max_queue_delay_ms,
              "threads": args.threads or "run's", "request_rows": 1, "client": "tritonclient.grpc.aio"}
    uri = export.tracking_uri or _store(args)
    loadtest_id = log_loadtest(uri, run_id, results, png, params)
    print(f"recorded: MLflow run {loadtest_id} (tag ptflow.served_run_id={run_id}); the served run is tagged "
          f"ptflow.loadtest_run_id")
    return 0


def _store(args: argparse.Namespace) -> str | None:
    if args.tracking_uri:
        return args.tracking_uri
    db = (Path(args.outputs_dir) / "mlflow.db").resolve()
    return f"sqlite:///{db}" if db.is_file() else None


def _run_of_dir(args: argparse.Namespace, export: Export) -> str | None:
    """The tracked run whose run dir holds this export (tag ptflow.run_dir), if any."""
    uri = _store(args)
    if uri is None or export.folder.name != "export":
        return None
    from mlflow.tracking import MlflowClient

    run_dir = str(export.folder.parent.resolve())
    try:
        found = MlflowClient(uri).search_runs(
            [e.experiment_id for e in MlflowClient(uri).search_experiments()],
            filter_string=f"tags.`ptflow.run_dir` = '{run_dir}'", max_results=1)
    except Exception:  # noqa: BLE001 - no store, no record: said by the caller
        return None
    return found[0].info.run_id if found else None
