"""The `torch` backend: the training-side model and torch reference rasteriser, rebuilt from a
bundle, for checking the other backends. It imports torch on creation only (the runtime's other
paths never do), and reads the weights from deform.onnx by the names of the network's schema
(runtime/deform_schema.py), as the numpy network does.
"""
from __future__ import annotations

import numpy as np

from embedtalk_sdk.runtime.backends.base import deform_io
from embedtalk_sdk.runtime.bundle import Bundle
from embedtalk_sdk.runtime.deform_schema import network_config
from embedtalk_sdk.runtime.network import BakedNetwork
from embedtalk_sdk.runtime.pixels import background_to_float, to_uint8


def load_baked_deform(bundle: Bundle, file: str):
    """BakedDeform with the weights of the bundle's deform.onnx, its shape the manifest's network."""
    import torch

    from embedtalk_sdk.model.deform import BakedDeform, DeformNet

    where = f"{bundle.path}/{file}"
    baked = BakedNetwork.from_onnx(bundle.bytes_of(file), where, network_config(bundle.manifest, bundle.path))
    schema = baked.schema
    net = DeformNet(schema.config)
    state = {p.key: baked.weights[p.name].T if p.transposed else baked.weights[p.name] for p in schema.baked_params}
    state[schema.embed_proj.weight.key] = net.embed_proj.weight.detach().numpy()  # baked into the table: never used
    net.load_state_dict({k: torch.as_tensor(np.array(v, dtype=np.float32)) for k, v in state.items()})
    return BakedDeform(net, torch.as_tensor(baked.table)).eval()


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
