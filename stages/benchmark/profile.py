"""benchmark's measurements beyond latency: peak memory, FLOPs per call and the share of the
device's peak they reach, and torch.profiler's table and Chrome trace.

Each runs in its own untimed pass, after timing: a memory probe, a FLOP counter or a profiler
slows the calls it watches, so none of these may run while benchmark times. Plain functions;
the benchmark stage decides when to call them and names the files.
"""
from __future__ import annotations

import contextlib
import ctypes
import enum
import importlib.util
import math
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ptflow.core.errors import ConfigError, Problem, invalid_choice
from ptflow.core.files import partial_file, write_atomic
from ptflow.measure.modelinfo import model_size_mb, tensor_bytes
from ptflow.stages.benchmark.roofline import Figures, Peak, known_peak

if TYPE_CHECKING:   # imported where used: importing this module must not import torch (fast plan checks)
    import torch

MB = 1e6
PROFILE_CALLS_MAX = 100   # every call adds its events to trace.json: a few calls show the steady state


class Activity(str, enum.Enum):
    """What torch.profiler records: operators on the CPU, kernels on the GPU."""

    CPU = "cpu"
    CUDA = "cuda"


@dataclass(frozen=True)
class ProfileConfig:
    """benchmark's keys for the untimed passes after timing."""

    memory: bool = True             # peak memory of one call per model: RSS, and the CUDA allocator's on GPU
    flops: bool = True              # FLOPs per call (counted on the eager module), achieved TFLOP/s, % of peak
    peak_tflops: float | None = None   # the device's peak TFLOP/s for % of peak; null: the table of known GPUs
    profile: bool = False           # torch.profiler over profile_calls calls: key_averages table + Chrome trace
    profile_calls: int = 5          # profiled calls per model, after one untimed warm-up call
    profile_activities: tuple[Activity, ...] | None = None   # null: the device's own (cpu; cpu and cuda on GPU)
    plots: bool = True              # latency histogram and latency-vs-batch PNGs (matplotlib)

    def __post_init__(self) -> None:
        if not 1 <= self.profile_calls <= PROFILE_CALLS_MAX:
            raise ConfigError.single("profile_calls", self.profile_calls, f"an integer from 1 to {PROFILE_CALLS_MAX}",
                                     "each call adds its events to the trace; a few show the steady state")
        if self.peak_tflops is not None and not (self.peak_tflops > 0 and math.isfinite(self.peak_tflops)):
            raise ConfigError.single("peak_tflops", self.peak_tflops,
                                     "the device's peak in TFLOP/s (> 0, e.g. 989.4 for an H100 SXM in bf16), "
                                     "or null to look the device up")
        if self.profile_activities is not None:
            object.__setattr__(self, "profile_activities", _activities(self.profile_activities))

    def activities_on(self, device_type: str) -> tuple[Activity, ...]:
        """The activities to record: the configured ones, else the device's own."""
        if self.profile_activities is not None:
            return self.profile_activities
        return (Activity.CPU, Activity.CUDA) if device_type == "cuda" else (Activity.CPU,)

    def problems(self, device_type: str, prefix: str = "benchmark") -> list[Problem]:
        """Plan-time checks against the device the run will use: profiler activities it lacks,
        plots without matplotlib. Keys are full config keys (`prefix`.key)."""
        found: list[Problem] = []
        key, configured = f"{prefix}.profile_activities", self.profile_activities
        configured = None if configured is None else [a.value for a in configured]
        if self.profile and Activity.CUDA in self.activities_on(device_type):
            if device_type != "cuda":
                found.append(Problem(key, configured, f"activities a {device_type} device has: [cpu]",
                                     f"set {key}=[cpu] (or null: the device's own), or run on device=cuda"))
            elif not _profiler_records_cuda():
                found.append(Problem(key, configured, "activities this torch build's profiler supports: [cpu]",
                                     f"its profiler lacks CUDA (a build without CUPTI): set {key}=[cpu]"))
        if self.plots and importlib.util.find_spec("matplotlib") is None:
            found.append(Problem(f"{prefix}.plots", True, "matplotlib installed (it draws the PNGs)",
                                 f"pip install matplotlib, or set {prefix}.plots=false"))
        return found

    def peak(self, device_name: str, precision: str | None) -> Peak | None:
        """The peak to compare with: benchmark.peak_tflops if set, else the known device's at
        `precision` (None: unknown, e.g. a plugin's recipe: no peak)."""
        if self.peak_tflops is not None:
            return Peak(self.peak_tflops, "benchmark.peak_tflops")
        return known_peak(device_name, precision)


def _activities(values: Sequence[Any]) -> tuple[Activity, ...]:
    if isinstance(values, (str, bytes)) or not values:
        raise ConfigError.single("profile_activities", values, "a non-empty list such as [cpu] or [cpu, cuda], "
                                 "or null (the device's own)")
    chosen = []
    for value in values:
        try:
            chosen.append(Activity(value.value if isinstance(value, Activity) else value))
        except ValueError:
            raise invalid_choice("profile_activities", value, [a.value for a in Activity]) from None
    if len(set(chosen)) != len(chosen):
        raise ConfigError.single("profile_activities", [a.value for a in chosen], "each activity once")
    return tuple(chosen)


def _profiler_records_cuda() -> bool:
    import torch

    return torch.profiler.ProfilerActivity.CUDA in torch.profiler.supported_activities()


# --- memory --------------------------------------------------------------------------------

def param_buffer_mb(module: Any) -> float:
    """MB of the tensors the module holds: its state_dict, counted as ptflow.measure.modelinfo counts
    it (quantized subclasses and packed params at their real size), plus the non-persistent
    buffers the state_dict leaves out (rotary tables, masks) that still occupy memory."""
    extra, seen = 0, set()
    for sub in module.modules():
        for name in getattr(sub, "_non_persistent_buffers_set", ()):
            buffer = sub._buffers.get(name)
            if buffer is not None and id(buffer) not in seen:
                seen.add(id(buffer))
                extra += tensor_bytes(buffer)
    return model_size_mb(module) + extra / MB


def memory_pass(fn: Callable[[], object], device: str | torch.device, role: str) -> Figures:
    """Peak memory of one call of `fn`, in its own pass (never while timing).

    benchmark.<role>.peak_rss_mb: the process's peak resident set during the call (the
    interpreter, torch, every model loaded); .peak_rss_rise_mb: that peak above the RSS at
    the call's start, free heap pages handed back first. On CUDA also the allocator's peaks
    (.cuda_peak_allocated_mb, .cuda_peak_reserved_mb) and .cuda_peak_allocated_rise_mb."""
    import torch

    device = torch.device(device)
    prefix = f"benchmark.{role}"
    notes: list[str] = []
    on_cuda = device.type == "cuda"
    if on_cuda:
        torch.cuda.synchronize(device)
        with torch.cuda.device(device):
            torch.cuda.empty_cache()   # so the reserved peak is this pass's, not blocks cached earlier
        torch.cuda.reset_peak_memory_stats(device)
        allocated_before = torch.cuda.memory_allocated(device)
    _release_free_heap()
    pass_only, rss_before = _reset_peak_rss(), _status_bytes("VmRSS")
    with torch.inference_mode():
        fn()
    if on_cuda:
        torch.cuda.synchronize(device)
    metrics: dict[str, float] = {}
    peak_rss = _peak_rss_bytes()
    if peak_rss is not None:
        metrics[f"{prefix}.peak_rss_mb"] = peak_rss / MB
    if peak_rss is not None and pass_only and rss_before is not None:
        metrics[f"{prefix}.peak_rss_rise_mb"] = max(0.0, peak_rss - rss_before) / MB
    elif peak_rss is not None:
        notes.append(f"{prefix}.peak_rss_mb is the process's peak since it started, not this pass's: "
                     "/proc/self/clear_refs could not reset it")
    else:
        notes.append("no peak RSS on this platform (neither /proc/self/status nor resource.getrusage)")
    if on_cuda:
        peak = torch.cuda.max_memory_allocated(device)
        metrics[f"{prefix}.cuda_peak_allocated_mb"] = peak / MB
        metrics[f"{prefix}.cuda_peak_allocated_rise_mb"] = max(0, peak - allocated_before) / MB
        metrics[f"{prefix}.cuda_peak_reserved_mb"] = torch.cuda.max_memory_reserved(device) / MB
    return Figures(metrics, tuple(notes))


_PROC_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _release_free_heap() -> None:
    """Hand glibc's free heap pages back to the OS (malloc_trim), so the rise counts what the
    call needs: otherwise memory freed after timing is reused unseen and the rise reads 0."""
    try:
        ctypes.CDLL(None).malloc_trim(0)   # CDLL(None): symbols already in the process (glibc)
    except (OSError, AttributeError):      # not glibc (macOS, musl): the rise may read low
        pass


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux >= 4.0: write 5 to
    clear_refs); True when the next VmHWM is therefore this pass's own peak."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:   # not Linux, or a sandbox that forbids it
        return False
    return _status_bytes("VmHWM") is not None


def _peak_rss_bytes() -> float | None:
    """VmHWM; where /proc is missing, getrusage's peak of the whole process."""
    peak = _status_bytes("VmHWM")
    if peak is not None:
        return peak
    try:
        import resource   # POSIX only
    except ImportError:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1.0 if sys.platform == "darwin" else 1024.0)


def _status_bytes(field: str) -> float | None:
    try:
        text = _PROC_STATUS.read_text(encoding="ascii")
    except OSError:
        return None
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    return float(match.group(1)) * 1024 if match else None


# --- torch.profiler ------------------------------------------------------------------------

PROFILE_TABLE, TRACE, TABLE_ROWS = "profile_table.txt", "trace.json", 30


def profile_pass(fn: Callable[[], object], calls: int, activities: Sequence[Activity | str],
                 out_dir: Path) -> dict[str, Path]:
    """torch.profiler over one untimed warm-up call and `calls` recorded calls (shapes
    recorded). Writes out_dir/profile_table.txt (key_averages, the 30 rows with the most self
    time: GPU time when CUDA is recorded, else CPU time) and out_dir/trace.json (Chrome trace,
    for chrome://tracing or Perfetto). Returns {"profile_table": path, "trace": path}."""
    import torch
    from torch.profiler import ProfilerActivity, profile, schedule

    chosen = _activities(list(activities))
    kinds = {Activity.CPU: ProfilerActivity.CPU, Activity.CUDA: ProfilerActivity.CUDA}
    cuda = Activity.CUDA in chosen
    out_dir.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode(), _kineto_chatter_off_console():
        with profile(activities=[kinds[a] for a in chosen], record_shapes=True,
                     schedule=schedule(wait=0, warmup=1, active=calls, repeat=1)) as profiler:
            for _ in range(calls + 1):
                fn()
                if cuda:
                    torch.cuda.synchronize()
                profiler.step()
    sort_by = "self_device_time_total" if cuda else "self_cpu_time_total"
    table_path, trace_path = out_dir / PROFILE_TABLE, out_dir / TRACE
    table = profiler.key_averages().table(sort_by=sort_by, row_limit=TABLE_ROWS)
    write_atomic(table_path, f"torch.profiler: {calls} call(s) after 1 warm-up, activities "
                             f"{[a.value for a in chosen]}, sorted by {sort_by}\n{table}\n")
    with partial_file(trace_path.with_name(f".{TRACE}.partial-{os.getpid()}")) as partial:
        profiler.export_chrome_trace(str(partial))
        os.replace(partial, trace_path)
    return {"profile_table": table_path, "trace": trace_path}


# Kineto (the profiler's C++ side) prints "USDT:... profiler_start" and "STAGE:..." lines to
# the process's stderr (fd 2) on every run, whatever its log level.
_KINETO_CHATTER = re.compile(rb"^(USDT|STAGE|INFO):\S+ \S+ \d+:\d+ \S+\.cpp:\d+\] ")


@contextlib.contextmanager
def _kineto_chatter_off_console() -> Iterator[None]:
    """fd 2 into a temporary file while the block runs; then every line but kineto's
    routine chatter goes back to stderr (its warnings and errors included)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().splitlines(keepends=True) if not _KINETO_CHATTER.match(line)]
            sys.stderr.write(b"".join(kept).decode(errors="replace"))
            sys.stderr.flush()
