"""Audio features for training: log-mel (default), HuBERT from a local path, or a precomputed array.

All three give rows at 50 Hz, so `frame_windows` cuts the same 16-row window per video frame.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from embedtalk_sdk.runtime.audio.io import load_audio
from embedtalk_sdk.runtime.audio.mel import MelSpec, log_mel

ENCODERS = ("mel", "hubert", "features")


def mel_features(audio_path: str | Path, spec: MelSpec = MelSpec()) -> np.ndarray:
    """[M, n_mels] log-mel rows at 50 Hz."""
    return log_mel(load_audio(audio_path, spec.sample_rate), spec)


def precomputed_features(path: str | Path) -> np.ndarray:
    """An ER-NeRF / TalkingGaussian `aud_hu.npy`: [M, D] or [M, 2, D] (two 50 Hz rows per frame)."""
    arr = np.load(path, allow_pickle=False).astype(np.float32)
    if arr.ndim == 3:
        arr = arr.reshape(-1, arr.shape[-1])
    if arr.ndim != 2 or not np.isfinite(arr).all():
        raise ValueError(f"{path}: expected finite features of shape [M, D] or [M, 2, D], got {arr.shape}")
    return arr


def hubert_features(audio_path: str | Path, model_path: str | Path, device: str = "cpu") -> np.ndarray:
    """[M, hidden] last-layer HuBERT features at 50 Hz from a local transformers checkpoint."""
    import torch
    from transformers import HubertModel, Wav2Vec2FeatureExtractor

    model_path = Path(model_path)
    if not model_path.exists():
        raise FileNotFoundError(f"{model_path}: no HuBERT checkpoint there (give a local facebook/hubert-large-ls960-ft copy)")
    samples = load_audio(audio_path, 16000)
    extractor = Wav2Vec2FeatureExtractor.from_pretrained(model_path)
    model = HubertModel.from_pretrained(model_path).to(device).eval()
    inputs = extractor(samples, sampling_rate=16000, return_tensors="pt").input_values.to(device)
    with torch.no_grad():
        feats = model(inputs).last_hidden_state[0].cpu().numpy()
    return feats.astype(np.float32)


def dataset_features(audio_path: Path, encoder: str, hubert_path: str | None = None, features_path: Path | None = None) -> np.ndarray:
    """Features of a dataset's audio with the chosen encoder."""
    if encoder == "mel":
        return mel_features(audio_path)
    if encoder == "hubert":
        if not hubert_path:
            raise ValueError("--audio-encoder hubert needs --hubert-path pointing at a local HuBERT checkpoint")
        return hubert_features(audio_path, hubert_path)
    if encoder == "features":
        if features_path is None or not Path(features_path).is_file():
            raise FileNotFoundError(f"{features_path}: --audio-encoder features needs the dataset's aud_hu.npy")
        return precomputed_features(features_path)
    raise ValueError(f"unknown audio encoder {encoder!r}; choose one of {', '.join(ENCODERS)}")
