"""What ``export.*`` holds (``conf/export/*.yaml``), checked when the plan is built."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from ptflow.core.errors import ConfigError, invalid_choice
from ptflow.stages.export.registry import ExportFormat, formats

MLFLOW_MODEL_FORMATS = ("pt2", "onnx")  # logged as MLflow models; register_as registers the first present
_REGISTERED_NAME = re.compile(r"^[A-Za-z0-9][\w.\- ]{0,254}$")


@dataclass(frozen=True)
class ExportConfig:
    formats: tuple[str, ...] = ("pt2",)
    dir: str | None = None        # null: <run dir>/export
    name: str = "model"           # file stem: <name>.pt2, <name>.onnx, ...
    strict: bool = False          # torch.export strict (TorchDynamo) tracing
    verify: bool = True           # reload each file and compare it with the in-memory model
    fresh_check: bool = True      # also load each file in a new Python process by its manifest's load line
    tolerance: dict[str, float] = field(default_factory=dict)   # per format; absent: the format's default
    opset: int | None = None      # ONNX opset; null: the exporter's default
    register_as: str | None = None   # register the MLflow model (pt2, else onnx) under this name
    format: str | None = None     # removed (was the single format): kept only to say what replaced it

    def __post_init__(self) -> None:
        if self.format is not None:
            raise ConfigError.single("format", self.format, "no value: the key was removed",
                                     f"replaced by export.formats=[{self.format}] (a list: several formats "
                                     "in one run)")
        known = formats()
        if not self.formats:
            raise ConfigError.single("formats", [], "a non-empty list, e.g. [pt2]",
                                     "drop 'export' from the pipeline to export nothing")
        for name in self.formats:
            if name not in known:
                raise invalid_choice("formats", name, sorted(known))
        if len(set(self.formats)) != len(self.formats):
            raise ConfigError.single("formats", list(self.formats), "each format once")
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ConfigError.single("name", self.name, "a plain file stem such as 'model'")
        for name, value in self.tolerance.items():
            if name not in known:
                raise invalid_choice(f"tolerance.{name}", name, sorted(known))
            if not value >= 0:   # also rejects NaN
                raise ConfigError.single(f"tolerance.{name}", value, "a tolerance >= 0, e.g. 1e-4",
                                         "set export.verify=false to skip the check instead")
        if self.opset is not None and not 7 <= self.opset <= 30:
            raise ConfigError.single("opset", self.opset, "an ONNX opset such as 18, or null")
        if self.register_as is not None:
            if not _REGISTERED_NAME.match(str(self.register_as)):
                raise ConfigError.single("register_as", self.register_as,
                                         "a registered model name: letters, digits, '_', '-', '.', spaces "
                                         "(e.g. digits-classifier), or null")
            if not any(name in MLFLOW_MODEL_FORMATS for name in self.formats):
                raise ConfigError.single("register_as", self.register_as,
                                         f"a format MLflow can register in export.formats ({' or '.join(MLFLOW_MODEL_FORMATS)})",
                                         f"add pt2: export.formats=[pt2,{','.join(self.formats)}]")

    def tolerance_of(self, fmt: ExportFormat) -> float:
        return float(self.tolerance.get(fmt.name, fmt.tolerance))
