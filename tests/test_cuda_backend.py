"""The `cuda` backend (runtime/backends/cuda.py): our deform kernel + rasteriser, no TensorRT.

On a GPU (marked `gpu`): frames against onnxruntime's on a bundle with the exporter's graph, and
`auto` on a GPU that TensorRT-RTX does not support. Without one, the same kernel runs under the
CPU emulation (tests/test_cuda_emulated.py).
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from test_cuda import GPU, assert_frames_match_onnxruntime, rtx_runs_here  # noqa: E402

gpu = pytest.mark.gpu
needs_gpu = pytest.mark.skipif(not GPU, reason="no CUDA GPU (or cuda-python) on this machine")


def exported_graph_bundle(out: Path, n: int = 2000, hidden: int = 64, trunk_layers: int = 1, seed: int = 0) -> Path:
    """make_test_bundle's bundle with export/onnx_graph.py's deform graph (random weights) and the
    manifest's network block the exporter writes: what the cuda and torch backends read."""
    import torch

    from test_model import random_net
    from test_runtime import WINDOW, make_test_bundle

    from embedtalk_sdk.export.onnx_graph import build_deform_onnx
    from embedtalk_sdk.model.deform import BakedDeform, DeformConfig

    cfg = DeformConfig(window=WINDOW, feature_dim=32, hidden=hidden, trunk_layers=trunk_layers)
    net = random_net(cfg, seed)
    with torch.no_grad():
        net.mu_head.weight.mul_(0.05)  # offsets of a few mm, as a trained head moves
        table = net.embedding_table(torch.randn(n, cfg.embed_dim))
    model = build_deform_onnx(BakedDeform(net.eval(), table).eval())
    return make_test_bundle(out, n=n, edit_model=lambda m: m.CopyFrom(model), seed=seed, network=cfg.to_dict())


def speech(seconds: float = 1.0) -> np.ndarray:
    from embedtalk_sdk.runtime.audio.speech import synthesize_speech

    return synthesize_speech(seconds, seed=3).samples


@gpu
@needs_gpu
@pytest.mark.parametrize("hidden", [64, 48])  # a specialised kernel and the generic one
def test_cuda_backend_frames_equal_onnxruntime_frames(tmp_path, hidden):
    assert_frames_match_onnxruntime(exported_graph_bundle(tmp_path / "a.etk", hidden=hidden), "cuda", speech())


@gpu
@needs_gpu
def test_auto_on_a_gpu_tensorrt_rtx_does_not_support_takes_cuda(tmp_path, caplog):
    ok, why = rtx_runs_here()
    if ok or "not installed" in why:
        pytest.skip("this GPU is supported by TensorRT-RTX (or it is not installed): nothing to fall back from")
    from embedtalk_sdk.runtime.avatar import Avatar

    bundle = exported_graph_bundle(tmp_path / "a.etk", n=500)
    with caplog.at_level(logging.INFO, logger="embedtalk_sdk.runtime"):
        avatar = Avatar.load(bundle)
    assert avatar.backend_name == "cuda"
    assert "does not support" in caplog.text  # the fallback says why
