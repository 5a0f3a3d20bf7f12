"""Hand-made stages and stand-ins for a planned stage and its run context: the stage cache
tests drive the cache with them, without a ptflow run."""
from __future__ import annotations

import dataclasses

from ptflow.core.stage_cache import StageCache


class DiskStage:
    cache = "disk"

    def cache_save(self, artifact):
        return {"x": artifact["x"]}, {"note": artifact["note"]}

    def cache_restore(self, artifact, tensors, meta):
        return {"x": tensors["x"], "note": meta["note"], "restored": True}


class MemoryStage:
    cache = "memory"


@dataclasses.dataclass(frozen=True)
class Planned:
    name: str
    stage: object
    config: dict


@dataclasses.dataclass(frozen=True)
class Ctx:
    seed: int = 0
    device: str = "cpu"
    settings: dict = dataclasses.field(default_factory=dict)
    cache: StageCache | None = None
    warn: object = None
