"""The audio encoder's files in a bundle: a HuBERT checkpoint becomes an ONNX file (raw 16 kHz
samples in, last hidden state out), the phonetic encoder's GMM scorer an ONNX file rebuilt from
pocketsphinx's en-us model (checked against the graph training used) with the model's licence
notice; either inside the bundle or shared beside it. Mel and precomputed features need none. The
manifest's audio block records it (runtime/audio/encoders.py reads it)."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable, Mapping

from embedtalk_sdk.runtime.audio.encoders import EncoderWindows, HubertEncoder, PhoneticEncoder, shared_file_name
from embedtalk_sdk.runtime.fileio import atomic_write

IN_BUNDLE_NAME = "hubert.onnx"
PHONETIC_IN_BUNDLE_NAME = "phonetic_scorer.onnx"
PHONETIC_NOTICE_NAME = "LICENSE-acoustic-model.txt"  # CMU's and Alpha Cephei's notices: always in the bundle

# (audio block, encoder model path or None, bundle path, shared?, log) -> (block, blobs in the bundle)
FileWriter = Callable[[Mapping[str, Any], str | Path | None, Path, bool, Callable[[str], None]],
                      tuple[dict[str, Any], dict[str, bytes]]]


def _hubert_files(block: Mapping[str, Any], model_path: str | Path | None, out_path: Path, shared: bool,
                  log: Callable[[str], None]) -> tuple[dict[str, Any], dict[str, bytes]]:
    from embedtalk_sdk.audio.hubert import conv_windows, hubert_onnx, load_hubert

    if not model_path or not (Path(model_path) / "config.json").is_file():
        raise FileNotFoundError(f"{model_path}: the HuBERT checkpoint this avatar was trained with is not there; "
                                "pass --hubert-path DIR (a local copy of the same transformers checkpoint)")
    # ConfigError (a ValueError): a checkpoint from before windowed HuBERT
    windows = EncoderWindows.from_dict(block, "the checkpoint's audio block")
    module = load_hubert(model_path)
    got = (module.model.config.hidden_size, conv_windows(module).hop, conv_windows(module).receptive_field)
    want = (int(block["feature_dim"]), windows.hop, windows.receptive_field)
    if got != want:
        raise ValueError(f"{model_path}: hidden size, hop, receptive field {got} differ from training's {want}: "
                         "not the checkpoint this avatar was trained with")
    return _model_file(block, hubert_onnx(module), HubertEncoder.name, IN_BUNDLE_NAME, out_path, shared, log)


def _phonetic_files(block: Mapping[str, Any], model_path: str | Path | None, out_path: Path, shared: bool,
                    log: Callable[[str], None]) -> tuple[dict[str, Any], dict[str, bytes]]:
    from embedtalk_sdk.audio.phonetic_model import licence_notice, phonetic_scorer
    from embedtalk_sdk.runtime.audio.phonetic import SphinxSpec

    data = phonetic_scorer(SphinxSpec.from_dict(block["sphinx"], "the checkpoint's sphinx block"), model_path)
    if hashlib.sha256(data).hexdigest() != block.get("scorer_sha256"):
        raise ValueError("the phonetic scorer built from this pocketsphinx model differs from the one the avatar was "
                         "trained with (sha256): export with the pocketsphinx version used in training (5.1.1)")
    out_block, blobs = _model_file(block, data, PhoneticEncoder.name, PHONETIC_IN_BUNDLE_NAME, out_path, shared, log)
    return out_block, {**blobs, PHONETIC_NOTICE_NAME: licence_notice().encode()}


def _model_file(block: Mapping[str, Any], data: bytes, encoder: str, in_bundle_name: str, out_path: Path,
                shared: bool, log: Callable[[str], None]) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The block with its "model" entry, and the bundle's blob of `data` (none when shared beside it)."""
    sha = hashlib.sha256(data).hexdigest()
    name = shared_file_name(encoder, sha) if shared else in_bundle_name
    model = {"file": name, "sha256": sha, "bytes": len(data), "in_bundle": not shared}
    if not shared:
        return {**block, "model": model}, {name: data}
    target = out_path.parent / name
    if not (target.is_file() and hashlib.sha256(target.read_bytes()).hexdigest() == sha):  # else: already shared
        atomic_write(target, data)
    log(f"wrote the shared audio encoder {target} ({len(data) / 1e6:.1f} MB): keep it beside the bundle")
    return {**block, "model": model}, {}


_WRITERS: dict[str, FileWriter] = {HubertEncoder.name: _hubert_files, PhoneticEncoder.name: _phonetic_files}


def encoder_files(block: Mapping[str, Any], model_path: str | Path | None, out_path: Path, shared: bool = False,
                  log: Callable[[str], None] = print) -> tuple[dict[str, Any], dict[str, bytes]]:
    """(the bundle's audio block, the files it adds to the bundle) for a checkpoint's audio block.

    model_path: the encoder's source checkpoint (HuBERT: the local transformers folder; phonetic:
    the en-us model folder, default pocketsphinx's).
    shared: write the encoder file beside the bundle (out_path's folder) under a content-addressed
    name instead of into it; the manifest records its name and sha256 either way.
    """
    write = _WRITERS.get(block["encoder"])
    if write is None:  # mel and precomputed features: the block alone defines them
        return dict(block), {}
    return write(block, model_path, Path(out_path), shared, log)
