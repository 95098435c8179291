"""LPIPS (AlexNet, v0.1) without torchvision or a model hub.

The backbone is torchvision's `alexnet().features` state dict from a local file,
`lpips_alexnet_features.pth`, found like every model file (`embedtalk_sdk.model_files`: an explicit
path, $EMBEDTALK_MODELS, the user cache); the calibrated linear layers (4.6 kB, BSD-2, see
weights/NOTICE.md) ship with the SDK, converted from the `lpips` package, whose import pulls in
torchvision.
The network and the distance follow Zhang et al. 2018 exactly: scaling layer, five ReLU outputs,
channel-normalised squared differences, 1x1 linear layers, spatial mean, sum.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from embedtalk_sdk.model_files import LPIPS_BACKBONE, model_file

_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
_CHANNELS = (64, 192, 384, 256, 256)

LINEAR_WEIGHTS = Path(__file__).parent / "weights" / "lpips_alex_v0.1_linear.npz"


class AlexFeatures(nn.Module):
    """torchvision's AlexNet `features`, returning the five ReLU outputs LPIPS compares."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(),
            nn.MaxPool2d(3, 2), nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(),
            nn.MaxPool2d(3, 2), nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),
        )  # fmt: skip
        self._taps = {1, 4, 7, 9, 11}

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self._taps:
                outs.append(x)
        return outs


class LPIPS(nn.Module):
    """LPIPS distance. forward(a, b): images [B,3,H,W] in [0,1] -> [B]."""

    def __init__(self, backbone_path: str | Path):
        super().__init__()
        self.net = AlexFeatures()
        self.net.features.load_state_dict(torch.load(backbone_path, map_location="cpu", weights_only=True))
        with np.load(LINEAR_WEIGHTS, allow_pickle=False) as lin:
            self.lins = nn.ParameterList(
                nn.Parameter(torch.from_numpy(lin[f"lin{k}"]).view(1, c, 1, 1)) for k, c in enumerate(_CHANNELS)
            )
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1))
        self.eval().requires_grad_(False)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        fa = self.net(((2 * a - 1) - self.shift) / self.scale)
        fb = self.net(((2 * b - 1) - self.shift) / self.scale)
        total = 0.0
        for xa, xb, w in zip(fa, fb, self.lins):
            xa = xa / (xa.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            xb = xb / (xb.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + nn.functional.conv2d((xa - xb) ** 2, w).mean((2, 3))[:, 0]
        return total


def backbone_file(backbone_path: str | Path | None, otherwise: str = "") -> Path:
    """The AlexNet backbone's path: `backbone_path`, or where the model files are looked for when None.
    Raises ModelFileError naming every place looked (and `otherwise`, a way to do without it)."""
    return model_file(LPIPS_BACKBONE, backbone_path, "--lpips-weights", otherwise)


def load_lpips(backbone_path: str | Path | None) -> LPIPS:
    """LPIPS with the backbone `backbone_file(backbone_path)` names; raises ModelFileError when there is none."""
    return LPIPS(backbone_file(backbone_path))
