"""GPU baseline for `embedtalk-sdk bench --backend all`: the PyTorch deformation MLP + gsplat.

What a researcher would run without this SDK: the baked network in PyTorch on CUDA, gsplat's
`rasterization` per frame, the frame composited over the background and copied back as uint8.
It is registered as the backend "gsplat-torch" (an entry point in pyproject.toml), so `bench` times it
beside the others when torch, gsplat and a CUDA device are present; elsewhere it reports why it
cannot run. Not a playback backend: gsplat's maths differs slightly from plugins/design.md
(3.33-sigma tile bins), so its frames are close to, not equal to, the other backends'.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from embedtalk_sdk.runtime.backends.base import BackendError, deform_io
from embedtalk_sdk.runtime.bundle import Bundle
from embedtalk_sdk.runtime.pixels import background_to_float

NAME = "gsplat-torch"


class GsplatTorchBaseline:
    """`Backend` on CUDA: torch BakedDeform (weights from deform.onnx) + gsplat.rasterization."""

    name = NAME
    REQUIRES = ("gsplat", "torch")
    INSTALL = "pip install 'embedtalk-sdk[train,gpu]' (and a CUDA device)"
    AUTO_PICK = False  # a bench baseline, not a playback backend: `auto` never picks it

    def __init__(self, bundle: Bundle) -> None:
        import torch

        if not torch.cuda.is_available():
            raise BackendError(f"{NAME} is a CUDA-only baseline and torch sees no CUDA device")
        try:
            import gsplat
        except ImportError:
            raise BackendError(f"{NAME} needs gsplat: pip install 'embedtalk-sdk[gpu]'") from None
        from embedtalk_sdk.torch_backend import load_baked_deform

        self.torch, self.gsplat = torch, gsplat
        self.io = deform_io(bundle)
        dev = self.device = torch.device("cuda")
        self.net = load_baked_deform(bundle, self.io.file).to(dev)
        t = lambda name: torch.as_tensor(np.asarray(bundle.array(name), np.float32), device=dev)  # noqa: E731
        self.means, self.quats, self.scales = t("means"), t("quats"), t("scales")
        self.logits, self.colors = t("opacity_logits"), t("colors")
        m = bundle.manifest
        self.K = torch.as_tensor(np.asarray(m["K"], np.float32).reshape(1, 3, 3), device=dev)
        self.width, self.height = int(m["width"]), int(m["height"])

    def deform(self, audio_window: np.ndarray, aus: np.ndarray) -> tuple[Any, Any]:
        torch = self.torch
        with torch.no_grad():
            win = torch.as_tensor(np.ascontiguousarray(audio_window, np.float32), device=self.device)
            a = torch.as_tensor(np.ascontiguousarray(aus, np.float32), device=self.device)
            return self.net(win, a)  # CUDA tensors [B,N,3], [B,N]; indexed per frame by Avatar

    def render(self, delta_means: Any, delta_opacity: Any, viewmat: np.ndarray, background: np.ndarray,
               out: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
        torch = self.torch
        with torch.no_grad():
            vm = torch.as_tensor(np.asarray(viewmat, np.float32), device=self.device)[None]
            bg = torch.as_tensor(background_to_float(background), device=self.device)
            colors, alphas, _ = self.gsplat.rasterization(
                self.means + delta_means, self.quats, self.scales, torch.sigmoid(self.logits + delta_opacity),
                self.colors, vm, self.K, self.width, self.height, near_plane=0.01, eps2d=0.3, packed=False,
            )  # fmt: skip
            image = colors[0] + (1.0 - alphas[0]) * bg
            frame = (image.clamp(0, 1) * 255.0).round().to(torch.uint8).cpu().numpy()
        if out is None:
            return frame
        np.copyto(out, frame)
        return out
