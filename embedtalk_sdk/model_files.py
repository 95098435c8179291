"""Where the SDK finds the model files it does not ship: one resolver for every one of them.

MediaPipe's face landmarker and selfie segmentation (preprocess, eval) and LPIPS's AlexNet
backbone (train, eval) are downloaded by the user, never by the SDK (no model hub is assumed).
A file is looked for, in this order:

1. the path the caller gives (a CLI option such as `--face-model`, or a function argument): used
   as given, never replaced by a file found elsewhere;
2. the folder named by the environment variable `EMBEDTALK_MODELS`;
3. the user cache folder, `$XDG_CACHE_HOME/embedtalk/models` (`~/.cache/embedtalk/models` when
   XDG_CACHE_HOME is unset).

A file found nowhere raises `ModelFileError`, naming the file and the three places. Nothing here
depends on where the SDK is installed, so an editable checkout and a wheel find the same files.
Standard library and the error root only: preprocessing and training both import it, playback
(`runtime/`) never needs it.
"""
from __future__ import annotations

import os
from pathlib import Path

from embedtalk_sdk.runtime.errors import EmbedTalkError

ENV_VAR = "EMBEDTALK_MODELS"

FACE_LANDMARKER = "face_landmarker.task"
SELFIE_SEGMENTATION = "selfie_segmentation.tflite"
LPIPS_BACKBONE = "lpips_alexnet_features.pth"

# What each file is, for the error message.
DESCRIPTIONS = {
    FACE_LANDMARKER: "MediaPipe Face Landmarker v2 with blendshapes",
    SELFIE_SEGMENTATION: "MediaPipe selfie segmentation",
    LPIPS_BACKBONE: "LPIPS's AlexNet backbone, a torchvision alexnet().features state dict",
}


class ModelFileError(EmbedTalkError, FileNotFoundError, ValueError):
    """A model file found nowhere; the message names the file, every place looked and how to fix it.

    A FileNotFoundError (it is one) and a ValueError, as the SDK's other input errors are."""


def cache_dir() -> Path:
    """The user cache folder for model files: $XDG_CACHE_HOME/embedtalk/models or ~/.cache/embedtalk/models."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"  # the XDG spec ignores relative paths
    return base / "embedtalk" / "models"


def model_file(name: str, given: str | Path | None = None, option: str | None = None, otherwise: str = "") -> Path:
    """The path of model file `name`: `given` if not None, else the first of $EMBEDTALK_MODELS/name
    and cache_dir()/name that exists.

    option: how a user gives the path (e.g. "--face-model"); otherwise: a way to do without the file
    (e.g. "train without LPIPS: --no-lpips"); both for the error message.
    Raises ModelFileError when `given` is not a file, or when no place holds `name`.
    """
    what = DESCRIPTIONS.get(name, "model file")
    if given is not None:
        path = Path(given)
        if not path.is_file():
            raise ModelFileError(f"{path}: no such {what} file ({name}), given by {option or 'the caller'}; "
                                 "check the path")
        return path
    env = os.environ.get(ENV_VAR, "")
    candidates = ([Path(env) / name] if env else []) + [cache_dir() / name]
    for path in candidates:
        if path.is_file():
            return path
    raise ModelFileError(_not_found(name, what, option, env) + (f"; or {otherwise}" if otherwise else ""))


def _not_found(name: str, what: str, option: str | None, env: str) -> str:
    looked = [
        f"1. {option or 'an explicit path'}: not given",
        f"2. ${ENV_VAR}: " + (f"{Path(env) / name} does not exist" if env else "not set"),
        f"3. the user cache: {cache_dir() / name} does not exist",
    ]
    fix = f"pass its path with {option}, or put it" if option else "put it"
    return (f"model file {name} ({what}) not found; looked in: " + "; ".join(looked) + f". To fix: {fix} "
            f"in a folder and set {ENV_VAR} to that folder, or copy it into {cache_dir()} "
            "(README, 'Model files', says where each file comes from)")
