"""Training health: does the deformation still listen to the audio?

A network that ignores the audio renders one average mouth in every frame and still scores a good
full-frame PSNR, so the trainer measures the mouth itself at each validation: the validation frames
rendered with their own audio and with a silent window (the quietest training frame's, the same
for every frame), everything else equal. The mouth box of the two renders must differ
(`mouth_audio_response`, in 8-bit levels) and the one with audio must be closer to the truth
(`mouth_psnr` vs `mouth_psnr_silent`). Beside them, the quantities that explain a failure:
the audio code's spread over frames, how far the audio moves the mouth Gaussians (|dmu(audio) -
dmu(silence)|), and the first layer's dead ReLU units.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from embedtalk_sdk.metrics import audio_envelope, psnr
from embedtalk_sdk.model.deform import DeformNet
from embedtalk_sdk.model.gaussians import GaussianModel
from embedtalk_sdk.runtime.pixels import to_uint8

# Below this mean difference (8-bit levels) between the mouth driven by its audio and by silence
# the deformation is taken to ignore the audio. Measured: a zeroed audio path 0 exactly; the tiny
# 64^2 speaker after 150 steps 0.04 with the old audio-net initialisation (mouth identical in
# every frame), 0.59-0.66 with the current one; see design.md for the demo's figures.
MIN_AUDIO_RESPONSE = 0.25


@dataclass
class HealthInputs:
    """What the check renders: per frame [B, W, F] windows, [B, 6] AUs, [B, 4, 4] cameras, torso
    images, mouth boxes and ground-truth frames; `silent` [1, W, F] is the silent window."""

    windows: torch.Tensor
    aus: torch.Tensor
    viewmats: torch.Tensor
    K: torch.Tensor
    backgrounds: list[torch.Tensor]
    boxes: list[tuple[int, int, int, int]]
    truth: list[np.ndarray]
    silent: torch.Tensor


def quietest_frame(audio: np.ndarray, aud_ids: np.ndarray, fps: float) -> int:
    """Index (into aud_ids) of the frame with the lowest audio RMS: the dataset's own silence."""
    env = audio_envelope(audio, int(np.max(aud_ids)) + 1, fps)
    return int(np.argmin(env[np.asarray(aud_ids)]))


@torch.no_grad()
def audio_health(
    gaussians: GaussianModel, deform: DeformNet, inputs: HealthInputs, render_fn
) -> dict:
    """The health figures of the module docstring.

    render_fn(means, opacities, viewmat, K, background) -> image [H, W, 3] renders the Gaussians.
    """
    g = gaussians
    table = deform.embedding_table(g.embeddings)
    spoken, silent, offsets = [], [], []
    frame_vecs = deform.frame_vector(inputs.windows, inputs.aus)  # [B, hidden]
    silent_vecs = deform.frame_vector(inputs.silent.expand_as(inputs.windows), inputs.aus)
    mouth_ids = _mouth_gaussians(g.means, inputs.viewmats[0], inputs.K, inputs.boxes[0])
    active = torch.zeros(table.shape[1], dtype=torch.bool)
    for b in range(len(inputs.boxes)):
        x0, y0, x1, y1 = inputs.boxes[b]
        mouth_dmu = []
        for vec, out in ((frame_vecs[b : b + 1], spoken), (silent_vecs[b : b + 1], silent)):
            dmu, dalpha = deform.decode(table, vec)
            image = render_fn(g.means + dmu[0], g.opacities(dalpha[0]), inputs.viewmats[b], inputs.K,
                              inputs.backgrounds[b])  # fmt: skip
            out.append(to_uint8(image[y0:y1, x0:x1].cpu().numpy().astype(np.float32)))
            mouth_dmu.append(dmu[0, mouth_ids])
        offsets.append((mouth_dmu[0] - mouth_dmu[1]).norm(dim=-1))
        active |= (torch.relu(table + frame_vecs[b]) > 0).any(0).cpu()
    response = float(np.mean([np.abs(a.astype(np.float64) - s).mean() for a, s in zip(spoken, silent)]))
    code = deform.audio_net(inputs.windows)
    return {
        "mouth_audio_response": round(response, 3),
        "mouth_psnr": round(_mean_psnr(spoken, inputs.truth), 2),
        "mouth_psnr_silent": round(_mean_psnr(silent, inputs.truth), 2),
        "audio_code_std": round(float(code.std(0).mean()), 4),
        "mouth_offset_audio_mm": round(float(torch.cat(offsets).mean()) * 1000, 4) if len(mouth_ids) else 0.0,
        "mouth_gaussians": int(len(mouth_ids)),
        "dead_first_layer_units": int((~active).sum()),
    }


def audio_ignored(health: dict) -> bool:
    """True when the mouth no longer depends on the audio (see MIN_AUDIO_RESPONSE)."""
    return health["mouth_audio_response"] < MIN_AUDIO_RESPONSE


def _mean_psnr(crops: list[np.ndarray], truth: list[np.ndarray]) -> float:
    return float(np.mean([psnr(c / 255.0, t / 255.0) for c, t in zip(crops, truth)]))


def _mouth_gaussians(means: torch.Tensor, viewmat: torch.Tensor, K: torch.Tensor,
                     box: tuple[int, int, int, int]) -> torch.Tensor:
    """Indices of the Gaussians whose centres project into the mouth box (from the first camera)."""
    cam = means @ viewmat[:3, :3].T + viewmat[:3, 3]
    z = cam[:, 2].clamp_min(1e-6)
    u = K[0, 0] * cam[:, 0] / z + K[0, 2]
    v = K[1, 1] * cam[:, 1] / z + K[1, 2]
    x0, y0, x1, y1 = box
    inside = (cam[:, 2] > 0) & (u >= x0) & (u < x1) & (v >= y0) & (v < y1)
    return torch.nonzero(inside)[:, 0]


__all__ = ["HealthInputs", "MIN_AUDIO_RESPONSE", "audio_health", "audio_ignored", "quietest_frame"]
