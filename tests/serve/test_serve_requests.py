"""ptflow-serve answers real clients (tritonclient gRPC and HTTP) with the export's outputs,
refuses bad requests with a status and a message naming the input, and keeps serving."""
from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import load_file

from tests.serve.serving import Server, clients

pytestmark = pytest.mark.slow


def _example(export):
    return load_file(str(export / "model.example.safetensors"))


def _input(name, array, datatype="FP32", **extra):
    return {"name": name, "datatype": datatype, "shape": list(array.shape), "data": array.tolist(), **extra}


@pytest.fixture(scope="module")
def mlp_server(mlp_export, tmp_path_factory):
    server = Server(mlp_export, "--max-request-mb", "0.02", log=tmp_path_factory.mktemp("log") / "serve.log")
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def _job(server, **fields):
    return {"grpc": server.grpc_url, "http": server.http_url, "model": "model", **fields}


def test_grpc_and_http_answers_equal_the_exports_example(mlp_server, mlp_export, tmp_path):
    example = _example(mlp_export)
    case = {"inputs": [_input("pixels", example["input.pixels"])]}
    out = clients(_job(mlp_server, cases=[{**case, "protocol": "grpc"}, {**case, "protocol": "http"}]), tmp_path)
    for result in out["cases"]:
        assert result["ok"], result
        got = np.array(result["outputs"]["output"], dtype=np.float32)
        assert got.shape == example["output"].shape
        assert np.abs(got - example["output"]).max() <= 1e-3
    text = mlp_server.text()
    assert "the fastest loadable export" in text and "matches the manifest" in text and "ready:" in text


def test_health_ready_metadata_and_metrics(mlp_server):
    assert mlp_server.get("/health")[0] == 200
    assert mlp_server.get("/v2/health/live")[0] == 200
    status, body = mlp_server.get("/v2/health/ready")
    assert status == 200 and '"ready":true' in body.replace(" ", "")
    status, body = mlp_server.get("/v2/models/model")
    assert status == 200
    assert '"inputs":[{"name":"pixels","datatype":"FP32","shape":[-1,64]}]' in body.replace(" ", "")
    assert '"outputs":[{"name":"output","datatype":"FP32","shape":[-1,10]}]' in body.replace(" ", "")
    status, body = mlp_server.get("/metrics")
    assert status == 200 and "ptflow_serve_queue_depth" in body and "ptflow_serve_ready 1.0" in body


BAD = [   # (protocol, case, expected status, words the message must hold)
    ("grpc", {"inputs": [{"name": "pixel", "datatype": "FP32", "shape": [1, 64], "random": 1}]},
     "INVALID_ARGUMENT", ["pixel", "pixels"]),
    ("http", {"inputs": [{"name": "pixel", "datatype": "FP32", "shape": [1, 64], "random": 1}]}, "400", ["pixel"]),
    ("grpc", {"inputs": [{"name": "pixels", "datatype": "FP64", "shape": [1, 64], "random": 1}]},
     "INVALID_ARGUMENT", ["pixels", "FP64", "FP32"]),
    ("http", {"inputs": [{"name": "pixels", "datatype": "INT32", "shape": [1, 64], "fill": 1}]},
     "400", ["pixels", "INT32"]),
    ("grpc", {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [64], "random": 1}]},
     "INVALID_ARGUMENT", ["pixels", "rank", "[-1, 64]"]),
    ("http", {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [2, 63], "random": 1}]},
     "400", ["pixels", "[2, 63]", "[-1, 64]"]),
    ("grpc", {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [33, 64], "random": 1}]},
     "INVALID_ARGUMENT", ["pixels", "33", "--max-batch-size"]),
    ("grpc", {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "fill": "nan"}]},
     "INVALID_ARGUMENT", ["pixels", "NaN"]),
    ("http", {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "fill": "inf"}]},
     "400", ["pixels", "NaN/Inf"]),
    ("grpc", {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [0, 64], "random": 1}]},
     "INVALID_ARGUMENT", ["pixels", "empty batch"]),
    ("grpc", {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "random": 1},
                         {"name": "pixels", "datatype": "FP32", "shape": [1, 64], "random": 1}]},
     "INVALID_ARGUMENT", ["pixels", "twice"]),
    ("grpc", {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "random": 1}],
              "outputs": ["logits"]}, "INVALID_ARGUMENT", ["logits", "output"]),
    ("grpc", {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [100, 64], "random": 1}]},
     "INVALID_ARGUMENT", ["bytes", "--max-request-mb"]),
    ("http", {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [100, 64], "random": 1}]},
     "400", ["bytes", "--max-request-mb"]),
    ("http", {"raw_http_body": '{"inputs": [{"name": "pixels", '}, "400", ["malformed"]),
    ("http", {"raw_http_body": '{"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [2, 64], '
                               '"data": [1, 2, 3]}]}'}, "400", ["pixels", "[2, 64]"]),
    ("http", {"raw_http_body": '{"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], '
                               '"data": "abc"}]}'}, "400", ["pixels"]),
    ("grpc", {"raw_grpc_bytes_hex": "ffffffff0a0b"}, "INVALID_ARGUMENT", []),
    ("grpc", {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "random": 1}],
              "timeout_us": -5}, "INVALID_ARGUMENT", ["timeout"]),
]


def test_bad_requests_are_refused_by_name_and_the_server_keeps_serving(mlp_server, tmp_path):
    good = {"protocol": "grpc", "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [2, 64], "random": 1}]}
    cases = [{**case, "protocol": protocol} for protocol, case, _, _ in BAD]
    out = clients(_job(mlp_server, cases=cases, after_each=good), tmp_path)
    assert len(BAD) >= 15
    for (protocol, case, status, words), result, after in zip(BAD, out["cases"], out["after"]):
        assert not result["ok"], (case, result)
        assert status in result["status"], (case, result)
        assert all(word in result["message"] for word in words), (case, result)
        assert after["ok"], (case, after)
    assert mlp_server.proc.poll() is None


def test_a_request_whose_deadline_passes_in_the_queue_is_not_computed(mlp_server, tmp_path):
    before = _metric(mlp_server, "ptflow_serve_expired_total")
    case = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "random": 1}], "timeout_us": 1}
    out = clients(_job(mlp_server, cases=[{**case, "protocol": "grpc"}, {**case, "protocol": "http"}]), tmp_path)
    grpc, http = out["cases"]
    assert "DEADLINE_EXCEEDED" in grpc["status"] and "not computed" in grpc["message"]
    assert http["status"] == "504" and "not computed" in http["message"]
    assert _metric(mlp_server, "ptflow_serve_expired_total") == before + 2


def _metric(server, name):
    body = server.get("/metrics")[1]
    return float(next(line.split()[-1] for line in body.splitlines() if line.startswith(name + " ")))


def test_a_full_queue_answers_resource_exhausted_at_once(mlp_export, tmp_path):
    server = Server(mlp_export, "--format", "pt2", "--max-queue", "1", "--max-batch-size", "1",
                    log=tmp_path / "serve.log")
    try:
        server.wait_ready()
        burst = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "random": 1}],
                 "count": 300, "concurrency": 64, "client_timeout_s": 30}
        good = {"protocol": "grpc", "inputs": burst["inputs"]}
        out = clients(_job(server, burst=burst, cases=[good]), tmp_path)
        results = out["burst"]
        assert len(results) == 300   # every request was answered: none hangs
        refused = [r for r in results if not r["ok"]]
        assert refused and all("RESOURCE_EXHAUSTED" in r["status"] and "queue is full" in r["message"]
                               for r in refused)
        assert any(r["ok"] for r in results) and out["cases"][0]["ok"]
        assert _metric(server, "ptflow_serve_refused_queue_full_total") == len(refused)
    finally:
        server.stop()


def test_named_inputs_and_a_dynamic_sequence_dim(transformer_export, tmp_path):
    example = _example(transformer_export)
    server = Server(transformer_export, log=tmp_path / "serve.log")
    try:
        server.wait_ready()
        body = server.get("/v2/models/model")[1].replace(" ", "")
        assert '{"name":"rows","datatype":"FP32","shape":[-1,-1,8]}' in body
        assert '{"name":"mask","datatype":"FP32","shape":[-1,-1]}' in body
        rows, mask = example["input.rows"], example["input.mask"]
        full = {"inputs": [_input("rows", rows), _input("mask", mask)]}
        short = {"inputs": [_input("rows", rows[:, :5]), _input("mask", mask[:, :5])]}
        mixed = {"inputs": [_input("rows", rows[:, :5]), _input("mask", mask[:, :6])]}
        missing = {"inputs": [_input("rows", rows)]}
        out = clients(_job(server, cases=[{**full, "protocol": "grpc"}, {**short, "protocol": "http"},
                                          {**mixed, "protocol": "grpc"}, {**missing, "protocol": "http"}]), tmp_path)
        got, shorter, disagree, absent = out["cases"]
        assert got["ok"] and np.abs(np.array(got["outputs"]["output"]) - example["output"]).max() <= 1e-4
        assert shorter["ok"] and np.array(shorter["outputs"]["output"]).shape == example["output"].shape
        assert "INVALID_ARGUMENT" in disagree["status"] and "'tokens'" in disagree["message"]
        assert absent["status"] == "400" and "mask" in absent["message"]
    finally:
        server.stop()
