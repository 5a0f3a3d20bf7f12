"""ptflow-serve's life: it serves only the manifest's bytes, only after the example check,
binds 127.0.0.1 unless told, finds a run by id in the store, and on SIGTERM turns not ready,
finishes what it accepted and exits 0."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from tests.serve.serving import Server, clients, free_port, tracked_run

pytestmark = pytest.mark.slow

ONE = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "random": 1}]}


def _serve_until_exit(source, *args, tmp_path, timeout=120):
    cmd = [sys.executable, "-m", "ptflow.serve.cli", str(source), "--http-port", str(free_port()),
           "--grpc-port", str(free_port()), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=tmp_path)


def test_a_tampered_export_is_refused_naming_the_file(mlp_export, tmp_path):
    copy = shutil.copytree(mlp_export, tmp_path / "export")
    data = bytearray((copy / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "model.onnx").write_bytes(bytes(data))
    done = _serve_until_exit(copy, "--format", "onnx", tmp_path=tmp_path)
    assert done.returncode == 3, done.stderr
    assert "model.onnx has sha256" in done.stderr and "manifest records" in done.stderr
    assert "ptflow-serve: ready:" not in done.stderr


def test_an_export_that_misses_its_example_never_becomes_ready(mlp_export, tmp_path):
    copy = shutil.copytree(mlp_export, tmp_path / "export")
    manifest = json.loads((copy / "manifest.json").read_text())
    for entry in manifest["files"]:
        entry["tolerance"] = 0.0   # onnx differs from the example by ~1e-6
    (copy / "manifest.json").write_text(json.dumps(manifest))
    done = _serve_until_exit(copy, "--format", "onnx", tmp_path=tmp_path)
    assert done.returncode == 3, done.stderr
    assert "differ from the example's by" in done.stderr and "tolerance is 0" in done.stderr
    assert "ptflow-serve: ready:" not in done.stderr


def test_aoti_needs_the_users_opt_in_and_safetensors_is_not_servable(mlp_export, tmp_path):
    done = _serve_until_exit(mlp_export, "--format", "aoti", tmp_path=tmp_path)
    assert done.returncode == 3 and "--trust-native-code" in done.stderr
    done = _serve_until_exit(tmp_path, tmp_path=tmp_path)
    assert done.returncode == 2 and "holds no manifest.json" in done.stderr


def test_sigterm_during_load_finishes_what_was_accepted_and_exits_zero(mlp_export, tmp_path):
    server = Server(mlp_export, "--format", "pt2", "--grace-s", "10", log=tmp_path / "serve.log")
    server.wait_ready()
    assert _listening_on(server.http) == {"127.0.0.1"}
    burst = {**ONE, "duration_s": 4.0, "concurrency": 8, "client_timeout_s": 20}
    job = {"grpc": server.grpc_url, "http": server.http_url, "model": "model", "burst": burst}
    answer = {}
    thread = threading.Thread(target=lambda: answer.update(clients(job, tmp_path)))
    thread.start()
    time.sleep(1.5)
    signalled = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    code = server.wait_exit(30)
    thread.join(60)
    assert code == 0, server.text()[-2000:]
    results = answer["burst"]
    assert results and all(r["ok"] or r["status"] != "ClientTimeout" for r in results)
    assert all(r["latency_ms"] < 15000 for r in results)   # none hung until the client's timeout
    before = [r for r in results if r["t"] < signalled]
    assert before and all(r["ok"] for r in before)
    assert "readiness is false" in server.text() and "stopped" in server.text()


def test_a_second_signal_exits_at_once(mlp_export, tmp_path):
    server = Server(mlp_export, "--format", "pt2", "--grace-s", "60", log=tmp_path / "serve.log")
    server.wait_ready()
    burst = {**ONE, "duration_s": 3.0, "concurrency": 4, "client_timeout_s": 20}
    job = {"grpc": server.grpc_url, "http": server.http_url, "model": "model", "burst": burst}
    thread = threading.Thread(target=lambda: clients(job, tmp_path))
    thread.start()
    time.sleep(1.0)
    server.proc.send_signal(signal.SIGTERM)   # then at once (the drain under load would end in ms)
    server.proc.send_signal(signal.SIGINT)
    assert server.wait_exit(10) == 128 + signal.SIGINT
    thread.join(60)


def _listening_on(port):
    """The addresses a local TCP port listens on (from /proc/net/tcp)."""
    found = set()
    for line in open("/proc/net/tcp").read().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hexport = local.split(":")
        if state == "0A" and int(hexport, 16) == port:
            found.add(".".join(str(int(address[i:i + 2], 16)) for i in (6, 4, 2, 0)))
    return found


def test_serves_a_run_by_id_from_the_store(tmp_path):
    done, run_id = tracked_run(tmp_path)
    shutil.rmtree(tmp_path / "run")   # only the store has the export now: it is downloaded
    server = Server(run_id, "--outputs-dir", str(tmp_path / "outputs"), log=tmp_path / "serve.log")
    try:
        server.wait_ready()
        out = clients({"grpc": server.grpc_url, "http": server.http_url, "model": "model",
                       "cases": [{**ONE, "protocol": "grpc"}]}, tmp_path)
        assert out["cases"][0]["ok"]
        assert f"run {run_id} (downloaded from" in server.text()
    finally:
        server.stop()
    import mlflow

    from ptflow.runs.mlflow_models import global_tracking_uri

    store = f"sqlite:///{tmp_path}/outputs/mlflow.db"
    model_uri = next(line.split()[2] for line in done.stdout.splitlines() if line.strip().startswith("MLflow model"))
    with global_tracking_uri(store):   # mlflow.set_tracking_uri alone exports MLFLOW_TRACKING_URI to later tests
        version = mlflow.register_model(model_uri, "digits-clf", await_registration_for=0)
    server = Server(f"models:/digits-clf/{version.version}", "--tracking-uri", store, log=tmp_path / "serve2.log")
    try:
        server.wait_ready()
        assert f"models:/digits-clf/{version.version} (run {run_id}, pt2)" in server.text()
        assert "(pt2 on cpu" in server.text()   # the registered format, not the fastest
    finally:
        server.stop()


@pytest.mark.cuda
def test_serves_on_cuda(mlp_export, tmp_path):
    server = Server(mlp_export, "--format", "pt2", "--device", "cuda", log=tmp_path / "serve.log")
    try:
        server.wait_ready()
        assert "(pt2 on cuda" in server.text()
        out = clients({"grpc": server.grpc_url, "http": server.http_url, "model": "model",
                       "cases": [{**ONE, "protocol": "grpc"}]}, tmp_path)
        assert out["cases"][0]["ok"]
    finally:
        server.stop()


def test_a_port_in_use_is_refused_naming_the_option(mlp_export, tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cmd = [sys.executable, "-m", "ptflow.serve.cli", str(mlp_export), "--http-port", str(port),
               "--grpc-port", str(free_port())]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr and "--http-port" in done.stderr
    assert "Traceback" not in done.stderr
