"""A run's datasets as MLflow Dataset entities: the form the UI lists and MLflow's tensor form."""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

DIGEST_CHARS = 16   # of the sha256 shown as MLflow's dataset digest (max 36)


def mlflow_dataset(info: Mapping[str, Any]):
    """An ``artifact.DatasetInfo`` (as plain data) as an MLflow Dataset entity: the schema in
    the form the UI lists (``mlflow_colspec``) and in MLflow's tensor form, the source as a
    code source, and the full sha256 with the row count in the profile the UI shows."""
    from mlflow.entities import Dataset

    inputs = list(info["inputs"])
    targets = [info["targets"]] if info.get("targets") else []
    shown = [{"name": c["name"], "type": f"{c['dtype']} ({', '.join(_dims(c['shape']))})", "required": True}
             for c in inputs + targets]
    tensors = {"features": json.dumps([_tensor_spec(c) for c in inputs]),
               "targets": json.dumps([_tensor_spec(c) for c in targets]) if targets else None}
    profile = {"rows": info["rows"], "source": info["source"], "sha256": info["digest"]}
    return Dataset(name=info["name"], digest=info["digest"][:DIGEST_CHARS], source_type="code",
                   source=json.dumps({"tags": {"builder": info["source"]}}),
                   schema=json.dumps({"mlflow_colspec": shown, "mlflow_tensorspec": tensors}),
                   profile=json.dumps(profile))


def _dims(shape: Iterable[int]) -> list[str]:
    return ["batch" if d == -1 else str(d) for d in shape]


def _tensor_spec(column: Mapping[str, Any]) -> dict[str, Any]:
    return {"name": column["name"], "type": "tensor",
            "tensor-spec": {"dtype": column["dtype"], "shape": list(column["shape"])}}


def dataset_key(name: str, digest: str, context: str) -> tuple[str, str, str]:
    return name, digest[:DIGEST_CHARS], str(context)
