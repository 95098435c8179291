"""Audio features for training, keyed by the runtime's encoders (runtime/audio/encoders.py):
phone posteriors (pocketsphinx's en-us model), log-mel, HuBERT from a local transformers
checkpoint, or a precomputed array.

Each gives the `AudioEncoder` whose block goes into the checkpoint (and so the bundle) together
with the dataset's rows at 50 Hz, so `frame_windows` cuts the same 16-row window per video frame
in training and at playback.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple

import numpy as np

from embedtalk_sdk.runtime.audio.encoders import (
    SAMPLE_RATE,
    AudioEncoder,
    FeaturesEncoder,
    HubertEncoder,
    MelEncoder,
    PhoneticEncoder,
    onnx_scorer,
)
from embedtalk_sdk.runtime.audio.io import load_audio
from embedtalk_sdk.runtime.audio.mel import MelSpec
from embedtalk_sdk.runtime.audio.phonetic import SphinxSpec


class FeatureSource(NamedTuple):
    """Where a dataset's features come from: its audio, a HuBERT checkpoint, its aud_hu.npy."""

    audio_path: Path
    hubert_path: str | Path | None = None
    features_path: Path | None = None
    block: Mapping[str, Any] | None = None  # a checkpoint's audio block: recompute its exact features


def mel_features(audio_path: str | Path, spec: MelSpec = MelSpec()) -> np.ndarray:
    """[M, n_mels] log-mel rows at 50 Hz (the "mel" encoder's rows of a file)."""
    return MelEncoder(spec).features(load_audio(audio_path, spec.sample_rate))


def precomputed_features(path: str | Path) -> np.ndarray:
    """An ER-NeRF / TalkingGaussian `aud_hu.npy`: [M, D] or [M, 2, D] (two 50 Hz rows per frame)."""
    arr = np.load(path, allow_pickle=False).astype(np.float32)
    if arr.ndim == 3:
        arr = arr.reshape(-1, arr.shape[-1])
    if arr.ndim != 2 or not np.isfinite(arr).all():
        raise ValueError(f"{path}: expected finite features of shape [M, D] or [M, 2, D], got {arr.shape}")
    return arr


def hubert_features(audio_path: str | Path, model_path: str | Path, device: str = "cpu") -> np.ndarray:
    """[M, hidden] last-layer HuBERT rows at 50 Hz from a local transformers checkpoint, computed
    in the windows playback uses (runtime/audio/encoders.py EncoderWindows)."""
    from embedtalk_sdk.audio.hubert import hubert_encoder

    return hubert_encoder(model_path, device).features(load_audio(audio_path, SAMPLE_RATE))


def _mel(src: FeatureSource) -> tuple[AudioEncoder, np.ndarray]:
    enc = MelEncoder()
    return enc, mel_features(src.audio_path, enc.spec)


def phonetic_encoder(spec: SphinxSpec = SphinxSpec(), mel: MelSpec | None = MelSpec()) -> PhoneticEncoder:
    """The phonetic encoder with its scorer built from pocketsphinx's en-us model (the graph export
    writes into the bundle, run by onnxruntime here too, so training sees playback's rows); mel:
    the log-mel rows appended to the posteriors (None: posteriors only)."""
    from embedtalk_sdk.audio.phonetic_model import phonetic_scorer, scorer_sha256

    data = phonetic_scorer(spec)
    return PhoneticEncoder(onnx_scorer(data), spec, scorer_sha256(data), mel=mel)


def _phonetic_builder(mel: MelSpec | None) -> Callable[[FeatureSource], tuple[AudioEncoder, np.ndarray]]:
    def build(src: FeatureSource) -> tuple[AudioEncoder, np.ndarray]:
        if src.block:  # a checkpoint's features, with log-mel rows exactly if it was trained with them
            block = src.block
            block_mel = MelSpec.from_dict(block["mel"], "the checkpoint's mel block") if "mel" in block else None
            enc = phonetic_encoder(SphinxSpec.from_dict(block["sphinx"], "the checkpoint's sphinx block"), block_mel)
        else:
            enc = phonetic_encoder(mel=mel)
        return enc, enc.features(load_audio(src.audio_path, SAMPLE_RATE))

    return build


def _hubert(src: FeatureSource) -> tuple[AudioEncoder, np.ndarray]:
    from embedtalk_sdk.audio.hubert import hubert_encoder

    if not src.hubert_path:
        raise ValueError("--audio-encoder hubert needs --hubert-path pointing at a local HuBERT checkpoint")
    enc = hubert_encoder(src.hubert_path)
    return enc, enc.features(load_audio(src.audio_path, SAMPLE_RATE))


def _precomputed(src: FeatureSource) -> tuple[AudioEncoder, np.ndarray]:
    if src.features_path is None or not Path(src.features_path).is_file():
        raise FileNotFoundError(f"{src.features_path}: --audio-encoder features needs the dataset's aud_hu.npy")
    feats = precomputed_features(src.features_path)
    return FeaturesEncoder(feats.shape[1], where=f"an avatar trained on {src.features_path}"), feats


_BUILDERS: dict[str, Callable[[FeatureSource], tuple[AudioEncoder, np.ndarray]]] = {
    MelEncoder.name: _mel,
    PhoneticEncoder.name: _phonetic_builder(MelSpec()),  # posteriors + log-mel: the measured best
    "phonetic-posteriors": _phonetic_builder(None),  # the 42 posteriors alone
    HubertEncoder.name: _hubert,
    FeaturesEncoder.name: _precomputed,
}


def dataset_features(encoder: str, src: FeatureSource) -> tuple[AudioEncoder, np.ndarray]:
    """(the encoder named `encoder`, the dataset's rows float32 [M, encoder.dim] at encoder.rate)."""
    build = _BUILDERS.get(encoder)
    if build is None:
        raise ValueError(f"unknown audio encoder {encoder!r}; choose one of {', '.join(_BUILDERS)}")
    return build(src)
