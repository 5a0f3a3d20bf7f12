"""Device settings: the typed config, applying it to torch, and capturing what is in force."""
from __future__ import annotations

import enum
import math
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

from ptflow.core.errors import ConfigError, Problem
from ptflow.measure import device_info

CGROUP_ROOT = Path("/sys/fs/cgroup")


class DeviceType(str, enum.Enum):
    CPU = "cpu"
    CUDA = "cuda"


class MatmulPrecision(str, enum.Enum):
    """``torch.set_float32_matmul_precision``: 'high'/'medium' allow TF32/bf16 internally."""

    HIGHEST = "highest"
    HIGH = "high"
    MEDIUM = "medium"


@dataclass(frozen=True)
class DeviceConfig:
    type: DeviceType = DeviceType.CPU
    index: int = 0
    threads: int | None = None          # intra-op threads; None: half the usable cores, >= 1
    interop_threads: int | None = None  # inter-op threads; settable once per process
    matmul_precision: MatmulPrecision = MatmulPrecision.HIGHEST
    cudnn_benchmark: bool = False
    cpus: str | int | tuple[int, ...] | None = None   # pin to these cores ('0-3,6', [0, 1]; the seed's taskset); None: as started

    def __post_init__(self) -> None:
        for key, null in (("threads", "half the usable cores"), ("interop_threads", "torch's default")):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError.single(key, value, f"a positive thread count or null ({null})")
        if self.index < 0:
            raise ConfigError.single("index", self.index, "a device index >= 0")
        if self.cpus is not None:
            try:
                device_info.parse_cpu_list(self.cpus)
            except ValueError as error:
                raise ConfigError.single("cpus", self.cpus, f"a CPU list such as '0-3,6' or null ({error})",
                                         "cores as taskset -c takes them; null keeps the process's own") from None

    @property
    def pinned(self) -> list[int] | None:
        return None if self.cpus is None else device_info.parse_cpu_list(self.cpus)

    @property
    def name(self) -> str:
        return "cpu" if self.type is DeviceType.CPU else f"cuda:{self.index}"


def check(config: DeviceConfig) -> list[Problem]:
    """Can this machine provide the requested device? (imports torch only for CUDA)."""
    if config.pinned is not None:
        allowed = started_on()
        outside = [core for core in config.pinned if core not in allowed]
        if outside:
            where = f"{os.cpu_count()} cores" if len(allowed) == (os.cpu_count() or 0) else "its CPU affinity"
            shown = list(config.cpus) if isinstance(config.cpus, tuple) else config.cpus
            return [Problem("device.cpus", shown,
                            f"cores this process may run on: {device_info.cpu_list_text(allowed)}",
                            f"core(s) {device_info.cpu_list_text(outside)} do not exist or are outside {where}; "
                            "pick from that list, or null to keep the process's own")]
    if config.type is not DeviceType.CUDA:
        return []
    import torch

    if not torch.cuda.is_available():
        return [Problem("device.type", "cuda", "a device this machine has: cpu",
                        "torch.cuda.is_available() is False here; use device=cpu")]
    if config.index >= torch.cuda.device_count():
        return [Problem("device.index", config.index, f"0..{torch.cuda.device_count() - 1}")]
    return []


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> int | None:
    """CPUs a cgroup CPU quota grants (ceil(quota/period)), or None when no quota is set.

    cgroup v2 ``cpu.max`` holds "quota period" ("max period": no quota); cgroup v1 has
    ``cpu.cfs_quota_us`` (-1: no quota) and ``cpu.cfs_period_us`` in the cpu controller.
    """
    cpu_max = _read(root / "cpu.max")
    if cpu_max is not None:
        quota, _, period = cpu_max.partition(" ")
        return cpu_quota(quota, period)
    for folder in (root / "cpu", root / "cpu,cpuacct", root):
        quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
        if quota is not None and period is not None:
            return cpu_quota(quota, period)
    return None


def cpu_quota(quota: str, period: str) -> int | None:
    """ceil(quota/period) as whole CPUs; None for no quota ("max", -1) or unreadable values."""
    try:
        quota_us, period_us = int(quota), int(period)
    except ValueError:
        return None
    if quota_us <= 0 or period_us <= 0:
        return None
    return math.ceil(quota_us / period_us)


def usable_cores(visible: int | None, quota: int | None) -> int:
    """Cores this process may use: those it may run on, capped by a CPU quota; at least 1."""
    cores = visible or 1
    if quota is not None:
        cores = min(cores, quota)
    return max(1, cores)


def default_threads(usable: int) -> int:
    """What ``threads: null`` means: half the usable cores, at least 1.

    OpenMP threads spin-wait: with one per core, any other busy process on the machine
    makes every parallel region wait on a descheduled thread and timings go erratic.
    """
    return max(1, usable // 2)


def usable_cores_here(cgroup_root: Path = CGROUP_ROOT) -> int:
    """usable_cores for this process: its CPU affinity (else cpu_count) and cgroup quota."""
    try:
        visible = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):   # no sched_getaffinity on macOS / Windows
        visible = os.cpu_count()
    return usable_cores(visible, cgroup_cpu_limit(cgroup_root))


def thread_count(config: DeviceConfig, usable: int) -> tuple[int, list[tuple[str, str]]]:
    """The intra-op thread count to set, and (key, message) warnings about it."""
    if config.threads is None:
        return default_threads(usable), []
    warnings = []
    if config.threads > usable:
        warnings.append(("device.threads",
                         f"device.threads={config.threads} exceeds the {usable} core(s) this process may "
                         "use (CPU affinity and cgroup quota): OpenMP threads will oversubscribe the cores "
                         "and timings become erratic; set device.threads to at most "
                         f"{usable}, or null (half the usable cores: {default_threads(usable)})"))
    return config.threads, warnings


def apply(config: DeviceConfig) -> list[tuple[str, str]]:
    """Put the settings in force for this process; returns (key, message) warnings
    about settings that could not be honoured or will hurt the measurements."""
    import torch

    _pin(config.pinned)   # before counting usable cores: threads: null is half the pinned set
    threads, warnings = thread_count(config, usable_cores_here())
    torch.set_num_threads(threads)
    warnings += _align_thread_variables(threads)
    if config.interop_threads is not None and config.interop_threads != torch.get_num_interop_threads():
        try:
            torch.set_num_interop_threads(config.interop_threads)
        except RuntimeError:  # torch allows this once, before any inter-op work
            warnings.append(("device.interop_threads",
                             f"device.interop_threads={config.interop_threads} was not applied: torch "
                             f"fixes it once per process and it stays {torch.get_num_interop_threads()}"))
    torch.set_float32_matmul_precision(config.matmul_precision.value)
    torch.backends.cudnn.benchmark = config.cudnn_benchmark
    if config.type is DeviceType.CUDA:
        torch.cuda.set_device(config.index)
    return warnings


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
_STARTED_ON: list[int] = []   # the process's own affinity, before any job pinned it
_SET_BY_US: dict[str, str] = {}   # thread variables ptflow set (an earlier in-process job's are not the user's)


def started_on() -> list[int]:
    """The cores this process could run on before ptflow pinned it (device.cpus)."""
    if not _STARTED_ON:
        _STARTED_ON.extend(device_info.allowed_cpus())
    return list(_STARTED_ON)


def _pin(cores: list[int] | None) -> None:
    """Pin to `cores`, or back to where the process started (a later job of an in-process
    sweep without device.cpus must not inherit an earlier job's pinning)."""
    if not hasattr(os, "sched_setaffinity"):
        return
    wanted = cores if cores is not None else started_on()
    started_on()
    if set(wanted) != set(device_info.allowed_cpus()):
        os.sched_setaffinity(0, wanted)


def _align_thread_variables(threads: int) -> list[tuple[str, str]]:
    """OMP/MKL_NUM_THREADS set to the intra-op thread count in force (for libraries that read
    them later, and child processes); a different value the user set is replaced, with a warning."""
    warnings = []
    for name in THREAD_VARIABLES:
        given = os.environ.get(name)
        if given is not None and given != str(threads) and given != _SET_BY_US.get(name):
            warnings.append((f"device.{name.lower()}", f"{name}={given} differs from the {threads} intra-op "
                             f"thread(s) ptflow runs with (device.threads): set to {threads} so every library "
                             "uses the same count; set device.threads to change it"))
        os.environ[name] = _SET_BY_US[name] = str(threads)
    return warnings


CUBLAS_WORKSPACE = ":4096:8"   # what cuBLAS needs for deterministic results (CUDA >= 10.2)


def seed_everything(seed: int) -> list[str]:
    """Seed torch (CPU and every CUDA device), python's `random` and numpy; returns what was seeded."""
    import random

    import torch

    torch.manual_seed(seed)
    random.seed(seed)
    seeded = ["torch", "random"]
    try:
        import numpy
    except ImportError:
        return seeded
    numpy.random.seed(seed % 2**32)   # numpy takes 0..2**32-1; ptflow's seeds span torch's range
    return [*seeded, "numpy"]


def apply_determinism(mode: bool | str, config: DeviceConfig) -> tuple[dict[str, str | bool], list[tuple[str, str]]]:
    """Put `deterministic` (false, true or 'warn') in force, both ways: an earlier run in this
    process must not leave it on. Call before CUDA does any work: cuBLAS reads
    CUBLAS_WORKSPACE_CONFIG once per process. Returns (settings for the record, warnings)."""
    import torch

    enabled = mode is not False
    warnings: list[tuple[str, str]] = []
    if enabled and config.type is DeviceType.CUDA and not os.environ.get("CUBLAS_WORKSPACE_CONFIG"):
        if torch.cuda.is_initialized():
            warnings.append(("deterministic", "CUBLAS_WORKSPACE_CONFIG was set after CUDA started in this "
                             "process (an earlier run here), so cuBLAS may not be deterministic; set "
                             f"CUBLAS_WORKSPACE_CONFIG={CUBLAS_WORKSPACE} in the environment before running ptflow"))
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE
    # off and nothing left on: no call, since it imports torch._inductor (~0.9 s) to set a flag that is off
    inductor = sys.modules.get("torch._inductor.config")
    if enabled or torch.are_deterministic_algorithms_enabled() or getattr(inductor, "deterministic", False):
        torch.use_deterministic_algorithms(enabled, warn_only=mode == "warn")
    torch.backends.cudnn.deterministic = enabled
    if enabled:
        torch.backends.cudnn.benchmark = False   # the plan refuses device.cudnn_benchmark=true with it
    settings: dict[str, str | bool] = {
        "deterministic": mode if isinstance(mode, str) else str(mode).lower(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
    }
    if config.type is DeviceType.CUDA:
        settings["cublas_workspace_config"] = os.environ.get("CUBLAS_WORKSPACE_CONFIG", "")
    return settings, warnings


def capture(config: DeviceConfig) -> dict[str, str | int | bool]:
    """The settings actually in force, for the record."""
    import torch

    settings: dict[str, str | int | bool] = {
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "device": config.name,
        "device_name": _cpu_name() if config.type is DeviceType.CPU else torch.cuda.get_device_name(config.index),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "matmul_precision": torch.get_float32_matmul_precision(),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
    }
    cores = device_info.allowed_cpus()
    settings.update(cpu_count=os.cpu_count() or 0, cpu_affinity=device_info.cpu_list_text(cores),
                    usable_cores=usable_cores_here(), omp_num_threads=os.environ.get("OMP_NUM_THREADS", ""))
    governor = device_info.governor(cores)
    if governor:
        settings["cpu_governor"] = governor
    if config.type is DeviceType.CUDA:
        settings["cuda_version"] = str(torch.version.cuda)
        settings["cudnn_version"] = str(torch.backends.cudnn.version())
        driver = device_info.gpu_state(config.index).get("gpu_driver")
        if driver:
            settings["gpu_driver"] = driver
    return settings


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError:
        return None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
