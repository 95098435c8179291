"""The baked deformation network as an ONNX graph, built from its weights.

Built node by node (rather than traced) so that initializer names are stable — the torch backend
and TensorRT tooling find weights by name — and the graph holds exactly the ops TensorRT-RTX and
onnxruntime need. Inputs: audio_window [B, W, F], aus [B, 6]. Outputs: delta_means [B, N, 3],
delta_opacity [B, N]. The per-Gaussian table W_z gamma(z) is one [N, hidden] initializer, stored in
fp16 by default (half the bundle's largest part; onnxruntime folds the Cast to fp32 once, when the
session is made: runtime/design.md "Table precision").
"""
from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from embedtalk_sdk.model.deform import BakedDeform
from embedtalk_sdk.runtime.aus import N_AUS
from embedtalk_sdk.runtime.network import LEAKY_SLOPE

OPSET = 18
INPUTS = ("audio_window", "aus")
OUTPUTS = ("delta_means", "delta_opacity")
TABLE = "gaussian_table"
TABLE_DTYPES = ("float16", "float32")


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float32)


class _Graph:
    """Tiny builder: named initializers and nodes with readable output names."""

    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], out: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def linear(self, x: str, layer: torch.nn.Linear, name: str) -> str:
        """x @ W^T (+ b); MatMul so it broadcasts over leading dims."""
        y = self.op("MatMul", [x, self.const(f"{name}.weight_t", _np(layer.weight).T.copy())], f"{name}.matmul")
        if layer.bias is None:
            return y
        return self.op("Add", [y, self.const(f"{name}.bias", _np(layer.bias))], f"{name}.out")


def _positional_encoding(g: _Graph, x: str, dim: int, n_freqs: int, name: str) -> str:
    """gamma(x) laid out as embedtalk_sdk.functional.encoding: [x, sin f0, cos f0, sin f1, ...]."""
    if n_freqs == 0:
        return x
    freqs = ((2.0 ** np.arange(n_freqs)) * np.pi).astype(np.float32)[:, None]  # [F, 1]
    xu = g.op("Unsqueeze", [x, g.const(f"{name}.axis1", np.array([1], np.int64))], f"{name}.x3")  # [B,1,D]
    scaled = g.op("Mul", [xu, g.const(f"{name}.freqs", freqs)], f"{name}.scaled")  # [B,F,D]
    axis2 = g.const(f"{name}.axis2", np.array([2], np.int64))
    s = g.op("Unsqueeze", [g.op("Sin", [scaled], f"{name}.sin"), axis2], f"{name}.sin4")
    c = g.op("Unsqueeze", [g.op("Cos", [scaled], f"{name}.cos"), axis2], f"{name}.cos4")
    sc = g.op("Concat", [s, c], f"{name}.sincos", axis=2)  # [B,F,2,D]
    flat = g.op("Reshape", [sc, g.const(f"{name}.shape", np.array([0, 2 * n_freqs * dim], np.int64))], f"{name}.flat")
    return g.op("Concat", [x, flat], f"{name}.out", axis=1)


def _table(g: _Graph, table: np.ndarray, dtype: str) -> str:
    """The per-Gaussian table as an fp32 tensor name: the initializer itself, or its fp16 copy + Cast."""
    if dtype not in TABLE_DTYPES:
        raise ValueError(f"table dtype must be one of {TABLE_DTYPES}, got {dtype!r}")
    if dtype == "float32":
        return g.const(TABLE, table)
    return g.op("Cast", [g.const(TABLE, table.astype(np.float16))], f"{TABLE}.fp32", to=TensorProto.FLOAT)


def build_deform_onnx(baked: BakedDeform, table_dtype: str = "float16") -> onnx.ModelProto:
    """ONNX model computing `baked(audio_window, aus)`; batch size B is dynamic.

    table_dtype: how the [N, hidden] table is stored, "float16" (default) or "float32"; the graph
    computes in fp32 either way."""
    net, cfg = baked.net, baked.net.cfg
    n = baked.table.shape[0]
    g = _Graph()
    an = net.audio_net
    # Audio net: normalise, [B,W,F] -> [B,F,W], stride-2 convs, two linears.
    x = g.op("Sub", ["audio_window", g.const("audio.feature_mean", _np(an.feature_mean))], "audio.centred")
    x = g.op("Div", [x, g.const("audio.feature_std", _np(an.feature_std))], "audio.normed")
    x = g.op("Transpose", [x], "audio.bfw", perm=[0, 2, 1])
    for i, conv in enumerate(an.convs):
        w, b = g.const(f"audio.conv{i}.weight", _np(conv.weight)), g.const(f"audio.conv{i}.bias", _np(conv.bias))
        x = g.op("Conv", [x, w, b], f"audio.conv{i}", kernel_shape=[3], strides=[2], pads=[1, 1])
        x = g.op("LeakyRelu", [x], f"audio.conv{i}.act", alpha=LEAKY_SLOPE)
    x = g.op("Flatten", [x], "audio.flat", axis=1)
    x = g.op("LeakyRelu", [g.linear(x, an.fc1, "audio.fc1")], "audio.fc1.act", alpha=LEAKY_SLOPE)
    code = g.linear(x, an.fc2, "audio.fc2")
    # Shared per-frame vector W_a a + W_e gamma(e) + b.
    pe = _positional_encoding(g, "aus", N_AUS, cfg.au_freqs, "au_pe")
    frame = g.op("Add", [g.linear(code, net.audio_proj, "audio_proj"), g.linear(pe, net.au_proj, "au_proj")], "frame")
    frame3 = g.op("Unsqueeze", [frame, g.const("frame.axis", np.array([1], np.int64))], "frame.b1h")
    h = g.op("Relu", [g.op("Add", [frame3, _table(g, _np(baked.table), table_dtype)], "first.sum")], "first.act")
    for i, layer in enumerate(net.trunk):
        h = g.op("Relu", [g.linear(h, layer, f"trunk{i}")], f"trunk{i}.act")
    bound = np.array(cfg.max_offset, np.float32)
    mu = g.op("Div", [g.linear(h, net.mu_head, "mu_head"), g.const("mu.bound", bound)], "mu.scaled")
    g.op("Mul", [g.op("Tanh", [mu], "mu.tanh"), "mu.bound"], "delta_means")
    alpha = g.linear(h, net.alpha_head, "alpha_head")
    g.op("Squeeze", [alpha, g.const("alpha.axis", np.array([-1], np.int64))], "delta_opacity")

    f32 = TensorProto.FLOAT
    graph = helper.make_graph(
        g.nodes,
        "embedtalk_deform",
        [
            helper.make_tensor_value_info("audio_window", f32, ["batch", cfg.window, cfg.feature_dim]),
            helper.make_tensor_value_info("aus", f32, ["batch", N_AUS]),
        ],
        [
            helper.make_tensor_value_info("delta_means", f32, ["batch", n, 3]),
            helper.make_tensor_value_info("delta_opacity", f32, ["batch", n]),
        ],
        g.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="embedtalk-sdk")
    model.ir_version = 9  # readable by onnxruntime >= 1.17 and TensorRT 10 parsers
    onnx.checker.check_model(model, full_check=True)
    return model


def io_spec(model: onnx.ModelProto) -> dict:
    """{"inputs": {name: shape}, "outputs": {name: shape}} with symbolic dims as strings."""

    def shape(v) -> list:
        return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]

    return {
        "inputs": {v.name: shape(v) for v in model.graph.input},
        "outputs": {v.name: shape(v) for v in model.graph.output},
    }
