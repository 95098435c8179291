"""The baked deformation network as an ONNX graph, built from its weights.

Built node by node (rather than traced) from the network's schema (runtime/deform_schema.py), which
names every initializer, so that names are stable — the numpy network, the `cuda` and `torch`
backends and TensorRT tooling find weights by them — and the graph holds exactly the ops
TensorRT-RTX and onnxruntime need. Inputs: audio_window [B, W, F], aus [B, 6]. Outputs: delta_means
[B, N, 3], delta_opacity [B, N]. The per-Gaussian table W_z gamma(z) is one [N, hidden] initializer,
stored in fp16 by default (half the bundle's largest part; onnxruntime folds the Cast to fp32 once,
when the session is made: runtime/design.md "Table precision").
"""
from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from embedtalk_sdk.model.deform import BakedDeform
from embedtalk_sdk.runtime.aus import N_AUS
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
    Layer,
    Param,
)
from embedtalk_sdk.runtime.network import encoding_freqs

OPSET = 18
INPUTS = ("audio_window", "aus")
OUTPUTS = ("delta_means", "delta_opacity")
TABLE_DTYPES = ("float16", "float32")


class _Graph:
    """Tiny builder: named initializers (the schema's params from a state dict) and nodes with
    readable output names."""

    def __init__(self, state: dict[str, torch.Tensor], bound: float):
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.state, self.bound = state, bound

    def const(self, name: str, value: np.ndarray) -> str:
        if all(t.name != name for t in self.inits):
            self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def param(self, p: Param) -> str:
        """The state dict's tensor `p.key` as the initializer `p.name`, in deform.onnx's layout."""
        value = self.state[p.key].detach().cpu().numpy().astype(np.float32)
        return self.const(p.name, value.T.copy() if p.transposed else value)

    def op(self, op_type: str, inputs: list[str], out: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def layer(self, x: str, layer: Layer, out: str | None = None) -> str:
        """activation(x W + b) of a schema layer (MatMul, so it broadcasts over leading dims), or
        its strided Conv; the last node's output is `out` when given."""
        if layer.conv:
            y = self.op("Conv", [x, self.param(layer.weight), self.param(layer.bias_param)], layer.name,
                        kernel_shape=[CONV_KERNEL], strides=[CONV_STRIDE], pads=[CONV_PAD, CONV_PAD])  # fmt: skip
        else:
            y = self.op("MatMul", [x, self.param(layer.weight)], f"{layer.name}.matmul")
            if layer.bias:
                y = self.op("Add", [y, self.param(layer.bias_param)], f"{layer.name}.out")
        return self.activate(y, layer.activation, layer.name, out)

    def activate(self, x: str, activation: str, name: str, out: str | None = None) -> str:
        """A schema activation's nodes, named after `name`; the last one's output is `out` if given."""
        last = out or f"{name}.act"
        if activation == RELU:
            return self.op("Relu", [x], last)
        if activation == LEAKY_RELU:
            return self.op("LeakyRelu", [x], last, alpha=LEAKY_SLOPE)
        if activation == BOUNDED_TANH:
            bound = self.const(BOUND, np.array(self.bound, np.float32))
            t = self.op("Tanh", [self.op("Div", [x, bound], f"{name}.scaled")], f"{name}.tanh")
            return self.op("Mul", [t, bound], last)
        if activation == LINEAR:
            return x if out is None else self.op("Identity", [x], out)
        raise ValueError(f"unknown activation {activation!r}")


def _positional_encoding(g: _Graph, x: str, dim: int, n_freqs: int, name: str) -> str:
    """gamma(x) laid out as embedtalk_sdk.functional.encoding: [x, sin f0, cos f0, sin f1, ...]."""
    if n_freqs == 0:
        return x
    xu = g.op("Unsqueeze", [x, g.const(f"{name}.axis1", np.array([1], np.int64))], f"{name}.x3")  # [B,1,D]
    scaled = g.op("Mul", [xu, g.const(f"{name}.freqs", encoding_freqs(n_freqs)[:, None])], f"{name}.scaled")  # [B,F,D]
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
    net, cfg, s = baked.net, baked.net.cfg, baked.net.schema
    n = baked.table.shape[0]
    g = _Graph(net.state_dict(), cfg.max_offset)
    # Audio net: normalise, [B,W,F] -> [B,F,W], stride-2 convs, flatten, dense layers.
    mean, std = s.feature_stats
    x = g.op("Sub", ["audio_window", g.param(mean)], "audio.centred")
    x = g.op("Div", [x, g.param(std)], "audio.normed")
    x = g.op("Transpose", [x], "audio.bfw", perm=[0, 2, 1])
    for layer in s.audio_convs:
        x = g.layer(x, layer)
    x = g.op("Flatten", [x], "audio.flat", axis=1)
    for layer in s.audio_dense:
        x = g.layer(x, layer)
    # Shared per-frame vector W_a a + W_e gamma(e) + b.
    pe = _positional_encoding(g, "aus", N_AUS, cfg.au_freqs, "au_pe")
    frame = g.op("Add", [g.layer(x, s.audio_proj), g.layer(pe, s.au_proj)], "frame")
    frame3 = g.op("Unsqueeze", [frame, g.const("frame.axis", np.array([1], np.int64))], "frame.b1h")
    table = _table(g, baked.table.detach().cpu().numpy().astype(np.float32), table_dtype)
    h = g.activate(g.op("Add", [frame3, table], "first.sum"), s.first_activation, "first")
    for layer in s.trunk:
        h = g.layer(h, layer)
    g.layer(h, s.mu_head, "delta_means")
    alpha = g.layer(h, s.alpha_head)
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
