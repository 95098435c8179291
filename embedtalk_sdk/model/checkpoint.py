"""Checkpoints: plain tensors + a JSON config, written atomically, read with weights_only=True."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from embedtalk_sdk.runtime.errors import EmbedTalkError
from embedtalk_sdk.runtime.fileio import atomic_path
from embedtalk_sdk.model.deform import DeformConfig, DeformNet
from embedtalk_sdk.model.gaussians import GaussianModel

CHECKPOINT_FORMAT = "embedtalk-checkpoint"
CHECKPOINT_VERSION = 1


PLAYBACK_META = ("fps", "width", "height", "K", "audio", "aus")
# Per-Gaussian tensors and their trailing shape (None: the embedding width, from the network config).
GAUSSIAN_SHAPES: dict[str, tuple[int | None, ...]] = {
    "means": (3,), "quats": (4,), "log_scales": (3,), "sh0": (3,), "opacity_logits": (), "embeddings": (None,),
}


class CheckpointError(EmbedTalkError, ValueError):
    """A checkpoint that cannot be read; the message names the file and what to do."""


def _check_gaussians(path: Path, params: object, embed_dim: int) -> dict[str, torch.Tensor]:
    """The Gaussian tensors if they are all there, float, finite, with one row per Gaussian."""
    if not isinstance(params, dict):
        raise CheckpointError(f"{path}: gaussians is {type(params).__name__}, expected tensors by name")
    missing = [k for k in GAUSSIAN_SHAPES if k not in params]
    if missing:
        raise CheckpointError(f"{path}: the checkpoint lacks the Gaussians' {', '.join(missing)}")
    n = params["means"].shape[0] if isinstance(params["means"], torch.Tensor) and params["means"].ndim else -1
    for name, tail in GAUSSIAN_SHAPES.items():
        t = params[name]
        want = (n, *(embed_dim if d is None else d for d in tail))
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != want or n < 1:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise CheckpointError(f"{path}: gaussians.{name} is {got}, expected {want} (N = rows of means)")
        if not t.is_floating_point() or not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"{path}: gaussians.{name} holds non-finite or non-float values")
    return params


@dataclass
class Checkpoint:
    """What training produces and export consumes.

    meta: JSON-able facts about the run (dataset path, image size, fps, intrinsics, audio encoder,
    AU statistics, iterations, metrics).
    """

    gaussians: GaussianModel
    deform: DeformNet
    meta: dict = field(default_factory=dict)

    def save(self, path: str | Path) -> Path:
        """Write atomically (embedtalk_sdk.runtime.fileio.atomic_path)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "deform_config": json.dumps(self.deform.cfg.to_dict()),
            "meta": json.dumps(self.meta),
            "gaussians": {k: v.detach().cpu() for k, v in self.gaussians.params.items()},
            "deform": {k: v.detach().cpu() for k, v in self.deform.state_dict().items()},
        }
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Checkpoint":
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: no such checkpoint file")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises several types for truncated or foreign files
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise CheckpointError(
                f"{path}: not a readable checkpoint ({type(err).__name__}: {first}); "
                "it may be truncated or corrupt — re-run `embedtalk-sdk train` or copy it again"
            ) from None
        if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{path}: not an EmbedTalk checkpoint")
        if payload.get("version", 0) > CHECKPOINT_VERSION:
            raise CheckpointError(
                f"{path}: checkpoint version {payload['version']} is newer than this SDK reads "
                f"({CHECKPOINT_VERSION}): upgrade embedtalk-sdk"
            )
        missing = [k for k in ("gaussians", "deform", "deform_config", "meta") if k not in payload]
        if missing:
            raise CheckpointError(f"{path}: the checkpoint lacks {', '.join(missing)}; it is damaged or not from `train`")
        try:
            cfg = DeformConfig.from_dict(json.loads(payload["deform_config"]))
            meta = json.loads(payload["meta"])
        except (TypeError, ValueError, KeyError) as e:
            raise CheckpointError(f"{path}: unreadable network config or meta ({type(e).__name__}: {e})") from None
        if not isinstance(meta, dict):
            raise CheckpointError(f"{path}: meta is {type(meta).__name__}, expected an object")
        gaussians = _check_gaussians(path, payload["gaussians"], cfg.embed_dim)
        deform = DeformNet(cfg)
        try:
            deform.load_state_dict(payload["deform"])
        except (RuntimeError, TypeError, AttributeError) as e:
            first = str(e).strip().splitlines()[:3]
            raise CheckpointError(f"{path}: the network weights do not fit its config: {' '.join(first)}") from None
        return cls(GaussianModel(gaussians), deform, meta)

    def require_meta(self, path: str | Path, keys: tuple[str, ...] = PLAYBACK_META) -> dict:
        """The meta, if it has `keys` (what export and eval read); CheckpointError naming the missing ones."""
        missing = [k for k in keys if k not in self.meta]
        if missing:
            raise CheckpointError(f"{path}: the checkpoint's meta lacks {', '.join(missing)}; train it again with "
                                  "this SDK (`embedtalk-sdk train`)")
        return self.meta
