"""Checkpoints: plain tensors + a JSON config, written atomically, read with weights_only=True."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from embedtalk_sdk.runtime.fileio import atomic_path
from embedtalk_sdk.model.deform import DeformConfig, DeformNet
from embedtalk_sdk.model.gaussians import GaussianModel

CHECKPOINT_FORMAT = "embedtalk-checkpoint"
CHECKPOINT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be read; the message names the file and what to do."""


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
            raise CheckpointError(
                f"{path}: not a readable checkpoint ({type(err).__name__}: {err}); "
                "it may be truncated or corrupt — re-run `embedtalk-sdk train` or copy it again"
            ) from None
        if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{path}: not an EmbedTalk checkpoint")
        if payload.get("version", 0) > CHECKPOINT_VERSION:
            raise CheckpointError(
                f"{path}: checkpoint version {payload['version']} is newer than this SDK reads "
                f"({CHECKPOINT_VERSION}): upgrade embedtalk-sdk"
            )
        deform = DeformNet(DeformConfig.from_dict(json.loads(payload["deform_config"])))
        deform.load_state_dict(payload["deform"])
        return cls(GaussianModel(payload["gaussians"]), deform, json.loads(payload["meta"]))
