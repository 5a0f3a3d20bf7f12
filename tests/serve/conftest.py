"""Exports made once per session by the real pipeline, for the serving tests."""
from __future__ import annotations

import pytest

from tests.serve.serving import make_export

TRANSFORMER_DYNAMIC = "data.dynamic_dims={rows: {1: {label: tokens, max: 8}}, mask: {1: tokens}}"


@pytest.fixture(scope="session")
def mlp_export(tmp_path_factory):
    """The bundled digits MLP exported as pt2 and onnx (dynamic batch)."""
    return make_export(tmp_path_factory.mktemp("mlp"), "export.formats=[pt2,onnx]")


@pytest.fixture(scope="session")
def transformer_export(tmp_path_factory):
    """The bundled digits transformer: named inputs rows (B, T, 8) + mask (B, T), T dynamic."""
    return make_export(tmp_path_factory.mktemp("transformer"), "experiment=digits_transformer",
                       "export.formats=[pt2]", TRANSFORMER_DYNAMIC)
