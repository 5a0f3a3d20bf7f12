"""The load generator against a real server: a stub KServe model server (the input doubled;
RESOURCE_EXHAUSTED / HTTP 503 for every other request whose input is negative) driven by the
tritonclient-based client process, then the table, the picture and the MLflow record.

No test asserts speed (the machine is small and busy): figures must exist and agree.
"""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from ptflow.serve.loadgen import LevelResult, LoadTestError, format_table, parse_lines, run_loadtest
from ptflow.serve.load_plot import plot_loadtest
from ptflow.serve.load_record import label_slug, log_loadtest

ROOT = Path(__file__).resolve().parents[2]

STUB_SERVER = '''
"""Test fixture only: a KServe model server whose model doubles its input."""
from fastapi.responses import JSONResponse
from grpc_interceptor.exceptions import ResourceExhausted
from kserve import InferOutput, InferResponse, Model, ModelServer
from kserve.model_server import app


class Overloaded(ResourceExhausted):
    """gRPC RESOURCE_EXHAUSTED through KServe's interceptor; HTTP 503 through the handler below."""


async def overloaded(request, exc):
    return JSONResponse(status_code=503, content={"error": exc.details})


app.add_exception_handler(Overloaded, overloaded)


class Doubler(Model):
    def __init__(self, name):
        super().__init__(name)
        self.calls = 0
        self.ready = True

    async def predict(self, payload, headers=None, response_headers=None):
        x = payload.inputs[0].as_numpy()
        self.calls += 1
        if (x < 0).any() and self.calls % 2:
            raise Overloaded("stub queue is full")
        out = InferOutput(name="y", shape=list(x.shape), datatype=payload.inputs[0].datatype)
        out.set_data_from_numpy(x * 2)
        return InferResponse(response_id=payload.id or "", model_name=self.name, infer_outputs=[out])


ModelServer().start([Doubler("stub")])
'''

OK_INPUTS = {"x": np.ones((1, 4), dtype=np.float32)}
HALF_FAILING_INPUTS = {"x": -np.ones((1, 4), dtype=np.float32)}
ERROR_CODE = {"grpc": "StatusCode.RESOURCE_EXHAUSTED", "http": "503"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:   # KServe's SIGTERM waits out a grace period
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def stub_server(tmp_path_factory):
    """The stub's addresses: {"grpc": "127.0.0.1:G", "http": "127.0.0.1:H"}."""
    tmp = tmp_path_factory.mktemp("stub-server")
    script = tmp / "stub_server.py"
    script.write_text(STUB_SERVER)
    http_port = grpc_port = free_port()
    while grpc_port == http_port:
        grpc_port = free_port()
    log = (tmp / "server.log").open("wb")
    proc = subprocess.Popen([sys.executable, str(script), "--http_port", str(http_port), "--grpc_port",
                             str(grpc_port), "--enable_latency_logging", "false"],
                            stdout=log, stderr=subprocess.STDOUT, cwd=tmp)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the stub server exited {proc.returncode}: {(tmp / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/health/ready", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the stub server was not ready in 60 s: {(tmp / 'server.log').read_text()[-2000:]}")
            time.sleep(0.2)
        yield {"grpc": f"127.0.0.1:{grpc_port}", "http": f"127.0.0.1:{http_port}"}
    finally:
        stop(proc)
        log.close()


def assert_consistent(result: LevelResult) -> None:
    assert result.duration_s > 0
    assert result.throughput_per_s == pytest.approx(result.requests / result.duration_s, rel=1e-3)
    assert result.errors == sum(result.error_codes.values())
    if result.requests:
        assert 0 < result.p50_ms <= result.p95_ms <= result.p99_ms
        assert result.mean_ms > 0
    else:
        assert result.p50_ms is result.p95_ms is result.p99_ms is result.mean_ms is None


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_each_level_has_consistent_figures(stub_server, protocol):
    results = run_loadtest(stub_server[protocol], "stub", OK_INPUTS, [1, 4], protocol=protocol,
                           duration_s=1.0, warmup_s=0.3)
    assert [r.concurrency for r in results] == [1, 4]
    for r in results:
        assert r.protocol == protocol
        assert r.requests > 0 and r.errors == 0 and r.error_codes == {} and r.error_example is None
        assert_consistent(r)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_overload_answers_are_counted_by_code(stub_server, protocol):
    (result,) = run_loadtest(stub_server[protocol], "stub", HALF_FAILING_INPUTS, [2], protocol=protocol,
                             duration_s=1.0, warmup_s=0.2)
    assert result.requests > 0 and result.errors > 0   # every other request fails
    assert result.error_codes == {ERROR_CODE[protocol]: result.errors}
    assert "stub queue is full" in result.error_example and len(result.error_example) <= 300
    assert_consistent(result)


def test_an_unknown_model_is_all_errors_and_no_latency(stub_server):
    (result,) = run_loadtest(stub_server["grpc"], "no-such-model", OK_INPUTS, [1], duration_s=0.5, warmup_s=0)
    assert result.requests == 0 and result.errors > 0
    assert list(result.error_codes) == ["StatusCode.NOT_FOUND"]
    assert_consistent(result)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_server_that_is_not_there_fails_clearly(protocol):
    url = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(LoadTestError) as err:
        run_loadtest(url, "stub", OK_INPUTS, [1], protocol=protocol, duration_s=0.5, ready_timeout_s=1.0)
    message = str(err.value)
    assert "status 2" in message and url in message and "not ready within 1 s" in message
    assert time.monotonic() - started < 45   # the ready wait ends; it does not hang


def test_an_unreadable_inputs_file_exits_2_naming_it(tmp_path):
    bad = tmp_path / "inputs.safetensors"
    bad.write_text("not safetensors")
    proc = subprocess.run([sys.executable, "-m", "ptflow.serve.loadgen_client", "--url", "127.0.0.1:1",
                           "--model", "m", "--inputs", str(bad)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and str(bad) in proc.stderr and proc.stdout == ""


def test_the_client_and_the_server_side_modules_keep_their_imports_apart():
    code = ("import sys, ptflow.serve.loadgen, ptflow.serve.load_plot, ptflow.serve.load_record; "
            "a = sorted(m for m in ('tritonclient', 'matplotlib', 'mlflow', 'kserve') if m in sys.modules); "
            "import ptflow.serve.loadgen_client; "
            "b = sorted(m for m in ('torch', 'kserve', 'tritonclient.grpc', 'tritonclient.http') if m in sys.modules); "
            "print(a, b)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[] []"


def _results() -> dict[str, list[LevelResult]]:
    def level(c: int, tp: float, p50: float | None, errors: int = 0) -> LevelResult:
        p = p50
        return LevelResult(concurrency=c, protocol="grpc", requests=int(tp), errors=errors,
                           error_codes={"StatusCode.RESOURCE_EXHAUSTED": errors} if errors else {},
                           error_example="[StatusCode.RESOURCE_EXHAUSTED] full" if errors else None,
                           duration_s=1.0, throughput_per_s=tp, p50_ms=p, p95_ms=None if p is None else p * 1.5,
                           p99_ms=None if p is None else p * 2, mean_ms=p)

    return {"batching on": [level(1, 100.0, 2.0), level(4, 350.0, 3.5), level(16, 300.0, 9.0, errors=7)],
            "batching off": [level(1, 110.0, 1.8), level(4, 200.0, 6.0), level(16, 0.0, None, errors=40)]}


def test_parse_lines_reads_the_client_lines_only():
    line = {"concurrency": 2, "protocol": "http", "requests": 5, "errors": 1, "error_codes": {"503": 1},
            "error_example": "[503] full", "duration_s": 1.0, "throughput_per_s": 5.0, "p50_ms": 1.0,
            "p95_ms": 2.0, "p99_ms": 3.0, "mean_ms": 1.5}
    (result,) = parse_lines("noise\nPTFLOW-LOAD " + json.dumps(line) + "\n")
    assert result.to_json() == line


def test_format_table_names_every_label_and_level():
    table = format_table(_results())
    lines = table.splitlines()
    assert lines[0].split() == ["label", "concurrency", "req/s", "p50", "ms", "p95", "ms", "p99", "ms", "errors"]
    assert len(lines) == 2 + 6 and len({len(x) for x in lines[:2]}) == 1
    assert sum("batching on" in x for x in lines) == 3 and sum("batching off" in x for x in lines) == 3
    assert [x.split()[2] for x in lines[2:]] == ["1", "4", "16", "1", "4", "16"]
    assert lines[-1].split()[-4:] == ["-", "-", "-", "40"]


def test_plot_loadtest_writes_a_png(tmp_path):
    path = plot_loadtest(_results(), tmp_path / "plots" / "load.png", "stub: batching on vs off")
    assert path == tmp_path / "plots" / "load.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["load.png"]   # no temp file left


def test_log_loadtest_makes_a_sibling_run_and_tags_the_served_one(tmp_path):
    from mlflow.tracking import MlflowClient

    from ptflow.runs.mlflow_models import global_tracking_uri

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with global_tracking_uri(uri):   # put back as it was, MLFLOW_TRACKING_URI included (later tests read it)
        client = MlflowClient(uri)
        exp = client.create_experiment("served", artifact_location=(tmp_path / "art").as_uri())
        served = client.create_run(exp, run_name="pipeline")
        client.log_metric(served.info.run_id, "latency_ms", 3.0)
        client.set_terminated(served.info.run_id)
        results = _results()
        png = plot_loadtest(results, tmp_path / "load.png", "stub")
        run_id = log_loadtest(uri, served.info.run_id, results, png, {"protocol": "grpc", "levels": "1,4,16"})

        run = client.get_run(run_id)
        sid = served.info.run_id
        assert run.info.experiment_id == exp and run.info.status == "FINISHED"
        assert run.info.run_name == f"serve-loadtest-{sid[:8]}"
        assert run.data.tags["ptflow.served_run_id"] == sid and run.data.tags["ptflow.kind"] == "loadtest"
        assert "mlflow.parentRunId" not in run.data.tags
        assert run.data.params == {"protocol": "grpc", "levels": "1,4,16"}
        m = run.data.metrics
        assert label_slug("batching on") == "batching_on"
        assert m["serve/batching_on/c4/throughput_per_s"] == 350.0 and m["serve/batching_on/c16/errors"] == 7.0
        assert m["serve/batching_off/c1/p50_ms"] == 1.8 and m["serve/batching_on/c1/p99_ms"] == 4.0
        assert "serve/batching_off/c16/p99_ms" not in m and m["serve/batching_off/c16/errors"] == 40.0
        assert m["serve/throughput_per_s_max"] == 350.0 and m["serve/p50_ms_c1"] == 2.0
        names = {a.path for a in client.list_artifacts(run_id, "serve")}
        assert names == {"serve/load.png", "serve/loadtest.json"}
        doc = json.loads(Path(client.download_artifacts(run_id, "serve/loadtest.json", str(tmp_path))).read_text())
        assert [r["concurrency"] for r in doc["results"]["batching off"]] == [1, 4, 16]

        after = client.get_run(sid)
        assert after.data.tags["ptflow.loadtest_run_id"] == run_id
        assert after.data.tags["ptflow.served.throughput_per_s"] == "350.0"
        assert after.data.metrics == {"latency_ms": 3.0}


def test_log_loadtest_ends_its_run_failed_when_logging_fails(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("served", artifact_location=(tmp_path / "art").as_uri())
    sid = client.create_run(exp).info.run_id
    with pytest.raises(Exception):
        log_loadtest(uri, sid, _results(), tmp_path / "missing.png", {})
    (run,) = [r for r in client.search_runs([exp]) if r.info.run_id != sid]
    assert run.info.status == "FAILED" and "missing.png" in run.data.tags["ptflow.error"]
    assert "ptflow.loadtest_run_id" not in client.get_run(sid).data.tags
