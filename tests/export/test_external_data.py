"""Graphs over protobuf's 2 GB limit keep their weights in one external ``.data`` file."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from reaudio.export import onnx_export
from reaudio.export.onnx_export import consolidate_external_data, save_onnx


@pytest.fixture
def decoder_graph(tiny_artifacts, tmp_path):
    model = onnx.load(str(tiny_artifacts / "bundle" / "decoder" / "model.onnx"))
    return model, tmp_path


def _run(path):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    latent = np.random.default_rng(0).standard_normal((1, 4, 10, 8)).astype(np.float32)
    return session.run(None, {"latent": latent})[0]


def test_large_models_are_saved_with_one_external_data_file(decoder_graph, monkeypatch):
    model, tmp = decoder_graph
    reference = tmp / "plain.onnx"
    save_onnx(model, reference)
    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_BYTES", 1000)
    big = tmp / "big" / "model.onnx"
    big.parent.mkdir()
    save_onnx(model, big)
    assert sorted(p.name for p in big.parent.iterdir()) == ["model.onnx", "model.onnx.data"]
    assert big.stat().st_size < reference.stat().st_size / 2
    np.testing.assert_array_equal(_run(big), _run(reference))


def test_per_tensor_files_are_consolidated(decoder_graph):
    model, tmp = decoder_graph
    folder = tmp / "spread"
    folder.mkdir()
    path = folder / "model.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=False, size_threshold=0)
    before = _run(path)
    assert len(list(folder.iterdir())) > 5
    consolidate_external_data(path)
    assert sorted(p.name for p in folder.iterdir()) == ["model.onnx", "model.onnx.data"]
    np.testing.assert_array_equal(_run(path), before)
