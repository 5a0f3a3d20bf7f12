"""What the machine is and how it stands: CPU lists, frequency governor, GPU driver, clocks
and temperature. Read-only helpers for device settings and the run's record; every reader
returns None where the machine does not tell (a container without /sys, no nvidia-smi)."""
from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

CPUFREQ = Path("/sys/devices/system/cpu/cpu{n}/cpufreq/scaling_governor")
NVIDIA_SMI_TIMEOUT_S = 5


def parse_cpu_list(value: object) -> list[int]:
    """'0-3,6' or [0, 1, 2] (or 3) -> sorted unique core numbers; ValueError saying what is wrong."""
    if isinstance(value, bool):
        raise ValueError("a CPU list such as '0-3,6' or [0, 1]")
    if isinstance(value, int):
        items: Iterable[object] = [value]
    elif isinstance(value, str):
        items = [part.strip() for part in value.split(",") if part.strip()]
    elif isinstance(value, (list, tuple)):
        items = value
    else:
        raise ValueError("a CPU list such as '0-3,6' or [0, 1]")
    cores: set[int] = set()
    for item in items:
        if isinstance(item, str) and "-" in item:
            low, _, high = item.partition("-")
            try:
                first, last = int(low), int(high)
            except ValueError:
                raise ValueError(f"'{item}' is not a range such as 0-3") from None
            if first > last:
                raise ValueError(f"the range '{item}' runs backwards")
            cores.update(range(first, last + 1))
            continue
        try:
            core = int(item)   # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ValueError(f"'{item}' is not a core number") from None
        if core < 0:
            raise ValueError(f"core {core} is negative")
        cores.add(core)
    if not cores:
        raise ValueError("at least one core")
    return sorted(cores)


def cpu_list_text(cores: Iterable[int]) -> str:
    """[0, 1, 2, 3, 6] -> '0-3,6' (the form taskset and /proc use)."""
    ordered = sorted(set(cores))
    parts, start = [], None
    for i, core in enumerate(ordered):
        if start is None:
            start = core
        if i + 1 == len(ordered) or ordered[i + 1] != core + 1:
            parts.append(str(start) if start == core else f"{start}-{core}")
            start = None
    return ",".join(parts)


def allowed_cpus() -> list[int]:
    """The cores this process may run on now (its affinity), else all of them."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def governor(cores: Iterable[int]) -> str | None:
    """The cpufreq governor of the cores ('performance', 'powersave', ...); several joined
    with '/' when they differ; None where /sys does not say (VMs, containers)."""
    found: set[str] = set()
    for core in cores:
        try:
            found.add(Path(str(CPUFREQ).format(n=core)).read_text(encoding="utf-8").strip())
        except OSError:
            continue
    return "/".join(sorted(found)) or None


def gpu_state(index: int) -> dict[str, float | str]:
    """Temperature (C), SM and memory clocks (MHz), power (W) and driver of GPU `index` from
    nvidia-smi; empty where there is none. Read before and after timing: a GPU that heats
    up and lowers its clocks during a run is slower at the end than at the start."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return {}
    fields = ("temperature.gpu", "clocks.sm", "clocks.mem", "power.draw", "driver_version")
    try:
        out = subprocess.run([smi, f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits", "-i",
                              str(index)], capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S, check=True)
    except (OSError, subprocess.SubprocessError):
        return {}
    values = [v.strip() for v in out.stdout.strip().split(",")]
    if len(values) != len(fields):
        return {}
    names = ("gpu_temp_c", "gpu_sm_clock_mhz", "gpu_mem_clock_mhz", "gpu_power_w")
    state: dict[str, float | str] = {}
    for name, value in zip(names, values):
        try:
            state[name] = float(value)
        except ValueError:
            continue   # "[N/A]" on some boards
    state["gpu_driver"] = values[-1]
    return state
