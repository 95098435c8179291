"""The baked deformation network in numpy, read from a bundle's deform.onnx by the names of its
schema (runtime/deform_schema.py), which the manifest's `network` block gives.

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
from embedtalk_sdk.runtime.deform_schema import (
    BOUND,
    BOUNDED_TANH,
    CONV_KERNEL,
    CONV_PAD,
    CONV_STRIDE,
    LEAKY_RELU,
    LEAKY_SLOPE,
    LINEAR,
    RELU,
    TABLE,
    DeformConfig,
    DeformSchema,
    Layer,
    deform_schema,
)
from embedtalk_sdk.runtime.onnx_weights import bundle_initializers

LEARNED_SUFFIXES = (".weight", ".weight_t", ".bias")  # initializers of layers (the rest are graph constants)


def encoding_freqs(n_freqs: int) -> np.ndarray:
    """gamma's frequencies 2^k pi, k < n_freqs, float32 (the ONNX graph holds these too)."""
    return ((2.0 ** np.arange(n_freqs)) * np.pi).astype(np.float32)


def positional_encoding(x: np.ndarray, n_freqs: int) -> np.ndarray:
    """gamma(x) [B, D] -> [B, D * (1 + 2F)], laid out [x, sin f0 x, cos f0 x, sin f1 x, ...]."""
    if n_freqs == 0:
        return x
    scaled = x[:, None, :] * encoding_freqs(n_freqs).reshape(-1, 1)  # [B, F, D]
    sincos = np.stack([np.sin(scaled), np.cos(scaled)], axis=2)  # [B, F, 2, D]
    return np.concatenate([x, sincos.reshape(x.shape[0], -1)], axis=1).astype(np.float32)


def activate(x: np.ndarray, activation: str, bound: np.float32 = np.float32(1)) -> np.ndarray:
    """A schema activation in float32; `bound` is BOUNDED_TANH's."""
    if activation == RELU:
        return np.maximum(x, 0)
    if activation == LEAKY_RELU:
        return np.where(x >= 0, x, np.float32(LEAKY_SLOPE) * x).astype(np.float32)
    if activation == BOUNDED_TANH:
        return bound * np.tanh(x / bound)
    if activation == LINEAR:
        return x
    raise ValueError(f"unknown activation {activation!r}")


def _conv1d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """The schema's Conv1d (CONV_KERNEL, CONV_STRIDE, CONV_PAD): x [B, C, W] -> [B, O, W']."""
    b, c, w = x.shape
    padded = np.zeros((b, c, w + 2 * CONV_PAD), np.float32)
    padded[:, :, CONV_PAD:CONV_PAD + w] = x
    out_w = (w + 2 * CONV_PAD - CONV_KERNEL) // CONV_STRIDE + 1
    taps = np.stack([padded[:, :, k:k + CONV_STRIDE * out_w:CONV_STRIDE] for k in range(CONV_KERNEL)], axis=2)
    return (np.einsum("bckt,ock->bot", taps, weight, optimize=True) + bias[None, :, None]).astype(np.float32)


@dataclass
class BakedNetwork:
    """The weights of deform.onnx (float32) by their schema names, and that schema."""

    weights: dict[str, np.ndarray]
    schema: DeformSchema
    bound: float

    @classmethod
    def from_onnx(cls, data: bytes, where: str, config: DeformConfig) -> "BakedNetwork":
        """Read the weights of the network `config` out of deform.onnx bytes; BundleError naming
        `where` if one is missing, has another shape, or the graph holds layers `config` has not."""
        weights = {k: np.ascontiguousarray(v, np.float32) for k, v in bundle_initializers(data, where).items()}
        schema = deform_schema(config)
        need = {p.name: p.shape for p in schema.baked_params}
        missing = [k for k in (*need, TABLE, BOUND) if k not in weights]
        if missing:
            raise BundleError(f"{where} lacks the weights {missing[:4]}{' ...' if len(missing) > 4 else ''} "
                              "(not a deform graph of export/onnx_graph.py; export the avatar again)")  # fmt: skip
        table = weights[TABLE].shape
        wrong = [f"{k} is {weights[k].shape}, expected {shape}"
                 for k, shape in need.items() if weights[k].shape != shape]  # fmt: skip
        wrong += [f"{TABLE} is {table}, expected (N, {schema.hidden})"] if table[1:] != (schema.hidden,) else []
        wrong += [f"{k} is not in the network" for k in weights if k.endswith(LEARNED_SUFFIXES) and k not in need]
        if wrong:
            raise BundleError(f"{where} does not fit the manifest's network: {'; '.join(wrong[:4])}")
        return cls(weights, schema, float(weights[BOUND].reshape(-1)[0]))

    @property
    def table(self) -> np.ndarray:
        """W_z gamma(z) per Gaussian, [N, hidden] float32 (fp16 bundles widened exactly)."""
        return self.weights[TABLE]

    @property
    def hidden(self) -> int:
        return self.schema.hidden

    @property
    def n_trunk(self) -> int:
        return len(self.schema.trunk)

    @property
    def n_convs(self) -> int:
        return len(self.schema.audio_convs)

    def dense(self, x: np.ndarray, layer: Layer) -> np.ndarray:
        """activation(x W + b) of a schema layer (dense, not conv)."""
        y = x @ self.weights[layer.weight.name]
        if layer.bias_param is not None:
            y = y + self.weights[layer.bias_param.name]
        return activate(y, layer.activation, np.float32(self.bound))

    def frame_vector(self, audio_window: np.ndarray, aus: np.ndarray) -> np.ndarray:
        """audio_window [B, W, F], aus [B, 6] -> the per-frame vector [B, hidden], float32."""
        s, w = self.schema, self.weights
        mean, std = s.feature_stats
        x = (np.asarray(audio_window, np.float32) - w[mean.name]) / w[std.name]
        x = np.ascontiguousarray(x.transpose(0, 2, 1))
        for layer in s.audio_convs:
            x = activate(_conv1d(x, w[layer.weight.name], w[layer.bias_param.name]), layer.activation)
        x = x.reshape(x.shape[0], -1)
        for layer in s.audio_dense:
            x = self.dense(x, layer)
        pe = positional_encoding(np.asarray(aus, np.float32), s.config.au_freqs)
        frame = self.dense(x, s.audio_proj) + self.dense(pe, s.au_proj)
        return np.ascontiguousarray(frame, np.float32)

    def decode(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """frame [B, hidden] -> (delta_means [B, N, 3], delta_opacity [B, N]), float32."""
        s = self.schema
        h = activate(self.table[None] + frame[:, None], s.first_activation)
        for layer in s.trunk:
            h = self.dense(h, layer)
        mu = self.dense(h, s.mu_head)
        alpha = self.dense(h, s.alpha_head)[..., 0]
        return mu.astype(np.float32), alpha.astype(np.float32)

    def __call__(self, audio_window: np.ndarray, aus: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.decode(self.frame_vector(audio_window, aus))


def decode_fits(schema: DeformSchema) -> str | None:
    """None if the compiled decodes (the CUDA kernel `etk_deform_*`, plugins/cpu/deform.cpp) compute
    this network's decode half, else what they do not do. They implement relu(table + frame) ->
    square ReLU trunk layers -> a bounded-tanh head of 3 and a linear head of 1, with any width and
    depth (arguments)."""
    h = schema.hidden
    want = [("first layer", schema.first_activation, RELU)]
    want += [(layer.name, (layer.inputs, layer.outputs, layer.activation, layer.bias), (h, h, RELU, True))
             for layer in schema.trunk]  # fmt: skip
    want += [(head.name, (head.inputs, head.outputs, head.activation, head.bias), (h, n, act, True))
             for head, n, act in ((schema.mu_head, 3, BOUNDED_TANH), (schema.alpha_head, 1, LINEAR))]  # fmt: skip
    bad = [f"{name} is {got}, the kernel's {expected}" for name, got, expected in want if got != expected]
    return "; ".join(bad) or None


def decode_weights(net: BakedNetwork) -> dict[str, np.ndarray]:
    """The decode half's weights as the compiled decodes take them (float32, [in, out] row-major;
    trunk layers stacked), by argument name; ValueError if they do not compute this network."""
    s, w = net.schema, net.weights
    why = decode_fits(s)
    if why:
        raise ValueError(f"the compiled decode does not compute this network: {why}")
    empty = np.zeros(1, np.float32)  # no trunk layers: a valid pointer the kernel never reads
    host = {
        "table": net.table,
        "trunk_w": np.stack([w[layer.weight.name] for layer in s.trunk]) if s.trunk else empty,
        "trunk_b": np.stack([w[layer.bias_param.name] for layer in s.trunk]) if s.trunk else empty,
        "mu_w": w[s.mu_head.weight.name], "mu_b": w[s.mu_head.bias_param.name],
        "alpha_w": w[s.alpha_head.weight.name].reshape(s.hidden), "alpha_b": w[s.alpha_head.bias_param.name],
    }  # fmt: skip
    return {k: np.ascontiguousarray(v, np.float32) for k, v in host.items()}
