"""Engines at export: TensorRT-RTX engines of the baked network, built here without a GPU.

TensorRT-RTX is a real consumer of our ONNX that no one here wrote: the parser and the builder
must accept `build_deform_onnx`'s graph for each target compute capability. These tests need the
`gpu` extra's tensorrt-rtx wheels (not a GPU) and skip cleanly without them; the full-TensorRT
path (plugin node) is checked as far as it can be without `tensorrt`.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from embedtalk_sdk.plugins.cuda import engines
from embedtalk_sdk.export.onnx_graph import build_deform_onnx, io_spec
from embedtalk_sdk.model.deform import BakedDeform, DeformConfig
from test_model import random_net

N_GAUSSIANS = 700
CFG = DeformConfig(feature_dim=32, hidden=32)

needs_rtx = pytest.mark.skipif(
    not engines.rtx_available(),
    reason="TensorRT-RTX is not installed (pip install 'embedtalk-sdk[gpu]': tensorrt-rtx-cu13-libs/-bindings)",
)


def random_baked(n: int = N_GAUSSIANS, seed: int = 0) -> BakedDeform:
    net = random_net(CFG, seed)
    with torch.no_grad():
        table = net.embedding_table(torch.randn(n, CFG.embed_dim))
    return BakedDeform(net.eval(), table).eval()


@pytest.fixture(scope="module")
def deform_model():
    return build_deform_onnx(random_baked())


def test_targets_are_normalised():
    assert engines.parse_targets("sm86, sm_89,8.9,120") == ["sm86", "sm89", "sm120"]
    assert engines.parse_targets(["86"]) == ["sm86"]
    with pytest.raises(ValueError, match="compute capability"):
        engines.normalize_target("ampere")


@needs_rtx
def test_rtx_engines_for_sm86_and_sm89(deform_model):
    spec = io_spec(deform_model)
    entries = engines.build_rtx_engines(deform_model.SerializeToString(), targets=["sm86", "sm89"])
    trt = engines.import_rtx()
    assert [e["compute_capability"] for e in entries] == ["sm86", "sm89"]
    for e in entries:
        assert e["backend"] == "tensorrt-rtx" and e["trt_version"] == trt.__version__
        assert e["file"] == f"engines/deform-{e['compute_capability']}.trtrtx"
        assert e["inputs"] == spec["inputs"] == {"audio_window": ["batch", 16, 32], "aus": ["batch", 6]}
        assert e["outputs"] == spec["outputs"] == {
            "delta_means": ["batch", N_GAUSSIANS, 3], "delta_opacity": ["batch", N_GAUSSIANS],
        }  # fmt: skip
        assert e["profile"] == {"batch": list(engines.BATCH_PROFILE)}
        assert e["bytes"] == len(e["data"]) > N_GAUSSIANS * CFG.hidden * 4  # the table is in there
        json.dumps(engines.manifest_entry(e))  # the manifest part is JSON and has no bytes
        assert "data" not in engines.manifest_entry(e)


@needs_rtx
def test_rtx_refusals_say_why(deform_model):
    with pytest.raises(engines.EngineBuildError, match="cannot target sm90"):
        engines.build_rtx_engines(deform_model.SerializeToString(), targets=["sm90"])
    with pytest.raises(engines.EngineBuildError, match="parser rejected"):
        engines.build_rtx_engines(b"not an onnx model", targets=["sm86"])


def test_plugin_graph_for_full_tensorrt(deform_model):
    """The one-engine graph: deform net -> EmbedTalkRasterizer plugin node -> uint8 frames."""
    n = N_GAUSSIANS
    rng = np.random.default_rng(0)
    gaussians = {k: rng.normal(size=s).astype(np.float32) for k, s in
                 dict(means=(n, 3), quats=(n, 4), scales=(n, 3), opacity_logits=(n,), colors=(n, 3)).items()}  # fmt: skip
    K = [[60.0, 0, 32], [0, 60.0, 24], [0, 0, 1]]
    model = engines.rasterizer_graph(deform_model, gaussians, K, width=64, height=48)
    node = model.graph.node[-1]
    assert (node.op_type, node.domain) == ("EmbedTalkRasterizer", "embedtalk")
    attrs = {a.name: a for a in node.attribute}
    assert attrs["plugin_version"].s == b"1" and attrs["fx"].f == 60.0 and attrs["cy"].f == 24.0
    assert list(node.input[:4]) == ["delta_means", "delta_opacity", "viewmat", "background"]
    spec = io_spec(model)
    assert spec["inputs"]["background"] == ["batch", 48, 64, 3]
    assert spec["outputs"] == {"frames": ["batch", 48, 64, 3]}
    assert len(deform_model.graph.node) == len(model.graph.node) - 1  # the input model is untouched


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="full TensorRT is installed here")
def test_full_tensorrt_absent_is_a_clear_error(deform_model):
    with pytest.raises(engines.EngineBuildError, match="full TensorRT is not installed"):
        engines.import_trt()


# ---------------------------------------------------------------- through the exporter


def _checkpoint(tmp_path: Path) -> Path:
    from embedtalk_sdk.runtime.audio.mel import MelSpec
    from embedtalk_sdk.data.dataset import TalkingDataset
    from embedtalk_sdk.synthetic.synth import synthesize_dataset
    from embedtalk_sdk.model.checkpoint import Checkpoint
    from embedtalk_sdk.model.gaussians import GaussianModel

    data = synthesize_dataset(tmp_path / "data", seconds=2, size=64)
    ds = TalkingDataset(data, "train")
    rng = np.random.default_rng(0)
    pts = np.concatenate([rng.normal(scale=0.05, size=(300, 3)), rng.uniform(size=(300, 3))], 1).astype(np.float32)
    baked = random_baked()
    meta = {
        "data_dir": str(data), "width": ds.width, "height": ds.height, "fps": ds.fps, "K": np.asarray(ds.K).tolist(),
        "audio": {"encoder": "mel", **MelSpec().to_dict(), "window": CFG.window, "feature_dim": CFG.feature_dim},
        "aus": {"neutral": [0.5] * 6, "blink_peak": 3.0, "blink_rate_hz": 0.3},
    }  # fmt: skip
    gaussians = GaussianModel.from_points(pts, embed_dim=CFG.embed_dim)
    return Checkpoint(gaussians, baked.net, meta).save(tmp_path / "run" / "ckpt.pt")


@needs_rtx
def test_exported_bundle_lists_its_engines(tmp_path):
    from embedtalk_sdk.export.exporter import export_bundle
    from embedtalk_sdk.runtime.bundle import Bundle

    ckpt = _checkpoint(tmp_path)
    out = export_bundle(ckpt, tmp_path / "a.etk", track_frames=5, log=lambda m: None,
                        engine="tensorrt-rtx", targets=["sm86", "sm89"])  # fmt: skip
    bundle = Bundle.open(out)  # verifies every listed file's sha256, the engines included
    listed = bundle.manifest["engines"]
    assert [e["compute_capability"] for e in listed] == ["sm86", "sm89"]
    deform = bundle.manifest["onnx"]["deform"]
    for e in listed:
        assert e["file"] in bundle.manifest["files"] and e["bytes"] == bundle.manifest["files"][e["file"]]["bytes"]
        assert e["inputs"] == deform["inputs"] and e["outputs"] == deform["outputs"]
        assert len(bundle.bytes_of(e["file"])) == e["bytes"]
    # Without --engine nothing is built and the list stays empty.
    plain = export_bundle(ckpt, tmp_path / "b.etk", track_frames=5, log=lambda m: None)
    assert Bundle.open(plain).manifest["engines"] == []


@needs_rtx
def test_plugin_classes_subclass_tensorrts_ipluginv3():
    """The IPluginV3 plugin and creator, instantiated against TensorRT-RTX's plugin interfaces
    (the same Python API as full TensorRT's): fields round-trip, output type is uint8."""
    from embedtalk_sdk.plugins.cuda.trt_plugin import FIELDS, plugin_classes

    trt = engines.import_rtx()
    plugin_cls, creator_cls = plugin_classes(trt)
    creator = creator_cls()
    assert (creator.name, creator.plugin_version) == ("EmbedTalkRasterizer", "1")
    fc = trt.PluginFieldCollection(
        [trt.PluginField(k, np.array([v], np.float32), trt.PluginFieldType.FLOAT32) for k, v in zip(FIELDS, [60, 61, 32, 24])]
    )
    plugin = creator.create_plugin("rasterizer", fc, trt.TensorRTPhase.BUILD)
    assert plugin.fields == {"fx": 60.0, "fy": 61.0, "cx": 32.0, "cy": 24.0} == plugin.clone().fields
    assert plugin.get_output_data_types([trt.DataType.FLOAT] * 9) == [trt.DataType.UINT8]
    assert [f.name for f in plugin.get_fields_to_serialize()] == list(FIELDS)


@needs_rtx
def test_plugin_fields_survive_serialisation():
    # Before: get_fields_to_serialize built PluginFields over temporary arrays; once that memory was
    # reused, fx read back as junk and an engine would serialise wrong intrinsics with no error.
    from embedtalk_sdk.plugins.cuda.trt_plugin import plugin_classes

    trt = engines.import_rtx()
    plugin_cls, creator_cls = plugin_classes(trt)
    fields = {"fx": 211.5, "fy": 212.25, "cx": 128.0, "cy": 127.5}
    plugin = plugin_cls(fields)  # alive, as TensorRT keeps it while it serialises
    collection = plugin.get_fields_to_serialize()
    junk = [np.full(1000, 7.0, np.float32) for _ in range(2000)]  # reuse freed memory
    back = creator_cls().create_plugin("x", collection, trt.TensorRTPhase.RUNTIME)
    assert back.fields == fields and len(junk) == 2000


@needs_rtx
def test_plugin_workspace_has_a_pair_count_per_frame():
    # Before: one pair count for the whole batch (only the last frame's overflow was seen) and a
    # stream synchronisation inside enqueue.
    from types import SimpleNamespace

    from embedtalk_sdk.plugins.cuda.rasterizer import plan
    from embedtalk_sdk.plugins.cuda.trt_plugin import max_pairs_for, plugin_classes

    trt = engines.import_rtx()
    plugin = plugin_classes(trt)[0]({"fx": 1.0, "fy": 1.0, "cx": 0.0, "cy": 0.0})
    n, h, w = 5000, 64, 48

    def desc(*dims):
        return SimpleNamespace(max=dims)

    def workspace(batch: int) -> int:
        inputs = [desc(batch, n, 3), desc(batch, n), desc(batch, 4, 4), desc(batch, h, w, 3), desc(n, 3)]
        return plugin.get_workspace_size(inputs, [])

    raster = plan(n, w, h, max_pairs_for(n)).total
    assert workspace(1) >= raster + 4 and workspace(200) >= raster + 4 * 200 > workspace(1)
    source = Path(engines.__file__).with_name("trt_plugin.py").read_text()
    enqueue = source[source.index("def enqueue"):source.index("def attach_to_context")]
    assert "Synchronize" not in enqueue and "synchronize" not in enqueue


@needs_rtx
def test_tensorrt_rtx_runtime_api_we_call_exists():
    """The runtime-cache and compute-capability API the tensorrt-rtx backend uses, against the
    installed bindings (the backend itself needs a GPU)."""
    from embedtalk_sdk.runtime.backends.tensorrt_rtx import supported_compute_capabilities

    trt = engines.import_rtx()
    for name in ("create_runtime_config", "create_execution_context", "get_tensor_profile_shape"):
        assert hasattr(trt.ICudaEngine, name), name
    for name in ("create_runtime_cache", "set_runtime_cache"):
        assert hasattr(trt.IRuntimeConfig, name), name
    for name in ("serialize", "deserialize"):
        assert hasattr(trt.IRuntimeCache, name), name
    supported = supported_compute_capabilities(trt)
    assert {"sm86", "sm89", "sm120"} <= set(supported) and "sm90" not in supported  # no Hopper
