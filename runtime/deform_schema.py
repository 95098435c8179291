"""The deformation network's one description: its layers, their activations and the names and
shapes of their parameters, derived from `DeformConfig` (runtime/design.md, "The network's schema").

Everything that holds the network reads this instead of restating it: the torch model
(embedtalk_sdk/model/deform.py) builds its modules from it, the ONNX builder (export/onnx_graph.py)
names the initializers by it, the numpy network (runtime/network.py) and the `cuda` backend's
weight packing (runtime/backends/cuda.py) find the weights by it, and the `torch` backend
(embedtalk_sdk/torch_backend.py) maps deform.onnx back onto DeformNet by it. Plain Python, no numpy:
the runtime reads it from the manifest, the torch side imports DeformConfig from here.

The network (eq. 9; the first layer split into its three blocks so W_z gamma(z) can be baked):
    window [B, W, F] -> (x - mean) / std -> audio_convs (stride 2) -> flatten -> audio_dense -> code
    frame [B, hidden] = audio_proj(code) + au_proj(gamma(aus))
    table [N, hidden] = embed_proj(gamma(z))                      (baked into deform.onnx at export)
    h = relu(table + frame) -> trunk -> mu_head (bound * tanh(. / bound)) -> delta_means [B, N, 3]
                                     -> alpha_head                        -> delta_opacity [B, N]
Within a section, every implementation runs the layers in order with each layer's activation, so
a layer added to a section here is added everywhere.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

from embedtalk_sdk.runtime.aus import N_AUS
from embedtalk_sdk.runtime.bundle import BundleError
from embedtalk_sdk.runtime.config import ConfigError, config_from_mapping

LEAKY_SLOPE = 0.02  # the audio net's LeakyReLU
CONV_KERNEL, CONV_STRIDE, CONV_PAD = 3, 2, 1  # every audio conv halves the window
TABLE = "gaussian_table"  # deform.onnx's [N, hidden] initializer: W_z gamma(z) per Gaussian
BOUND = "mu.bound"  # deform.onnx's scalar initializer: DeformConfig.max_offset
FEATURE_MEAN, FEATURE_STD = "audio.feature_mean", "audio.feature_std"
# Activations a layer may name (each implementation maps them to its own ops).
RELU, LEAKY_RELU, LINEAR, BOUNDED_TANH = "relu", "leaky_relu", "linear", "bounded_tanh"
MAX_SIZE = 1 << 16  # bound on every size: a manifest's network block sizes buffers from them


@dataclass(frozen=True)
class DeformConfig:
    """Sizes of the deformation network; stored in checkpoints and bundles (`network`)."""

    feature_dim: int = 32  # audio feature width F (mel bins, or 1024 for HuBERT)
    window: int = 16  # audio feature rows per video frame
    embed_dim: int = 32  # z_g
    embed_freqs: int = 4  # frequencies of gamma(z)
    au_freqs: int = 4  # frequencies of gamma(e)
    audio_code: int = 32  # a_n
    audio_channels: int = 32
    hidden: int = 64
    trunk_layers: int = 1  # hidden->hidden layers after the first
    # |delta_mu| bound in world units (metres): facial motion relative to the canonical head is
    # centimetres; unbounded offsets let a stray Gaussian fly at the camera and stall training.
    max_offset: float = 0.03

    def __post_init__(self) -> None:
        bad = [f"{f.name}={getattr(self, f.name)!r}" for f in fields(self)
               if f.name != "max_offset" and not 0 <= getattr(self, f.name) <= MAX_SIZE]  # fmt: skip
        if not (math.isfinite(self.max_offset) and self.max_offset > 0):
            bad.append(f"max_offset={self.max_offset!r}")
        if bad:
            raise ValueError(f"sizes out of range: {', '.join(bad)} (sizes in [0, {MAX_SIZE}], max_offset > 0)")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str | None = None) -> "DeformConfig":
        """Build from `to_dict`'s output; a missing field takes its default. ConfigError (a
        ValueError) names the unknown, ill-typed or out-of-range fields and `source`."""
        return config_from_mapping(cls, d, source, defaults=asdict(cls()))

    @property
    def n_convs(self) -> int:
        """Stride-2 convolutions that reduce the window to one step."""
        n, w = 0, self.window
        while w > 1:
            w = (w + CONV_STRIDE - 1) // CONV_STRIDE
            n += 1
        return n


def encoded_dim(dim: int, n_freqs: int) -> int:
    """Width of gamma(x) for a `dim`-wide x: [x, sin f0 x, cos f0 x, ...]."""
    return dim * (1 + 2 * n_freqs)


@dataclass(frozen=True)
class Param:
    """One tensor of deform.onnx and the DeformNet state-dict entry it holds."""

    name: str  # the initializer's name in deform.onnx
    key: str  # DeformNet's state-dict key
    shape: tuple[int, ...]  # in deform.onnx
    transposed: bool = False  # deform.onnx holds the tensor transposed (dense weights: [in, out])


@dataclass(frozen=True)
class Layer:
    """One learned layer: y = activation(x W + b), or a Conv1d (CONV_KERNEL, CONV_STRIDE, CONV_PAD)
    over the window when `conv`."""

    name: str  # prefix of its initializers in deform.onnx
    module: str  # its module path in DeformNet
    inputs: int
    outputs: int
    activation: str
    bias: bool = True
    conv: bool = False

    @property
    def weight(self) -> Param:
        """The weight: [out, in, kernel] for a conv, [in, out] (transposed) for a dense layer."""
        if self.conv:
            return Param(f"{self.name}.weight", f"{self.module}.weight", (self.outputs, self.inputs, CONV_KERNEL))
        return Param(f"{self.name}.weight_t", f"{self.module}.weight", (self.inputs, self.outputs), transposed=True)

    @property
    def bias_param(self) -> Param | None:
        return Param(f"{self.name}.bias", f"{self.module}.bias", (self.outputs,)) if self.bias else None

    @property
    def params(self) -> tuple[Param, ...]:
        return (self.weight,) if self.bias_param is None else (self.weight, self.bias_param)


@dataclass(frozen=True)
class DeformSchema:
    """The network of one DeformConfig, section by section (see the module docstring)."""

    config: DeformConfig
    first_activation: str  # of relu(table + frame): the split first layer's
    audio_convs: tuple[Layer, ...]
    audio_dense: tuple[Layer, ...]
    audio_proj: Layer  # carries the first layer's bias
    au_proj: Layer
    embed_proj: Layer  # baked into TABLE at export: not in deform.onnx
    trunk: tuple[Layer, ...]
    mu_head: Layer
    alpha_head: Layer

    @property
    def hidden(self) -> int:
        return self.config.hidden

    @property
    def feature_stats(self) -> tuple[Param, Param]:
        """The audio features' mean and std (buffers of DeformNet), subtracted and divided first."""
        f = self.config.feature_dim
        return (Param(FEATURE_MEAN, "audio_net.feature_mean", (f,)), Param(FEATURE_STD, "audio_net.feature_std", (f,)))

    @property
    def baked_layers(self) -> tuple[Layer, ...]:
        """Every layer deform.onnx holds, in graph order."""
        return (*self.audio_convs, *self.audio_dense, self.audio_proj, self.au_proj, *self.trunk, self.mu_head,
                self.alpha_head)  # fmt: skip

    @property
    def baked_params(self) -> tuple[Param, ...]:
        """Every learned tensor of deform.onnx except TABLE, with its DeformNet key and shape."""
        return (*self.feature_stats, *(p for layer in self.baked_layers for p in layer.params))


def deform_schema(cfg: DeformConfig) -> DeformSchema:
    """The network of `cfg`. The one place that says which layers exist, their widths,
    activations and names; torch module paths are DeformNet's (checkpoints store them)."""
    chans = [cfg.feature_dim] + [cfg.audio_channels] * cfg.n_convs
    convs = tuple(Layer(f"audio.conv{i}", f"audio_net.convs.{i}", chans[i], chans[i + 1], LEAKY_RELU, conv=True)
                  for i in range(cfg.n_convs))  # fmt: skip
    dense = (
        Layer("audio.fc1", "audio_net.fc1", chans[-1], cfg.audio_code, LEAKY_RELU),
        Layer("audio.fc2", "audio_net.fc2", cfg.audio_code, cfg.audio_code, LINEAR),
    )
    h = cfg.hidden
    return DeformSchema(
        config=cfg,
        first_activation=RELU,
        audio_convs=convs,
        audio_dense=dense,
        audio_proj=Layer("audio_proj", "audio_proj", dense[-1].outputs, h, LINEAR),
        au_proj=Layer("au_proj", "au_proj", encoded_dim(N_AUS, cfg.au_freqs), h, LINEAR, bias=False),
        embed_proj=Layer("embed_proj", "embed_proj", encoded_dim(cfg.embed_dim, cfg.embed_freqs), h, LINEAR,
                         bias=False),
        trunk=tuple(Layer(f"trunk{i}", f"trunk.{i}", h, h, RELU) for i in range(cfg.trunk_layers)),
        mu_head=Layer("mu_head", "mu_head", h, 3, BOUNDED_TANH),
        alpha_head=Layer("alpha_head", "alpha_head", h, 1, LINEAR),
    )


def network_config(manifest: Mapping[str, Any], where: str) -> DeformConfig:
    """The manifest's `network` block (`DeformConfig.to_dict()`, as the exporter writes it) as a
    DeformConfig; BundleError naming `where` and what is missing, unknown, ill-typed or out of range."""
    if "network" not in manifest:
        raise BundleError(f"bundle {where}: the manifest has no network block (the network's sizes)")
    try:
        return DeformConfig.from_dict(manifest["network"], f"bundle {where}: the manifest's network block")
    except ConfigError as e:
        raise BundleError(str(e)) from None
