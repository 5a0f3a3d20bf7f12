"""Load tests from the server side: run the load-generating client in its own process, read
its figures back, and print them as a table.

The client (``ptflow.serve.loadgen_client``) is built on tritonclient, which cannot be
imported where ``kserve`` is (both register the protobuf package ``inference``), so this
module never imports tritonclient: it writes one request's inputs to a safetensors file,
runs ``python -m ptflow.serve.loadgen_client``, and parses its ``PTFLOW-LOAD`` JSON lines
into :class:`LevelResult`.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

PREFIX = "PTFLOW-LOAD "   # the client's line prefix (loadgen_client.PREFIX; not imported, see above)
STDERR_TAIL = 2000


class LoadTestError(RuntimeError):
    """The load test did not run: the client failed, timed out or printed no figures."""


@dataclass(frozen=True)
class LevelResult:
    """One concurrency level's figures, as the client measured them.

    ``requests`` counts the requests answered OK in the window, ``errors`` the failed ones
    (``error_codes``: status name -> count); latencies are over OK requests, None if none.
    """

    concurrency: int
    protocol: str
    requests: int
    errors: int
    error_codes: dict[str, int]
    error_example: str | None
    duration_s: float
    throughput_per_s: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    mean_ms: float | None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LevelResult:
        def opt(key: str) -> float | None:
            value = data.get(key)
            return None if value is None else float(value)

        return cls(concurrency=int(data["concurrency"]), protocol=str(data["protocol"]),
                   requests=int(data["requests"]), errors=int(data["errors"]),
                   duration_s=float(data["duration_s"]), throughput_per_s=float(data["throughput_per_s"]),
                   p50_ms=opt("p50_ms"), p95_ms=opt("p95_ms"), p99_ms=opt("p99_ms"), mean_ms=opt("mean_ms"),
                   error_codes={str(k): int(v) for k, v in (data.get("error_codes") or {}).items()},
                   error_example=data.get("error_example"))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def parse_lines(stdout: str) -> list[LevelResult]:
    """The client's ``PTFLOW-LOAD`` lines, in order; other stdout lines are ignored."""
    results = []
    for line in stdout.splitlines():
        if line.startswith(PREFIX):
            try:
                results.append(LevelResult.from_json(json.loads(line[len(PREFIX):])))
            except (ValueError, KeyError, TypeError) as exc:
                raise LoadTestError(f"the load client printed a malformed line ({exc}): {line[:300]}") from None
    return results


def _tail(text: str) -> str:
    text = (text or "").strip()
    return ("..." + text[-STDERR_TAIL:]) if len(text) > STDERR_TAIL else (text or "(empty)")


def run_loadtest(url: str, model: str, inputs: Mapping[str, np.ndarray], levels: Sequence[int], *,
                 protocol: str = "grpc", duration_s: float = 5.0, warmup_s: float = 1.0,
                 timeout_ms: float | None = None, python: str = sys.executable,
                 env: Mapping[str, str] | None = None, ready_timeout_s: float = 60.0,
                 client_timeout_s: float = 60.0) -> list[LevelResult]:
    """Drive ``model`` at ``url`` (HOST:PORT) with ``levels`` concurrent requests each, from a
    client process; one :class:`LevelResult` per level, in order.

    ``inputs`` is one request (protocol input name -> array sent as is); ``timeout_ms`` goes
    to the server as the request's ``timeout`` parameter; ``env`` is added over this
    process's environment for the client. Raises :class:`LoadTestError` with the client's
    stderr tail when it exits non-zero, runs too long, or prints no figures.
    """
    if protocol not in ("grpc", "http"):
        raise ValueError(f"protocol must be 'grpc' or 'http', got {protocol!r}")
    levels = [int(c) for c in levels]
    if not levels or min(levels) < 1:
        raise ValueError(f"levels must be positive concurrencies, got {list(levels)!r}")
    if not inputs:
        raise ValueError("inputs is empty: one array per protocol input is needed")
    from safetensors.numpy import save_file

    with tempfile.TemporaryDirectory(prefix="ptflow-load-") as tmp:
        path = Path(tmp) / "inputs.safetensors"
        save_file({name: np.ascontiguousarray(array) for name, array in inputs.items()}, str(path))
        cmd = [python, "-m", "ptflow.serve.loadgen_client", "--url", url, "--model", model,
               "--protocol", protocol, "--inputs", str(path), "--concurrency", ",".join(map(str, levels)),
               "--duration-s", repr(float(duration_s)), "--warmup-s", repr(float(warmup_s)),
               "--ready-timeout-s", repr(float(ready_timeout_s)),
               "--client-timeout-s", repr(float(client_timeout_s))]
        if timeout_ms is not None:
            cmd += ["--timeout-ms", repr(float(timeout_ms))]
        # Ready wait, each level's warm-up, window and in-flight tail, and start-up slack.
        limit = ready_timeout_s + len(levels) * (warmup_s + duration_s + client_timeout_s) + 60.0
        child_env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=limit, env=child_env)
        except subprocess.TimeoutExpired as exc:
            stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr
            raise LoadTestError(f"the load client ran past {limit:.0f} s against {url} and was killed; "
                                f"its stderr ends: {_tail(stderr or '')}") from None
    if proc.returncode != 0:
        raise LoadTestError(f"the load client exited with status {proc.returncode} against {protocol} {url} "
                            f"(model {model!r}); its stderr ends: {_tail(proc.stderr)}")
    results = parse_lines(proc.stdout)
    if not results:
        raise LoadTestError(f"the load client printed no {PREFIX.strip()} lines against {url}; "
                            f"its stderr ends: {_tail(proc.stderr)}")
    if [r.concurrency for r in results] != levels:
        raise LoadTestError(f"the load client measured levels {[r.concurrency for r in results]}, "
                            f"not the {levels} asked; its stderr ends: {_tail(proc.stderr)}")
    return results


def _cell(value: float | None, digits: int) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def format_table(results_by_label: Mapping[str, Sequence[LevelResult]]) -> str:
    """A fixed-width table, one row per (label, level): for terminals and the README."""
    headers = ("label", "concurrency", "req/s", "p50 ms", "p95 ms", "p99 ms", "errors")
    rows = [(label, str(r.concurrency), _cell(r.throughput_per_s, 1), _cell(r.p50_ms, 2),
             _cell(r.p95_ms, 2), _cell(r.p99_ms, 2), str(r.errors))
            for label, results in results_by_label.items() for r in results]
    widths = [max([len(h)] + [len(row[i]) for row in rows]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        return "  ".join([first] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out += [line(row) for row in rows]
    return "\n".join(out) + "\n"
