"""Device settings: the typed config, applying it to torch, and capturing what is in force."""
from __future__ import annotations

import enum
import logging
import platform
from dataclasses import dataclass

from ptflow.errors import ConfigError, Problem

log = logging.getLogger(__name__)


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
    threads: int | None = None          # intra-op threads; None keeps torch's default
    interop_threads: int | None = None  # inter-op threads; settable once per process
    matmul_precision: MatmulPrecision = MatmulPrecision.HIGHEST
    cudnn_benchmark: bool = False

    def __post_init__(self) -> None:
        for key in ("threads", "interop_threads"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError.single(key, value, "a positive thread count or null (torch's default)")
        if self.index < 0:
            raise ConfigError.single("index", self.index, "a device index >= 0")

    @property
    def name(self) -> str:
        return "cpu" if self.type is DeviceType.CPU else f"cuda:{self.index}"


def check(config: DeviceConfig) -> list[Problem]:
    """Can this machine provide the requested device? (imports torch only for CUDA)."""
    if config.type is not DeviceType.CUDA:
        return []
    import torch

    if not torch.cuda.is_available():
        return [Problem("device.type", "cuda", "a device this machine has: cpu",
                        "torch.cuda.is_available() is False here; use device=cpu")]
    if config.index >= torch.cuda.device_count():
        return [Problem("device.index", config.index, f"0..{torch.cuda.device_count() - 1}")]
    return []


def apply(config: DeviceConfig) -> None:
    """Put the settings in force for this process."""
    import torch

    if config.threads is not None:
        torch.set_num_threads(config.threads)
    if config.interop_threads is not None and config.interop_threads != torch.get_num_interop_threads():
        try:
            torch.set_num_interop_threads(config.interop_threads)
        except RuntimeError:  # torch allows this once, before any inter-op work
            log.warning("interop_threads stays %d: torch fixes it once per process",
                        torch.get_num_interop_threads())
    torch.set_float32_matmul_precision(config.matmul_precision.value)
    torch.backends.cudnn.benchmark = config.cudnn_benchmark
    if config.type is DeviceType.CUDA:
        torch.cuda.set_device(config.index)


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
    if config.type is DeviceType.CUDA:
        settings["cuda_version"] = str(torch.version.cuda)
    return settings


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
