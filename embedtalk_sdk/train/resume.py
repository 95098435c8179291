"""Resumable training: RUN/resume.pt holds everything a run needs to continue between two steps.

The file is plain tensors and containers (read with `torch.load(weights_only=True)`), written
atomically. It names the run it belongs to (the config, with the densification schedule resolved,
and a digest of the dataset) so that `--resume` refuses a state from another run instead of
silently training a different schedule. The trainer (`trainer.py`) decides what goes in it.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from embedtalk_sdk.data.dataset import TalkingDataset
from embedtalk_sdk.runtime.errors import EmbedTalkError
from embedtalk_sdk.runtime.fileio import atomic_path

RESUME_FILE = "resume.pt"
RESUME_FORMAT = "embedtalk-train-state"
RESUME_VERSION = 1
# What a run writes into its folder, each through runtime.fileio.atomic_path (temporaries
# `.NAME.*.part`); a killed run's temporaries of these names are removed by the next run.
RUN_FILES = ("ckpt.pt", "train_metrics.json", "loss.png", RESUME_FILE)


class ResumeError(EmbedTalkError, ValueError):
    """A run cannot be resumed; the message is one line naming the file and the problem."""


@dataclass(frozen=True)
class Cadence:
    """When a run writes resume.pt: once `seconds` of training have passed since the last write, or
    every `steps` steps when steps > 0 (whichever comes first), and after each validation.

    30 s by default: the write costs ~0.02 s for 15k Gaussians (11 MB; ~0.1 s for 60k), under 0.1%
    of the run, and a kill then loses 15 s of training on average whatever a step costs (~0.02 s on
    a GPU, ~0.5 s on a CPU), which a count of steps would not bound.
    """

    seconds: float = 30.0
    steps: int = 0

    def due(self, step: int, seconds_since_last: float) -> bool:
        """Write after `step` steps, `seconds_since_last` s after the previous write?"""
        return (self.steps > 0 and step % self.steps == 0) or seconds_since_last >= self.seconds


def dataset_digest(train: TalkingDataset, val: TalkingDataset, features: np.ndarray) -> str:
    """sha256 of what training reads from a dataset, images aside (hashing them would cost seconds
    per resume): frame size and rate, intrinsics, each split's frames, cameras and AUs, the audio
    features and the point cloud."""
    h = hashlib.sha256()
    h.update(json.dumps([train.width, train.height, float(train.fps)]).encode())
    arrays = [train.K, features, train.points3d if train.points3d is not None else np.zeros(0)]
    for ds in (train, val):
        arrays += [ds.frame_ids, ds.aud_ids, ds.c2w_gl, ds.aus]
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def rng_state(sampler: np.random.Generator, device: torch.device) -> dict:
    """The random state a run draws from: torch's global generator (embedding rows, split offsets),
    CUDA's on a GPU run, and the frame-order sampler (numpy; its 128-bit state as JSON text)."""
    cuda = torch.cuda.get_rng_state_all() if device.type == "cuda" else []
    return {"torch": torch.get_rng_state(), "cuda": cuda, "sampler": json.dumps(sampler.bit_generator.state)}


def restore_rng(state: dict, device: torch.device) -> np.random.Generator:
    """Set torch's (and CUDA's) generators from `rng_state`'s dict; -> the frame-order sampler."""
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    sampler = np.random.default_rng()
    sampler.bit_generator.state = json.loads(state["sampler"])
    return sampler


def save_state(path: Path, state: dict) -> None:
    """Write a resume state (tensors and plain containers) atomically."""
    with atomic_path(path) as tmp:
        torch.save({"format": RESUME_FORMAT, "version": RESUME_VERSION, **state}, tmp)


def require_state(path: Path) -> None:
    """ResumeError unless `path` is a file (checked before the trainer's set-up too)."""
    if not path.is_file():
        finished = " (the run finished: ckpt.pt is there)" if (path.parent / "ckpt.pt").is_file() else ""
        raise ResumeError(f"{path}: no such file{finished}; nothing to resume, train without --resume")


def load_state(path: Path, config: dict, digest: str) -> dict:
    """Read `path` and check it belongs to the run of `config` (TrainConfig.to_dict with the
    densification resolved) on the dataset of `digest`; raises ResumeError otherwise."""
    require_state(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise ResumeError(f"{path}: not a readable resume state ({type(err).__name__}); delete it and "
                          "train without --resume") from None  # fmt: skip
    if not isinstance(state, dict) or state.get("format") != RESUME_FORMAT:
        raise ResumeError(f"{path}: not an EmbedTalk resume state")
    if state.get("version") != RESUME_VERSION:
        raise ResumeError(f"{path}: resume state version {state.get('version')}, this SDK reads {RESUME_VERSION}")
    missing = [k for k in ("config", "dataset_digest", "data_dir", "step") if k not in state]
    if missing:
        raise ResumeError(f"{path}: incomplete resume state (no {', '.join(missing)})")
    saved, current = _flatten(json.loads(state["config"])), _flatten(json.loads(json.dumps(config)))
    keys = [*current, *(k for k in saved if k not in current)]
    changed = [f"{k} {saved.get(k)!r} there, {current.get(k)!r} here" for k in keys if saved.get(k) != current.get(k)]
    if changed:
        raise ResumeError(f"{path}: made with a different config ({'; '.join(changed)})")
    if state["dataset_digest"] != digest:
        raise ResumeError(f"{path}: made on a different dataset than this one (trained on {state['data_dir']})")
    return state


def _flatten(d: dict, prefix: str = "") -> dict:
    """{"densify": {"every": 50}} -> {"densify.every": 50}: a changed field is named, not its block."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def remove_partials(out_dir: Path) -> list[Path]:
    """Delete the temporaries a killed run left of the run's own files (`.NAME.*.part`); -> them."""
    stale = [p for name in RUN_FILES for p in out_dir.glob(f".{name}.*.part")]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale
