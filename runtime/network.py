"""The baked deformation network in numpy, read from a bundle's deform.onnx by initializer name.

Two halves, as the `cuda` backend splits them (runtime/backends/cuda.py):
- `frame_vector(audio_window, aus)`: per frame, W_a AudioNet(window) + W_e gamma(aus) + b
  -> [B, hidden]. Small (a few hundred kFLOP per frame), so it runs on the host;
- `decode(frame)`: per frame and Gaussian, relu(table row + frame) -> trunk -> heads ->
  (bound * tanh(mu / bound), alpha). Large (N x hidden^2 per frame): the CUDA kernel
  `etk_deform_*` (plugins/cuda/deform_kernels.cuh) does it on a GPU; `decode` here is its
  reference in the tests.
Exactly the graph of export/onnx_graph.py, in float32.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from embedtalk_sdk.runtime.bundle import BundleError
from embedtalk_sdk.runtime.onnx_weights import bundle_initializers

LEAKY_SLOPE = 0.02  # AudioNet's LeakyReLU (embedtalk_sdk/model/deform.py); the ONNX graph uses it too
TABLE = "gaussian_table"


def positional_encoding(x: np.ndarray, freqs: np.ndarray) -> np.ndarray:
    """gamma(x) [B, D] -> [B, D * (1 + 2F)], laid out [x, sin f0 x, cos f0 x, sin f1 x, ...]."""
    if freqs.size == 0:
        return x
    scaled = x[:, None, :] * freqs.reshape(-1, 1)  # [B, F, D]
    sincos = np.stack([np.sin(scaled), np.cos(scaled)], axis=2)  # [B, F, 2, D]
    return np.concatenate([x, sincos.reshape(x.shape[0], -1)], axis=1).astype(np.float32)


def _leaky(x: np.ndarray) -> np.ndarray:
    return np.where(x >= 0, x, np.float32(LEAKY_SLOPE) * x).astype(np.float32)


def _conv1d_stride2(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Conv1d, kernel 3, stride 2, padding 1: x [B, C, W] -> [B, O, (W + 1) // 2]."""
    b, c, w = x.shape
    padded = np.zeros((b, c, w + 2), np.float32)
    padded[:, :, 1:-1] = x
    out_w = (w + 2 - 3) // 2 + 1
    taps = np.stack([padded[:, :, k:k + 2 * out_w:2] for k in range(3)], axis=2)  # [B, C, 3, out_w]
    return (np.einsum("bckt,ock->bot", taps, weight, optimize=True) + bias[None, :, None]).astype(np.float32)


@dataclass
class BakedNetwork:
    """The weights of deform.onnx (float32), by their export/onnx_graph.py names."""

    weights: dict[str, np.ndarray]
    n_convs: int
    n_trunk: int
    hidden: int
    bound: float

    @classmethod
    def from_onnx(cls, data: bytes, where: str) -> "BakedNetwork":
        """Read the weights out of deform.onnx bytes; BundleError naming `where` if any is missing."""
        weights = {k: np.ascontiguousarray(v, np.float32) for k, v in bundle_initializers(data, where).items()}
        n_convs = sum(1 for k in weights if k.startswith("audio.conv") and k.endswith(".weight"))
        n_trunk = sum(1 for k in weights if k.startswith("trunk") and k.endswith(".weight_t"))
        need = ["audio.feature_mean", "audio.feature_std", "audio.fc1.weight_t", "audio.fc1.bias",
                "audio.fc2.weight_t", "audio.fc2.bias", "audio_proj.weight_t", "audio_proj.bias",
                "au_proj.weight_t", TABLE, "mu_head.weight_t", "mu_head.bias", "alpha_head.weight_t",
                "alpha_head.bias", "mu.bound",
                *[f"audio.conv{i}.{p}" for i in range(n_convs) for p in ("weight", "bias")],
                *[f"trunk{i}.{p}" for i in range(n_trunk) for p in ("weight_t", "bias")]]  # fmt: skip
        missing = [k for k in need if k not in weights]
        if missing:
            raise BundleError(f"{where} lacks the weights {missing[:4]}{' ...' if len(missing) > 4 else ''} "
                              "(not a deform graph of export/onnx_graph.py; export the avatar again)")  # fmt: skip
        hidden = int(weights[TABLE].shape[1])
        if weights["mu_head.weight_t"].shape != (hidden, 3) or weights["alpha_head.weight_t"].shape != (hidden, 1):
            raise BundleError(f"{where}: head shapes {weights['mu_head.weight_t'].shape}, "
                              f"{weights['alpha_head.weight_t'].shape} do not fit hidden size {hidden}")  # fmt: skip
        for i in range(n_trunk):
            if weights[f"trunk{i}.weight_t"].shape != (hidden, hidden):
                raise BundleError(f"{where}: trunk{i} is {weights[f'trunk{i}.weight_t'].shape}, expected ({hidden}, {hidden})")
        return cls(weights, n_convs, n_trunk, hidden, float(weights["mu.bound"].reshape(-1)[0]))

    @property
    def table(self) -> np.ndarray:
        """W_z gamma(z) per Gaussian, [N, hidden] float32 (fp16 bundles widened exactly)."""
        return self.weights[TABLE]

    def frame_vector(self, audio_window: np.ndarray, aus: np.ndarray) -> np.ndarray:
        """audio_window [B, W, F], aus [B, 6] -> the per-frame vector [B, hidden], float32."""
        w = self.weights
        x = (np.asarray(audio_window, np.float32) - w["audio.feature_mean"]) / w["audio.feature_std"]
        x = np.ascontiguousarray(x.transpose(0, 2, 1))
        for i in range(self.n_convs):
            x = _leaky(_conv1d_stride2(x, w[f"audio.conv{i}.weight"], w[f"audio.conv{i}.bias"]))
        x = x.reshape(x.shape[0], -1)
        x = _leaky(x @ w["audio.fc1.weight_t"] + w["audio.fc1.bias"])
        code = x @ w["audio.fc2.weight_t"] + w["audio.fc2.bias"]
        freqs = w.get("au_pe.freqs", np.zeros(0, np.float32))
        pe = positional_encoding(np.asarray(aus, np.float32), freqs)
        frame = code @ w["audio_proj.weight_t"] + w["audio_proj.bias"] + pe @ w["au_proj.weight_t"]
        return np.ascontiguousarray(frame, np.float32)

    def decode(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """frame [B, hidden] -> (delta_means [B, N, 3], delta_opacity [B, N]), float32."""
        w = self.weights
        h = np.maximum(self.table[None] + frame[:, None], 0)
        for i in range(self.n_trunk):
            h = np.maximum(h @ w[f"trunk{i}.weight_t"] + w[f"trunk{i}.bias"], 0)
        bound = np.float32(self.bound)
        mu = bound * np.tanh((h @ w["mu_head.weight_t"] + w["mu_head.bias"]) / bound)
        alpha = (h @ w["alpha_head.weight_t"] + w["alpha_head.bias"])[..., 0]
        return mu.astype(np.float32), alpha.astype(np.float32)

    def __call__(self, audio_window: np.ndarray, aus: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.decode(self.frame_vector(audio_window, aus))
