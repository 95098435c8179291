"""The compiled per-Gaussian decode (plugins/cpu/deform.cpp through plugins/cpu/decode.py) against the
numpy decode of runtime/network.py, its AVX-512 and scalar paths; and the onnxruntime backend with
it against the same backend running deform.onnx whole in onnxruntime."""
from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from embedtalk_sdk.model.deform import DeformConfig
from embedtalk_sdk.plugins.cpu import decode as compiled
from embedtalk_sdk.runtime.avatar import Avatar
from embedtalk_sdk.runtime.backends.base import BackendError
from embedtalk_sdk.runtime.deform_schema import LEAKY_RELU
from embedtalk_sdk.runtime.network import BakedNetwork
from test_network import baked_model, inputs
from test_runtime import make_test_bundle

needs_built = pytest.mark.skipif(compiled.deform_ext is None, reason="the install did not build plugins/cpu/deform.cpp")
needs_avx512 = pytest.mark.skipif(compiled.deform_ext is None or compiled.deform_ext.simd() != "avx512",
                                  reason="the compiled decode runs where the CPU has AVX-512")
CONFIGS = [DeformConfig(trunk_layers=2, hidden=32), DeformConfig(trunk_layers=1, hidden=64),
           DeformConfig(trunk_layers=0, hidden=16), DeformConfig(trunk_layers=1, hidden=160)]


def network(cfg: DeformConfig, n: int = 301) -> BakedNetwork:
    # n: not a multiple of the 4-Gaussian blocks nor of the 256-Gaussian work items
    return BakedNetwork.from_onnx(baked_model(n=n, cfg=cfg).SerializeToString(), "deform.onnx", cfg)


@needs_built
def test_the_install_built_the_compiled_decode_from_this_source():
    source = Path(__file__).resolve().parents[1] / "plugins" / "cpu" / "deform.cpp"
    assert compiled.deform_ext.source_sha256() == hashlib.sha256(source.read_bytes()).hexdigest(), (
        "the compiled decode is stale (built from another deform.cpp): rebuild it with pip install -e .")


def decode64(net: BakedNetwork, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The decode in float64: what both float32 decodes approximate."""
    w, s = {k: v.astype(np.float64) for k, v in net.weights.items()}, net.schema
    h = np.maximum(net.table[None].astype(np.float64) + frames[:, None].astype(np.float64), 0)
    for layer in s.trunk:
        h = np.maximum(h @ w[layer.weight.name] + w[layer.bias_param.name], 0)
    mu = h @ w[s.mu_head.weight.name] + w[s.mu_head.bias_param.name]
    alpha = (h @ w[s.alpha_head.weight.name] + w[s.alpha_head.bias_param.name])[..., 0]
    return net.bound * np.tanh(mu / net.bound), alpha


def assert_as_close_as_numpys(got: tuple, net: BakedNetwork, frames: np.ndarray) -> None:
    # float32 sums in another order (and fused): against float64, no worse than numpy's own float32
    # decode (which these random networks' large pre-activations put at up to ~1e-5) plus 1e-6
    exact, numpy32 = decode64(net, frames), net.decode(frames)
    for name, g, e, n in zip(("delta_means", "delta_opacity"), got, exact, numpy32):
        assert np.isfinite(g).all(), name
        assert np.abs(g - e).max() <= 2 * np.abs(n - e).max() + 1e-6, (name, np.abs(g - e).max(), np.abs(n - e).max())


@needs_avx512
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"h{c.hidden}x{c.trunk_layers}")
def test_compiled_decode_is_as_close_as_numpys(cfg):
    net = network(cfg)
    frames = net.frame_vector(*inputs(5, cfg))
    want_means, want_opacity = net.decode(frames)
    means, opacity = np.full(want_means.shape, np.nan, np.float32), np.full(want_opacity.shape, np.nan, np.float32)
    compiled.CompiledDecode(net)(frames, means, opacity)
    assert_as_close_as_numpys((means, opacity), net, frames)
    assert np.abs(want_means).max() > 1e-3 and np.abs(want_opacity).max() > 1e-2  # not a trivially zero network


@needs_built
def test_the_scalar_path_is_as_close_as_numpys(tmp_path):
    # CPUs without AVX-512 never get the compiled decode from the backend, but the path is the reference
    cfg = CONFIGS[0]
    net = network(cfg)
    frames = net.frame_vector(*inputs(3, cfg))
    weights = compiled.decode_weights(net)
    np.savez(tmp_path / "net.npz", frames=frames, mu_wt=np.ascontiguousarray(weights["mu_w"].T), **weights)
    code = ("import sys, numpy as np\n"
            "from embedtalk_sdk.plugins.cpu import deform_ext\n"
            "assert deform_ext.simd() == 'scalar', deform_ext.simd()\n"
            "z = np.load(sys.argv[1]); f = z['frames']; n, w = z['table'].shape\n"
            "m = np.empty((f.shape[0], n, 3), np.float32); o = np.empty((f.shape[0], n), np.float32)\n"
            f"deform_ext.decode(n, f.shape[0], w, {net.n_trunk}, z['table'], f, z['trunk_w'], z['trunk_b'], z['mu_wt'],"
            f" z['mu_b'], z['alpha_w'], float(z['alpha_b'].reshape(-1)[0]), {net.bound!r}, m, o)\n"
            "np.save(sys.argv[2] + '/m.npy', m); np.save(sys.argv[2] + '/o.npy', o)\n")
    env = {**os.environ, "EMBEDTALK_CPU_SIMD": "0"}
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "net.npz"), str(tmp_path)], env=env, check=True)
    assert_as_close_as_numpys((np.load(tmp_path / "m.npy"), np.load(tmp_path / "o.npy")), net, frames)


@needs_built
def test_what_the_compiled_decode_does_not_compute_is_refused():
    assert "multiple of 16" in compiled.unavailable(network(DeformConfig(trunk_layers=1, hidden=24)))
    net = network(CONFIGS[0])
    leaky = dataclasses.replace(net, schema=dataclasses.replace(net.schema, first_activation=LEAKY_RELU))
    if compiled.deform_ext.simd() == "avx512":
        assert compiled.unavailable(net) is None
        assert "first layer" in compiled.unavailable(leaky)
    with pytest.raises(ValueError, match="cannot run this network"):
        compiled.CompiledDecode(leaky)


@needs_built
def test_decode_checks_its_buffers():
    net = network(CONFIGS[0])
    frames = net.frame_vector(*inputs(2, CONFIGS[0]))
    w = compiled.decode_weights(net)
    weights = [w["table"], frames, w["trunk_w"], w["trunk_b"], np.ascontiguousarray(w["mu_w"].T), w["mu_b"],
               w["alpha_w"], 0.0, 1.0]
    n = net.table.shape[0]
    with pytest.raises(ValueError, match="delta_means"):  # a frame's rows short
        compiled.deform_ext.decode(n, 2, 32, 2, *weights, np.zeros((2, n - 1, 3), np.float32), np.zeros((2, n), np.float32))
    with pytest.raises(ValueError, match="delta_opacity"):  # float64
        compiled.deform_ext.decode(n, 2, 32, 2, *weights, np.zeros((2, n, 3), np.float32), np.zeros((2, n)))
    with pytest.raises(ValueError, match="width"):
        compiled.deform_ext.decode(n, 2, 300, 2, *weights, np.zeros((2, n, 3), np.float32), np.zeros((2, n), np.float32))


@needs_avx512
def test_the_backends_two_decodes_give_the_same_avatar(trained_avatar):
    bundle = trained_avatar["bundle"]
    fast = Avatar.load(bundle, backend="onnxruntime")
    whole = Avatar.load(bundle, backend="onnxruntime", backend_options={"decode": "onnxruntime"})
    assert fast.backend.decode == "compiled" and whole.backend.decode == "onnxruntime"
    rng = np.random.default_rng(3)
    window = rng.standard_normal((6, *fast.backend.io.expected()["audio_window"][1:])).astype(np.float32)
    aus = rng.uniform(0, 2, (6, 6)).astype(np.float32)
    got, want = fast.backend.deform(window, aus), whole.backend.deform(window, aus)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=0, atol=2e-6 * max(1.0, float(np.abs(w).max())))
    audio = rng.uniform(-0.3, 0.3, 16000).astype(np.float32)
    a, b = fast.speak(audio, sample_rate=16000), whole.speak(audio, sample_rate=16000)
    assert np.abs(a.astype(np.int16) - b).max() <= 1 and (a != b).mean() < 1e-3


@needs_built
def test_the_decode_option_is_checked(tmp_path):
    bundle = make_test_bundle(tmp_path / "hand.etk")  # a hand-made graph, not export's
    with pytest.raises(BackendError, match="decode must be one of"):
        Avatar.load(bundle, backend="onnxruntime", backend_options={"decode": "fast"})
    assert Avatar.load(bundle, backend="onnxruntime").backend.decode == "onnxruntime"  # auto: onnxruntime runs it
    with pytest.raises(Exception, match="hand.etk"):
        Avatar.load(bundle, backend="onnxruntime", backend_options={"decode": "compiled"})


@needs_avx512
def test_a_frames_deltas_do_not_depend_on_its_batch(trained_avatar):
    # speak and stream batch frames differently and must give the same frames (numpy's BLAS rounds a
    # batch of 5 otherwise than 5 batches of 1)
    backend = Avatar.load(trained_avatar["bundle"], backend="onnxruntime").backend
    assert backend.decode == "compiled"
    rng = np.random.default_rng(5)
    window = rng.standard_normal((5, *backend.io.expected()["audio_window"][1:])).astype(np.float32)
    aus = rng.uniform(0, 2, (5, 6)).astype(np.float32)
    together = [x.copy() for x in backend.deform(window, aus)]
    for i in range(5):
        alone = backend.deform(window[i:i + 1], aus[i:i + 1])
        assert all(np.array_equal(a[0], t[i]) for a, t in zip(alone, together)), f"frame {i}"
