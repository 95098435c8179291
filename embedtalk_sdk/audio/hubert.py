"""HuBERT from a local transformers checkpoint, as one torch module from raw 16 kHz samples.

`RawHubert` is what training runs (through `EncoderWindows`, like playback) and what export turns
into the bundle's ONNX encoder, so both apply the same input normalisation and give the same rows.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch

from embedtalk_sdk.runtime.audio.encoders import EncoderWindows, HubertEncoder

HINT = "give a local copy of facebook/hubert-large-ls960-ft (a transformers save_pretrained folder)"


class RawHubert(torch.nn.Module):
    """samples float32 [B, S] at 16 kHz -> HubertModel last_hidden_state [B, M, hidden].

    Applies what Wav2Vec2FeatureExtractor does to a single unpadded clip first: with do_normalize,
    (x - mean) / sqrt(var + 1e-7) over the clip (here: over each encoder window).
    """

    def __init__(self, model: torch.nn.Module, normalize: bool) -> None:
        super().__init__()
        self.model, self.normalize = model, bool(normalize)

    def forward(self, samples: torch.Tensor) -> torch.Tensor:
        x = samples
        if self.normalize:
            mean = x.mean(dim=-1, keepdim=True)
            var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
            x = (x - mean) / torch.sqrt(var + 1e-7)
        return self.model(x).last_hidden_state


def load_hubert(model_path: str | Path, device: str = "cpu") -> RawHubert:
    """The checkpoint at model_path (config + weights + preprocessor_config.json), in eval mode."""
    from transformers import HubertModel, Wav2Vec2FeatureExtractor

    model_path = Path(model_path)
    if not (model_path / "config.json").is_file():
        raise FileNotFoundError(f"{model_path}: no HuBERT checkpoint there ({HINT})")
    extractor = Wav2Vec2FeatureExtractor.from_pretrained(model_path)
    if extractor.sampling_rate != 16000:
        raise ValueError(f"{model_path}: the feature extractor expects {extractor.sampling_rate} Hz, not 16 kHz")
    model = HubertModel.from_pretrained(model_path).to(device).eval()
    return RawHubert(model, extractor.do_normalize).eval()


def conv_windows(module: RawHubert) -> EncoderWindows:
    """EncoderWindows with the model's hop and receptive field (conv stack strides and kernels)."""
    cfg = module.model.config
    hop, field = 1, 1
    for kernel, stride in zip(cfg.conv_kernel, cfg.conv_stride):
        field += (kernel - 1) * hop
        hop *= stride
    return EncoderWindows(hop=hop, receptive_field=field)


def hubert_encoder(model_path: str | Path, device: str = "cpu") -> HubertEncoder:
    """The training-side HubertEncoder: the torch model of model_path, in the playback windows."""
    module = load_hubert(model_path, device)

    def run(samples: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(samples)[None].to(device))[0].cpu().numpy()

    return HubertEncoder(run, module.model.config.hidden_size, conv_windows(module))


def hubert_onnx(module: RawHubert) -> bytes:
    """The bundle's encoder ONNX of `module` (on the CPU): input "samples" float32 [1, S] (any
    S >= receptive field), output "features" float32 [1, M, hidden]; the normalisation is part of
    the graph."""
    example = torch.zeros(1, 16000)
    buf = io.BytesIO()
    with warnings.catch_warnings():  # the tracer's notes on HuBERT's shape arithmetic; S stays dynamic
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), buf, input_names=["samples"], output_names=["features"],
                          dynamic_axes={"samples": {1: "samples"}, "features": {1: "rows"}},
                          opset_version=17, dynamo=False)  # fmt: skip
    return buf.getvalue()
