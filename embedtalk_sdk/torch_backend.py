"""The `torch` backend: the training-side model and torch reference rasteriser, rebuilt from a
bundle, for checking the other backends. It imports torch on creation only (the runtime's other
paths never do), and reads the weights from deform.onnx by initializer name.
"""
from __future__ import annotations

import numpy as np

from embedtalk_sdk.runtime.backends.base import deform_io
from embedtalk_sdk.runtime.bundle import Bundle, BundleError
from embedtalk_sdk.runtime.onnx_weights import bundle_initializers
from embedtalk_sdk.runtime.pixels import background_to_float, to_uint8


def load_baked_deform(bundle: Bundle, file: str):
    """BakedDeform with the weights of the bundle's deform.onnx (names from export/onnx_graph.py)."""
    import torch

    from embedtalk_sdk.model.deform import BakedDeform, DeformConfig, DeformNet

    try:
        cfg = DeformConfig.from_dict(bundle.manifest["network"])
    except (KeyError, TypeError, ValueError) as e:
        raise BundleError(f"bundle {bundle.path}: the manifest's network block is missing or malformed ({e})") from None
    where = f"{bundle.path}/{file}"
    w = bundle_initializers(bundle.bytes_of(file), where)
    net = DeformNet(cfg)
    try:
        state = {
            "audio_net.feature_mean": w["audio.feature_mean"],
            "audio_net.feature_std": w["audio.feature_std"],
            "audio_net.fc1.weight": w["audio.fc1.weight_t"].T,
            "audio_net.fc1.bias": w["audio.fc1.bias"],
            "audio_net.fc2.weight": w["audio.fc2.weight_t"].T,
            "audio_net.fc2.bias": w["audio.fc2.bias"],
            "audio_proj.weight": w["audio_proj.weight_t"].T,
            "audio_proj.bias": w["audio_proj.bias"],
            "au_proj.weight": w["au_proj.weight_t"].T,
            "mu_head.weight": w["mu_head.weight_t"].T,
            "mu_head.bias": w["mu_head.bias"],
            "alpha_head.weight": w["alpha_head.weight_t"].T,
            "alpha_head.bias": w["alpha_head.bias"],
        }
        for i in range(cfg.n_convs):
            state[f"audio_net.convs.{i}.weight"] = w[f"audio.conv{i}.weight"]
            state[f"audio_net.convs.{i}.bias"] = w[f"audio.conv{i}.bias"]
        for i in range(cfg.trunk_layers):
            state[f"trunk.{i}.weight"] = w[f"trunk{i}.weight_t"].T
            state[f"trunk.{i}.bias"] = w[f"trunk{i}.bias"]
        table = w["gaussian_table"]
    except KeyError as e:
        raise BundleError(f"{where} lacks the weight {e} the manifest's network needs") from None
    # embed_proj is baked into the table; the rebuilt net never uses it.
    state["embed_proj.weight"] = net.embed_proj.weight.detach().numpy()
    try:
        net.load_state_dict({k: torch.as_tensor(np.array(v, dtype=np.float32)) for k, v in state.items()})
    except RuntimeError as e:
        raise BundleError(f"{bundle.path}/{file} does not fit the manifest's network: {e}") from None
    return BakedDeform(net, torch.as_tensor(np.array(table, dtype=np.float32))).eval()


class TorchBackend:
    """`Backend` on PyTorch (CPU): deform with the rebuilt BakedDeform, render with the reference."""

    name = "torch"
    REQUIRES = ("torch",)
    INSTALL = "pip install 'embedtalk-sdk[train]'"
    AUTO_PICK = True  # a playback backend: `auto` may fall back to it, after the runtime's own

    def __init__(self, bundle: Bundle) -> None:
        import torch

        from embedtalk_sdk.functional.rasterize import rasterize

        self._torch = torch
        self._rasterize = rasterize
        io = deform_io(bundle)
        self.baked = load_baked_deform(bundle, io.file)
        arr = {k: torch.as_tensor(bundle.array(k)) for k in ("means", "quats", "scales", "opacity_logits", "colors")}
        self.means, self.quats, self.scales = arr["means"], arr["quats"], arr["scales"]
        self.opacity_logits, self.colors = arr["opacity_logits"], arr["colors"]
        self.K = torch.as_tensor(np.asarray(bundle.manifest["K"], dtype=np.float32))

    def deform(self, audio_window: np.ndarray, aus: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        torch = self._torch
        with torch.no_grad():
            dmu, dalpha = self.baked(torch.as_tensor(audio_window), torch.as_tensor(aus))
        return dmu.numpy(), dalpha.numpy()

    def render(
        self,
        delta_means: np.ndarray,
        delta_opacity: np.ndarray,
        viewmat: np.ndarray,
        background: np.ndarray,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        torch = self._torch
        with torch.no_grad():
            image, _ = self._rasterize(
                self.means + torch.as_tensor(delta_means),
                self.quats,
                self.scales,
                torch.sigmoid(self.opacity_logits + torch.as_tensor(delta_opacity)),
                self.colors,
                torch.as_tensor(np.asarray(viewmat, dtype=np.float32)),
                self.K,
                torch.as_tensor(background_to_float(background)),
            )
        return to_uint8(image.numpy().copy(), out)
