"""runtime/deform_schema.py, the network's one description: the torch model, deform.onnx, the numpy
network, the `cuda` kernel's packing and the `torch` backend all agree with it, and a bundle whose
manifest or graph disagrees with it is refused by name."""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from onnx import numpy_helper

sys.path.insert(0, str(Path(__file__).parent))

from test_cuda_backend import exported_graph_bundle  # noqa: E402
from test_network import baked_model, inputs  # noqa: E402

from embedtalk_sdk.model.deform import DeformNet  # noqa: E402
from embedtalk_sdk.runtime.network import decode_fits, decode_weights  # noqa: E402
from embedtalk_sdk.runtime.bundle import Bundle, BundleError  # noqa: E402
from embedtalk_sdk.runtime.deform_schema import (  # noqa: E402
    BOUND,
    LEAKY_RELU,
    TABLE,
    DeformConfig,
    deform_schema,
    network_config,
)
from embedtalk_sdk.runtime.network import LEARNED_SUFFIXES, BakedNetwork  # noqa: E402
from embedtalk_sdk.torch_backend import load_baked_deform  # noqa: E402

CONFIGS = [DeformConfig(), DeformConfig(hidden=32, trunk_layers=2, feature_dim=16),
           DeformConfig(window=8, trunk_layers=0, au_freqs=0, embed_freqs=0, audio_code=24)]  # fmt: skip


@pytest.mark.parametrize("cfg", CONFIGS, ids=["default", "h32-t2", "w8-t0"])
def test_torch_model_is_the_schema(cfg):
    """DeformNet's state dict is the schema's params (keys, shapes, deform.onnx's transposes) plus
    embed_proj (baked away at export): a layer added on one side only fails here."""
    state = DeformNet(cfg).state_dict()
    schema = deform_schema(cfg)
    want = {p.key: p.shape[::-1] if p.transposed else p.shape for p in schema.baked_params}
    want[schema.embed_proj.weight.key] = schema.embed_proj.weight.shape[::-1]
    assert {k: tuple(v.shape) for k, v in state.items()} == want


@pytest.mark.parametrize("cfg", CONFIGS, ids=["default", "h32-t2", "w8-t0"])
def test_onnx_graph_holds_the_schema_params_in_its_order(cfg):
    model = baked_model(n=20, cfg=cfg, table_dtype="float32")
    schema = deform_schema(cfg)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    learned = [name for name in inits if name.endswith(LEARNED_SUFFIXES)]
    assert learned == [p.name for p in schema.baked_params if p.name.endswith(LEARNED_SUFFIXES)]
    assert all(inits[p.name].shape == p.shape for p in schema.baked_params)
    assert inits[TABLE].shape == (20, schema.hidden) and inits[BOUND] == np.float32(cfg.max_offset)


def test_network_config_reads_the_manifest_block_and_names_what_is_wrong():
    cfg = DeformConfig(hidden=48, trunk_layers=3)
    assert network_config({"network": cfg.to_dict()}, "a.etk") == cfg
    with pytest.raises(BundleError, match="a.etk: the manifest has no network block"):
        network_config({}, "a.etk")
    for key, value, why in (("hidden", "64", "field 'hidden': '64' is not int"), ("window", 1.5, "'window': 1.5"),
                            ("hiden", 64, r"unknown fields \['hiden'\]"), ("hidden", -1, "hidden=-1"),
                            ("max_offset", 0, "max_offset=0"), ("trunk_layers", 1 << 20, "trunk_layers=1048576")):
        with pytest.raises(BundleError, match=f"a.etk: the manifest's network block: .*{why}"):
            network_config({"network": {**cfg.to_dict(), key: value}}, "a.etk")


def test_a_graph_that_does_not_fit_the_manifests_network_is_refused():
    data = baked_model(n=20).SerializeToString()  # hidden 32, two trunk layers
    fit = r"a/deform.onnx does not fit .*trunk0.weight_t is \(32, 32\), expected \(48, 48\)"
    with pytest.raises(BundleError, match=fit):
        BakedNetwork.from_onnx(data, "a/deform.onnx", DeformConfig(hidden=48, trunk_layers=2))
    with pytest.raises(BundleError, match="trunk1.weight_t is not in the network"):
        BakedNetwork.from_onnx(data, "a/deform.onnx", DeformConfig(hidden=32, trunk_layers=1))
    with pytest.raises(BundleError, match="lacks the weights.*trunk2.weight_t"):
        BakedNetwork.from_onnx(data, "a/deform.onnx", DeformConfig(hidden=32, trunk_layers=3))


def test_cuda_packing_is_the_decode_half_in_the_kernels_layout():
    cfg = DeformConfig(hidden=32, trunk_layers=2)
    net = BakedNetwork.from_onnx(baked_model(n=20, cfg=cfg).SerializeToString(), "deform.onnx", cfg)
    host = decode_weights(net)
    w = net.weights
    assert host["trunk_w"].shape == (2, 32, 32) and np.array_equal(host["trunk_w"][1], w["trunk1.weight_t"])
    assert np.array_equal(host["trunk_b"][0], w["trunk0.bias"]) and host["mu_w"].shape == (32, 3)
    assert host["alpha_w"].shape == (32,) and host["alpha_b"].shape == (1,)
    assert all(a.dtype == np.float32 and a.flags.c_contiguous for a in host.values())
    # what the kernel does not compute is refused (the backend says so; `auto` moves on), not run wrong
    assert decode_fits(net.schema) is None
    leaky = dataclasses.replace(net.schema, trunk=(dataclasses.replace(net.schema.trunk[0], activation=LEAKY_RELU),))
    assert "trunk0" in decode_fits(leaky) and "leaky_relu" in decode_fits(leaky)
    with pytest.raises(ValueError, match="does not compute this network: trunk0"):
        decode_weights(dataclasses.replace(net, schema=leaky))


def test_torch_backend_rebuilds_the_bundles_network_by_the_schema(tmp_path):
    path = exported_graph_bundle(tmp_path / "a.etk", n=200, hidden=48, trunk_layers=2)
    bundle = Bundle.open(path)
    cfg = network_config(bundle.manifest, path)
    assert (cfg.hidden, cfg.trunk_layers) == (48, 2)
    baked = load_baked_deform(bundle, "deform.onnx")
    assert baked.net.cfg == cfg
    window, aus = inputs(3, cfg)
    with torch.no_grad():
        dm, do = (t.numpy() for t in baked(torch.as_tensor(window), torch.as_tensor(aus)))
    ref_dm, ref_do = BakedNetwork.from_onnx(bundle.bytes_of("deform.onnx"), "deform.onnx", cfg)(window, aus)
    np.testing.assert_allclose(dm, ref_dm, atol=2e-6, rtol=1e-4)
    np.testing.assert_allclose(do, ref_do, atol=2e-5, rtol=1e-4)
    assert np.abs(ref_dm).max() > 1e-4 and np.abs(ref_do).std() > 0.1


def test_torch_backend_refuses_a_bundle_without_a_network_block(tmp_path):
    from test_runtime import make_test_bundle

    bundle = Bundle.open(make_test_bundle(tmp_path / "a.etk", n=50))  # a hand-built graph, no network block
    with pytest.raises(BundleError, match="no network block"):
        load_baked_deform(bundle, "deform.onnx")

