"""The per-Gaussian half of the baked network compiled for CPU playback (plugins/cpu/deform.cpp).

The network runs in two halves (runtime/network.py): the per-frame vector (audio net + AU projection,
a few hundred kFLOP per frame, numpy) and the decode (N x hidden² per frame). onnxruntime runs the
decode as whole-tensor ops over [frames, N, hidden], each streaming tens of MB; the compiled decode
keeps 4 Gaussians at a time in registers through every layer (AVX-512). Where the build has no
`deform_ext`, the CPU lacks AVX-512 or the network is not the one it computes (`decode_fits`),
`unavailable` says why and the onnxruntime backend runs deform.onnx whole instead.
"""
from __future__ import annotations

import numpy as np

from embedtalk_sdk.runtime.network import BakedNetwork, decode_fits, decode_weights

try:
    from embedtalk_sdk.plugins.cpu import deform_ext
except ImportError:  # no C++ compiler at install time (setup.py: the extension is optional)
    deform_ext = None


def unavailable(net: BakedNetwork) -> str | None:
    """None if `CompiledDecode` runs this network here, else why not."""
    if deform_ext is None:
        return "the install did not build plugins/cpu/deform.cpp (no C++ compiler)"
    if deform_ext.simd() != "avx512":
        return "this CPU has no AVX-512 (the compiled decode's only fast path)"
    if net.hidden % 16:
        return f"hidden width {net.hidden} is not a multiple of 16"
    return decode_fits(net.schema)


class CompiledDecode:
    """frame vectors [B, hidden] -> delta_means [B, N, 3], delta_opacity [B, N], written into the
    caller's float32 buffers; the numpy `BakedNetwork.decode` within ~1e-6 (tests/test_cpu_decode.py)."""

    def __init__(self, net: BakedNetwork) -> None:
        why = unavailable(net)
        if why:
            raise ValueError(f"the compiled decode cannot run this network: {why}")
        w = decode_weights(net)
        self.n, self.hidden, self.layers = int(w["table"].shape[0]), net.hidden, net.n_trunk
        self.table, self.trunk_w, self.trunk_b = w["table"], w["trunk_w"], w["trunk_b"]
        self.mu_wt = np.ascontiguousarray(w["mu_w"].T)  # [3, hidden]: each head's column contiguous
        self.mu_b, self.alpha_w = w["mu_b"], w["alpha_w"]
        self.alpha_b, self.bound = float(w["alpha_b"].reshape(-1)[0]), float(net.bound)

    def __call__(self, frame_vectors: np.ndarray, delta_means: np.ndarray, delta_opacity: np.ndarray) -> None:
        frames = np.ascontiguousarray(frame_vectors, dtype=np.float32)
        deform_ext.decode(self.n, frames.shape[0], self.hidden, self.layers, self.table, frames, self.trunk_w,
                          self.trunk_b, self.mu_wt, self.mu_b, self.alpha_w, self.alpha_b, self.bound,
                          delta_means, delta_opacity)
