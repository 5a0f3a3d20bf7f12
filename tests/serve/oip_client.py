"""A test client for ptflow-serve, run in its own process: Triton's tritonclient (gRPC and
HTTP), plus raw HTTP and raw gRPC bytes for malformed requests. It reads a job (JSON file:
argv[1]) and prints one JSON line: each case's outcome.

Job: {"grpc": "HOST:PORT", "http": "HOST:PORT", "model": NAME, "cases": [case...],
      "after_each": case | null, "burst": {...} | null}
case: {"protocol": "grpc"|"http", "inputs": [{"name", "datatype", "shape", "data" | "fill" | "random"}],
       "outputs": [names] | null, "timeout_us": int | null, "client_timeout_s": float | null,
       "raw_http_body": str | null, "raw_grpc_bytes_hex": str | null}
burst: {"protocol", "inputs", "count": N, "concurrency": C, "client_timeout_s": S, "duration_s": D | null}
"""
import asyncio
import json
import sys
import time
import urllib.error
import urllib.request

import numpy as np

DTYPES = {"FP32": np.float32, "FP64": np.float64, "INT32": np.int32, "INT64": np.int64, "FP16": np.float16}


def arrays(case):
    out = []
    for spec in case["inputs"]:
        dtype = DTYPES[spec.get("numpy", spec["datatype"])]
        if "data" in spec:
            value = np.array(spec["data"], dtype=dtype)
        elif "fill" in spec:
            value = np.full(spec["shape"], float(spec["fill"]), dtype=dtype)
        else:
            value = np.random.default_rng(spec.get("seed", 0)).random(spec["shape"]).astype(dtype)
        out.append((spec["name"], spec["datatype"], spec.get("send_shape", spec["shape"]), value))
    return out


def one(job, case):
    started = time.perf_counter()
    try:
        result = _call(job, case)
        result.setdefault("ok", True)
    except Exception as error:   # noqa: BLE001 - the outcome is the answer
        result = {"ok": False, "status": _status(error), "message": str(error)}
    result["latency_ms"] = (time.perf_counter() - started) * 1e3
    return result


def _status(error):
    status = getattr(error, "status", None)
    value = status() if callable(status) else status
    return str(value) if value is not None else type(error).__name__


def _call(job, case):
    if case.get("raw_http_body") is not None:
        request = urllib.request.Request(f"http://{job['http']}/v2/models/{job['model']}/infer",
                                         data=case["raw_http_body"].encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return {"ok": True, "status": str(answer.status), "message": answer.read().decode()[:500]}
        except urllib.error.HTTPError as error:
            return {"ok": False, "status": str(error.code), "message": error.read().decode()[:500]}
    if case.get("raw_grpc_bytes_hex") is not None:
        import grpc

        with grpc.insecure_channel(job["grpc"]) as channel:
            call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            try:
                call(bytes.fromhex(case["raw_grpc_bytes_hex"]), timeout=10)
                return {"ok": True, "status": "OK", "message": ""}
            except grpc.RpcError as error:
                return {"ok": False, "status": str(error.code()), "message": error.details()}
    module = _module(case["protocol"])
    client = module.InferenceServerClient(job[case["protocol"]])
    inputs = []
    for name, datatype, shape, value in arrays(case):
        item = module.InferInput(name, shape, datatype)
        item.set_data_from_numpy(value)
        inputs.append(item)
    outputs = [module.InferRequestedOutput(n) for n in case["outputs"]] if case.get("outputs") else None
    kwargs = {}
    if case.get("timeout_us") is not None:
        kwargs["timeout"] = case["timeout_us"]
    if case.get("client_timeout_s") is not None and case["protocol"] == "grpc":
        kwargs["client_timeout"] = case["client_timeout_s"]
    answer = client.infer(job["model"], inputs, outputs=outputs, **kwargs)
    names = [o["name"] for o in answer.get_response(**({"as_json": True} if case["protocol"] == "grpc" else {}))["outputs"]]
    return {"status": "OK", "outputs": {n: answer.as_numpy(n).tolist() for n in names}}


def _module(protocol):
    if protocol == "grpc":
        import tritonclient.grpc as module
    else:
        import tritonclient.http as module
    return module


async def burst(job, spec):
    """`count` requests (or as many as `duration_s` allows) at `concurrency` in flight, with
    tritonclient's asyncio gRPC client; each outcome with its latency."""
    import tritonclient.grpc.aio as aio
    import tritonclient.grpc as module

    client = aio.InferenceServerClient(job["grpc"])
    inputs = []
    for name, datatype, shape, value in arrays(spec):
        item = module.InferInput(name, shape, datatype)
        item.set_data_from_numpy(value)
        inputs.append(item)
    results, left = [], spec.get("count", 10**9)
    end = time.monotonic() + spec["duration_s"] if spec.get("duration_s") else None

    async def worker():
        nonlocal left
        while left > 0 and (end is None or time.monotonic() < end):
            left -= 1
            started = time.perf_counter()
            try:
                await client.infer(job["model"], inputs, client_timeout=spec.get("client_timeout_s", 30))
                outcome = {"ok": True, "status": "OK"}
            except Exception as error:   # noqa: BLE001
                outcome = {"ok": False, "status": _status(error), "message": str(error)[:300]}
            outcome["latency_ms"] = (time.perf_counter() - started) * 1e3
            outcome["t"] = time.monotonic()
            results.append(outcome)
    await asyncio.gather(*(worker() for _ in range(spec["concurrency"])))
    await client.close()
    return results


def main():
    job = json.loads(open(sys.argv[1]).read())
    out = {"cases": [], "after": []}
    for case in job.get("cases", []):
        out["cases"].append(one(job, case))
        if job.get("after_each"):
            out["after"].append(one(job, job["after_each"]))
    if job.get("burst"):
        out["burst"] = asyncio.run(burst(job, job["burst"]))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
