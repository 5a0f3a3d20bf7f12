"""``ptflow-serve SOURCE --package DIR`` writes a context whose Dockerfile CMD, run as written
outside a container (the image's /model is the package's model/, and the ports are free ones
here), serves the packaged file, and whose HEALTHCHECK passes against it. No container
engine exists on these machines: the image build itself is not tested."""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.serve.serving import clients, free_port

pytestmark = pytest.mark.slow


def _instruction(dockerfile: str, name: str) -> list[str]:
    line = next(line for line in dockerfile.splitlines() if line.startswith(name + " "))
    return json.loads(line.split(" ", 1)[1].strip())


def test_the_packaged_cmd_serves_and_its_healthcheck_passes(mlp_export, tmp_path):
    package = tmp_path / "package"
    done = subprocess.run([sys.executable, "-m", "ptflow.serve.cli", str(mlp_export), "--package", str(package),
                           "--name", "digits-mlp", "--max-batch-size", "16"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    dockerfile = (package / "Dockerfile").read_text()
    cmd = _instruction(dockerfile, "CMD")
    assert cmd[:2] == ["ptflow-serve", "/model"] and "--max-batch-size" in cmd
    http, grpc = free_port(), free_port()
    ports = {"8080": str(http), "8081": str(grpc)}
    argv = [str(package / "model") if a == "/model" else ports.get(a, a) for a in cmd]
    argv[0] = str(Path(sys.executable).with_name("ptflow-serve"))
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        healthcheck = dockerfile.split("HEALTHCHECK", 1)[1].split("CMD", 1)[1].split("\n")[0]
        probe = [re.sub(":8080/", f":{http}/", part) for part in json.loads(healthcheck.strip())]
        probe[0] = sys.executable
        for _ in range(300):
            if server.poll() is not None:
                raise AssertionError((tmp_path / "serve.log").read_text()[-2000:])
            if subprocess.run(probe, capture_output=True).returncode == 0:
                break
            time.sleep(0.2)
        else:
            raise AssertionError("the HEALTHCHECK never passed")
        ready = [sys.executable, "-c", f"import urllib.request; urllib.request.urlopen("
                 f"'http://127.0.0.1:{http}/v2/models/digits-mlp/ready', timeout=4)"]
        for _ in range(300):
            if subprocess.run(ready, capture_output=True).returncode == 0:
                break
            time.sleep(0.2)
        out = clients({"grpc": f"127.0.0.1:{grpc}", "http": f"127.0.0.1:{http}", "model": "digits-mlp",
                       "cases": [{"protocol": "grpc", "inputs": [{"name": "pixels", "datatype": "FP32",
                                                                  "shape": [2, 64], "random": 1}]}]}, tmp_path)
        assert out["cases"][0]["ok"], out
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(60) == 0
