"""runtime/network.py and runtime/onnx_weights.py: the baked network in numpy, from deform.onnx
read without the onnx package, against onnx's own reader and onnxruntime."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from embedtalk_sdk.export.onnx_graph import build_deform_onnx
from embedtalk_sdk.model.deform import BakedDeform, DeformConfig
from embedtalk_sdk.runtime.bundle import BundleError
from embedtalk_sdk.runtime.network import BakedNetwork
from embedtalk_sdk.runtime.onnx_weights import graph_io, read_initializers
from tests.test_model import random_net

CFG = DeformConfig(trunk_layers=2, hidden=32)


def baked_model(n: int = 300, table_dtype: str = "float16", cfg: DeformConfig = CFG, seed: int = 0) -> onnx.ModelProto:
    net = random_net(cfg, seed)
    with torch.no_grad():
        table = net.embedding_table(torch.randn(n, cfg.embed_dim))
    return build_deform_onnx(BakedDeform(net.eval(), table).eval(), table_dtype)


def inputs(b: int, cfg: DeformConfig = CFG, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    window = (rng.standard_normal((b, cfg.window, cfg.feature_dim)) * 2 + 1).astype(np.float32)
    return window, rng.uniform(0, 1, (b, 6)).astype(np.float32)


@pytest.mark.parametrize("table_dtype", ["float16", "float32"])
def test_initializers_match_onnx_numpy_helper(table_dtype):
    model = baked_model(table_dtype=table_dtype)
    ours = read_initializers(model.SerializeToString())
    theirs = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert ours.keys() == theirs.keys()
    for name, ref in theirs.items():
        assert ours[name].dtype == ref.dtype and ours[name].shape == ref.shape, name
        np.testing.assert_array_equal(ours[name], ref, err_msg=name)


def test_non_raw_tensor_encodings_are_read():
    """float_data / int64_data (what other producers write) decode like raw_data."""
    f = onnx.helper.make_tensor("f", onnx.TensorProto.FLOAT, [2, 2], [1.5, -2.0, 3.25, 0.0])
    i = onnx.helper.make_tensor("i", onnx.TensorProto.INT64, [3], [-1, 0, 7])
    graph = onnx.helper.make_graph([], "g", [], [], [f, i])
    got = read_initializers(onnx.helper.make_model(graph).SerializeToString())
    np.testing.assert_array_equal(got["f"], [[1.5, -2.0], [3.25, 0.0]])
    np.testing.assert_array_equal(got["i"], [-1, 0, 7])


@pytest.mark.parametrize("table_dtype", ["float16", "float32"])
def test_numpy_network_matches_onnxruntime(table_dtype):
    model = baked_model(table_dtype=table_dtype)
    data = model.SerializeToString()
    net = BakedNetwork.from_onnx(data, "deform.onnx", CFG)
    assert (net.hidden, net.n_trunk, net.n_convs) == (CFG.hidden, 2, CFG.n_convs)
    window, aus = inputs(5)
    dm, do = net(window, aus)
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    ref_dm, ref_do = sess.run(None, {"audio_window": window, "aus": aus})
    assert dm.shape == ref_dm.shape == (5, 300, 3) and do.shape == ref_do.shape == (5, 300)
    np.testing.assert_allclose(dm, ref_dm, atol=2e-6, rtol=1e-4)
    np.testing.assert_allclose(do, ref_do, atol=2e-5, rtol=1e-4)
    assert np.abs(ref_dm).max() > 1e-3 and np.abs(ref_do).std() > 0.1  # a network that does something


def test_a_graph_without_the_weights_is_refused():
    graph = onnx.helper.make_graph([], "g", [], [], [numpy_helper.from_array(np.zeros(3, np.float32), "x")])
    with pytest.raises(BundleError, match="lacks the weights"):
        BakedNetwork.from_onnx(onnx.helper.make_model(graph).SerializeToString(), "a/deform.onnx", CFG)
    with pytest.raises(BundleError, match="a/deform.onnx"):
        BakedNetwork.from_onnx(b"\xff\xff\xff", "a/deform.onnx", CFG)


def test_graph_io_reads_what_onnx_declares():
    model = baked_model()
    model.graph.input.append(onnx.helper.make_tensor_value_info("au_pe.freqs", onnx.TensorProto.FLOAT, [4, 1]))
    inputs, outputs = graph_io(model.SerializeToString())
    dims = lambda v: [d.dim_value if d.HasField("dim_value") else d.dim_param for d in v.type.tensor_type.shape.dim]
    assert inputs == {v.name: (v.type.tensor_type.elem_type, dims(v)) for v in model.graph.input[:-1]}
    assert outputs == {v.name: (v.type.tensor_type.elem_type, dims(v)) for v in model.graph.output}
    assert inputs["audio_window"] == (1, ["batch", CFG.window, CFG.feature_dim])  # an initializer is no input
    with pytest.raises(ValueError, match="not a readable ONNX model"):
        graph_io(b"\xff\xff\xff")
