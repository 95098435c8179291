"""The deformation network of eq. 9: MLP(gamma(z) (+) a_n (+) gamma(e_n)) -> (delta_mu, delta_alpha).

The first layer is kept split into its three blocks (W_z, W_a, W_e), which is the same function as
one Linear on the concatenation, so that baking (W_z gamma(z) as a per-Gaussian table) is exact.
Its layers, widths, activations and module paths are `runtime/deform_schema.py`'s (DeformConfig
lives there too, so the runtime reads a bundle's network without torch); this file only says how
torch computes them.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from embedtalk_sdk.functional.encoding import positional_encoding
from embedtalk_sdk.runtime.deform_schema import (
    BOUNDED_TANH,
    CONV_KERNEL,
    CONV_PAD,
    CONV_STRIDE,
    LEAKY_RELU,
    LEAKY_SLOPE,
    LINEAR,
    RELU,
    DeformConfig,
    Layer,
    deform_schema,
)


def layer_module(layer: Layer) -> nn.Module:
    """The torch module of a schema layer (default PyTorch initialisation)."""
    if layer.conv:
        return nn.Conv1d(layer.inputs, layer.outputs, CONV_KERNEL, stride=CONV_STRIDE, padding=CONV_PAD,
                         bias=layer.bias)
    return nn.Linear(layer.inputs, layer.outputs, bias=layer.bias)


def activate(x: torch.Tensor, activation: str, bound: float = 1.0) -> torch.Tensor:
    """A schema activation; `bound` is BOUNDED_TANH's (max_offset)."""
    if activation == RELU:
        return torch.relu(x)
    if activation == LEAKY_RELU:
        return F.leaky_relu(x, LEAKY_SLOPE)
    if activation == BOUNDED_TANH:
        return bound * torch.tanh(x / bound)
    if activation == LINEAR:
        return x
    raise ValueError(f"unknown activation {activation!r}")


class AudioNet(nn.Module):
    """Window of audio features [B, W, F] -> audio code a_n [B, audio_code] (as ER-NeRF's AudioNet)."""

    def __init__(self, cfg: DeformConfig):
        super().__init__()
        self.schema = schema = deform_schema(cfg)
        self.convs = nn.ModuleList(layer_module(layer) for layer in schema.audio_convs)
        for layer in schema.audio_dense:
            self.add_module(self.path(layer), layer_module(layer))
        # He initialisation, so the code varies over frames at unit scale. PyTorch's default
        # (kaiming_uniform with a=sqrt(5): a third of the variance per layer) left the code's spread
        # over frames at ~0.002 after six layers, ~200x below the per-Gaussian table's, and whether
        # the network ever found the audio was a matter of the seed (issue 9). A layer without a
        # LeakyReLU after it (the code's) gets Xavier's.
        for layer in (*schema.audio_convs, *schema.audio_dense):
            module = self.get_submodule(self.path(layer))
            if layer.activation == LEAKY_RELU:
                nn.init.kaiming_normal_(module.weight, a=LEAKY_SLOPE, nonlinearity="leaky_relu")
            else:
                nn.init.xavier_normal_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        # Feature statistics of the training audio, so mel and HuBERT features enter at unit scale.
        self.register_buffer("feature_mean", torch.zeros(cfg.feature_dim))
        self.register_buffer("feature_std", torch.ones(cfg.feature_dim))

    @staticmethod
    def path(layer: Layer) -> str:
        """A layer's path inside this module (the schema's paths are DeformNet's: `audio_net.` + it)."""
        return layer.module.split(".", 1)[1]

    def set_feature_stats(self, features: torch.Tensor) -> None:
        """Record the per-feature mean and std of the training features [M, F]."""
        self.feature_mean.copy_(features.mean(0))
        self.feature_std.copy_(features.std(0).clamp_min(1e-3))

    def forward(self, window: torch.Tensor) -> torch.Tensor:
        x = ((window - self.feature_mean) / self.feature_std).transpose(1, 2)  # [B, F, W]
        for layer, conv in zip(self.schema.audio_convs, self.convs):
            x = activate(conv(x), layer.activation)
        x = x.flatten(1)  # [B, C]: the window is reduced to one step
        for layer in self.schema.audio_dense:
            x = activate(self.get_submodule(self.path(layer))(x), layer.activation)
        return x


class DeformNet(nn.Module):
    """Per-frame deformation of every Gaussian.

    forward(z [N, embed_dim], audio_window [B, W, F], aus [B, 6] (already / AU_SCALE))
        -> delta_means [B, N, 3], delta_opacity [B, N] (added to the opacity logit)
    """

    def __init__(self, cfg: DeformConfig):
        super().__init__()
        self.cfg = cfg
        self.schema = deform_schema(cfg)
        s = self.schema
        self.audio_net = AudioNet(cfg)
        self.embed_proj = layer_module(s.embed_proj)
        self.audio_proj = layer_module(s.audio_proj)  # carries the first layer's bias
        self.au_proj = layer_module(s.au_proj)
        self.trunk = nn.ModuleList(layer_module(layer) for layer in s.trunk)
        self.mu_head = layer_module(s.mu_head)
        self.alpha_head = layer_module(s.alpha_head)
        # Start from the canonical head: no deformation until the data asks for one.
        for head in (self.mu_head, self.alpha_head):
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def embedding_table(self, z: torch.Tensor) -> torch.Tensor:
        """W_z gamma(z): [N, hidden], constant per Gaussian once training is over (what export bakes)."""
        return self.embed_proj(positional_encoding(z, self.cfg.embed_freqs))

    def frame_vector(self, audio_window: torch.Tensor, aus: torch.Tensor) -> torch.Tensor:
        """W_a a_n + W_e gamma(e_n) + b: [B, hidden], shared by all Gaussians of a frame."""
        code = self.audio_net(audio_window)
        return self.audio_proj(code) + self.au_proj(positional_encoding(aus, self.cfg.au_freqs))

    def decode(self, table: torch.Tensor, frame: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """table [N, hidden], frame [B, hidden] -> (delta_means [B,N,3], delta_opacity [B,N])."""
        s, bound = self.schema, self.cfg.max_offset
        h = activate(table[None] + frame[:, None], s.first_activation)
        for layer, module in zip(s.trunk, self.trunk):
            h = activate(module(h), layer.activation)
        mu = activate(self.mu_head(h), s.mu_head.activation, bound)
        return mu, activate(self.alpha_head(h), s.alpha_head.activation, bound)[..., 0]

    def forward(
        self, z: torch.Tensor, audio_window: torch.Tensor, aus: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.decode(self.embedding_table(z), self.frame_vector(audio_window, aus))


class BakedDeform(nn.Module):
    """DeformNet with W_z gamma(z) precomputed: forward(audio_window, aus) -> the same outputs.

    This is the function `deform.onnx` computes; the torch backend rebuilds it from the bundle.
    """

    def __init__(self, net: DeformNet, table: torch.Tensor):
        super().__init__()
        self.net = net
        self.register_buffer("table", table)

    def forward(self, audio_window: torch.Tensor, aus: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net.decode(self.table, self.net.frame_vector(audio_window, aus))
