"""The deformation network of eq. 9: MLP(gamma(z) (+) a_n (+) gamma(e_n)) -> (delta_mu, delta_alpha).

The first layer is kept split into its three blocks (W_z, W_a, W_e), which is the same function as
one Linear on the concatenation, so that baking (W_z gamma(z) as a per-Gaussian table) is exact.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

import torch
from torch import nn

from embedtalk_sdk.functional.encoding import encoded_dim, positional_encoding
from embedtalk_sdk.runtime.aus import N_AUS
from embedtalk_sdk.runtime.config import config_from_mapping



@dataclass(frozen=True)
class DeformConfig:
    """Sizes of the deformation network; stored in checkpoints and bundles."""

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

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str | None = None) -> "DeformConfig":
        """Build from `to_dict`'s output; a missing field takes its default. ConfigError (a
        ValueError) names the unknown or ill-typed fields and `source`."""
        return config_from_mapping(cls, d, source, defaults=asdict(cls()))

    @property
    def n_convs(self) -> int:
        """Stride-2 convolutions that reduce the window to one step."""
        n, w = 0, self.window
        while w > 1:
            w = (w + 1) // 2
            n += 1
        return n


class AudioNet(nn.Module):
    """Window of audio features [B, W, F] -> audio code a_n [B, audio_code] (as ER-NeRF's AudioNet)."""

    def __init__(self, cfg: DeformConfig):
        super().__init__()
        chans = [cfg.feature_dim] + [cfg.audio_channels] * cfg.n_convs
        self.convs = nn.ModuleList(
            nn.Conv1d(chans[i], chans[i + 1], kernel_size=3, stride=2, padding=1) for i in range(cfg.n_convs)
        )
        self.fc1 = nn.Linear(cfg.audio_channels, cfg.audio_code)
        self.fc2 = nn.Linear(cfg.audio_code, cfg.audio_code)
        self.act = nn.LeakyReLU(0.02)
        # He initialisation, so the code varies over frames at unit scale. PyTorch's default
        # (kaiming_uniform with a=sqrt(5): a third of the variance per layer) left the code's spread
        # over frames at ~0.002 after six layers, ~200x below the per-Gaussian table's, and whether
        # the network ever found the audio was a matter of the seed (issue 9).
        for layer in [*self.convs, self.fc1]:
            nn.init.kaiming_normal_(layer.weight, a=0.02, nonlinearity="leaky_relu")
            nn.init.zeros_(layer.bias)
        nn.init.xavier_normal_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)
        # Feature statistics of the training audio, so mel and HuBERT features enter at unit scale.
        self.register_buffer("feature_mean", torch.zeros(cfg.feature_dim))
        self.register_buffer("feature_std", torch.ones(cfg.feature_dim))

    def set_feature_stats(self, features: torch.Tensor) -> None:
        """Record the per-feature mean and std of the training features [M, F]."""
        self.feature_mean.copy_(features.mean(0))
        self.feature_std.copy_(features.std(0).clamp_min(1e-3))

    def forward(self, window: torch.Tensor) -> torch.Tensor:
        x = ((window - self.feature_mean) / self.feature_std).transpose(1, 2)  # [B, F, W]
        for conv in self.convs:
            x = self.act(conv(x))
        x = x.flatten(1)  # [B, C]: the window is reduced to one step
        return self.fc2(self.act(self.fc1(x)))


class DeformNet(nn.Module):
    """Per-frame deformation of every Gaussian.

    forward(z [N, embed_dim], audio_window [B, W, F], aus [B, 6] (already / AU_SCALE))
        -> delta_means [B, N, 3], delta_opacity [B, N] (added to the opacity logit)
    """

    def __init__(self, cfg: DeformConfig):
        super().__init__()
        self.cfg = cfg
        self.audio_net = AudioNet(cfg)
        self.embed_proj = nn.Linear(encoded_dim(cfg.embed_dim, cfg.embed_freqs), cfg.hidden, bias=False)
        self.audio_proj = nn.Linear(cfg.audio_code, cfg.hidden)  # carries the first layer's bias
        self.au_proj = nn.Linear(encoded_dim(N_AUS, cfg.au_freqs), cfg.hidden, bias=False)
        self.trunk = nn.ModuleList(nn.Linear(cfg.hidden, cfg.hidden) for _ in range(cfg.trunk_layers))
        self.mu_head = nn.Linear(cfg.hidden, 3)
        self.alpha_head = nn.Linear(cfg.hidden, 1)
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
        h = torch.relu(table[None] + frame[:, None])
        for layer in self.trunk:
            h = torch.relu(layer(h))
        bound = self.cfg.max_offset
        return bound * torch.tanh(self.mu_head(h) / bound), self.alpha_head(h)[..., 0]

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
