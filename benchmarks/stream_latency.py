"""Streaming first-frame latency, mel vs HuBERT, on the same bundle geometry.

    python benchmarks/stream_latency.py [--bundle MEL.etk] [--phonetic PHONETIC.etk] [--runs 5] [--base-size]
        [-o latency.json]

Latency = wall time from the first 20 ms chunk handed to `Avatar.stream` to the first frame out,
with the chunks arriving in real time (one every 20 ms, each when its last sample was spoken; add
20 ms for the time since speech began). It is the audio the first frame needs beyond the first
chunk (the encoder's lookahead + the network's window) plus the compute on the way.

The HuBERT bundle is the mel bundle with its audio block replaced by a HuBERT encoder: a tiny
RANDOMLY INITIALISED transformers HubertModel (2 layers, hidden = the bundle's feature width), so
the network, Gaussians and resolution are the same and only the encoder differs. Its compute is
far below a real HuBERT-large's; --base-size also times one encoder window of a random
HuBERT-base-sized model (12 layers, 768 wide) on this CPU, for scale. Without --bundle, a tiny
avatar is trained first (synthetic data, 60 steps, as tests/conftest.py does).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from embedtalk_sdk.audio.hubert import RawHubert, conv_windows, hubert_onnx
from embedtalk_sdk.export.bundle import write_bundle
from embedtalk_sdk.runtime.audio.encoders import HubertEncoder, PhoneticEncoder, onnx_runner
from embedtalk_sdk.runtime.audio.speech import synthesize_speech
from embedtalk_sdk.runtime.avatar import Avatar
from embedtalk_sdk.runtime.bundle import Bundle

CHUNK = 320  # 20 ms at 16 kHz
FORMAT_KEYS = ("format", "format_version", "sdk_version", "files")


def tiny_mel_bundle(work: Path) -> Path:
    from embedtalk_sdk.export.exporter import export_bundle
    from embedtalk_sdk.synthetic.synth import synthesize_dataset
    from embedtalk_sdk.train.strategy import DensifyConfig
    from embedtalk_sdk.train.trainer import TrainConfig, Trainer

    data = synthesize_dataset(work / "data", seconds=4.4, size=64, seed=3, n_points=6000)
    cfg = TrainConfig(iterations=60, init_points=1500, lpips_every=0, audio_encoder="mel",
                      densify=DensifyConfig(start=20, stop=50, every=20))
    Trainer(data, cfg, log=lambda m: None).run(work / "run")
    return export_bundle(work / "run" / "ckpt.pt", work / "mel.etk", log=lambda m: None)


def random_hubert(hidden: int, layers: int, heads: int, ffn: int, conv: int) -> RawHubert:
    import torch
    import transformers

    cfg = transformers.HubertConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                                    intermediate_size=ffn, conv_dim=(conv,) * 7, feat_extract_norm="layer",
                                    do_stable_layer_norm=True)  # fmt: skip
    torch.manual_seed(0)
    return RawHubert(transformers.HubertModel(cfg).eval(), normalize=True).eval()


def hubert_variant(mel: Path, out: Path, module: RawHubert) -> Path:
    """The mel bundle with a HuBERT encoder (inside it) instead of its mel block."""
    src = Bundle.open(mel)
    data = hubert_onnx(module)
    model = {"file": "hubert.onnx", "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "in_bundle": True}
    dim = int(src.manifest["audio"]["feature_dim"])
    block = HubertEncoder(lambda x: x, dim, conv_windows(module), model).block()
    manifest = {k: v for k, v in src.manifest.items() if k not in FORMAT_KEYS}
    manifest["audio"] = {**block, "window": src.manifest["audio"]["window"]}
    arrays = {n[: -len(".npy")]: src.array(n) for n in src.files if n.endswith(".npy")}
    blobs = {n: src.bytes_of(n) for n in src.files if not n.endswith(".npy")}
    return write_bundle(out, manifest, arrays, {**blobs, "hubert.onnx": data})


def paced(audio: np.ndarray, start: list[float]) -> Iterator[np.ndarray]:
    """20 ms chunks, each handed over when its last sample was spoken (as a capture buffer
    delivers them), the first at once; start[0] = the first hand-over."""
    t0 = time.perf_counter()
    start.append(t0)
    for k in range(0, audio.size, CHUNK):
        wait = t0 + k / 16000 - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        yield audio[k : k + CHUNK]


def first_frame_latency(avatar: Avatar, audio: np.ndarray) -> float:
    start: list[float] = []
    stream = avatar.stream(paced(audio, start))
    next(stream)
    latency = time.perf_counter() - start[0]
    stream.close()
    return latency


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, help="a mel bundle (default: train a tiny one)")
    parser.add_argument("--phonetic", type=Path, help="also time this phonetic bundle (train it like --bundle)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--base-size", action="store_true", help="also time a HuBERT-base-sized encoder window")
    parser.add_argument("-o", "--out", type=Path, default=Path("stream_latency.json"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="stream-latency-"))
    mel = args.bundle or tiny_mel_bundle(work)
    dim = int(Bundle.open(mel).manifest["audio"]["feature_dim"])
    hubert = hubert_variant(mel, work / "hubert.etk", random_hubert(dim, layers=2, heads=2, ffn=64, conv=16))
    audio = synthesize_speech(3.0, seed=1).samples.astype(np.float32)
    report: dict = {"bundle": str(mel), "chunk_ms": 1000 * CHUNK / 16000, "runs": args.runs, "results": []}
    bundles = [("mel", mel), ("hubert (tiny random, 2 layers)", hubert)]
    for name, path in bundles + ([("phonetic", args.phonetic)] if args.phonetic else []):
        avatar = Avatar.load(path, backend="onnxruntime")
        first_frame_latency(avatar, audio)  # warm-up: numba compile, onnxruntime's first run
        runs = [first_frame_latency(avatar, audio) for _ in range(args.runs)]
        enc = avatar.audio_encoder
        rows = avatar_rows(avatar)
        # The audio frame 0 needs: HuBERT's chunk with its lookahead; mel's row rows-1 (centred, n_fft / 2 past it).
        needed = (enc.windows.samples_for_rows(rows) if isinstance(enc, HubertEncoder)
                  else samples_until_rows(enc, audio, rows) if isinstance(enc, PhoneticEncoder)
                  else (rows - 1) * enc.spec.hop + enc.spec.n_fft // 2)  # fmt: skip
        report["results"].append({
            "encoder": name, "first_frame_ms_median": round(1000 * statistics.median(runs), 1),
            "first_frame_ms_runs": [round(1000 * r, 1) for r in runs],
            "audio_needed_ms": 1000 * needed / 16000,  # from the start of speech
            # the wait for the chunk that completes that audio, minus the first chunk: the rest is compute
            "compute_ms": round(1000 * (statistics.median(runs) - (-(-needed // CHUNK) - 1) * CHUNK / 16000), 1),
        })  # fmt: skip
    if args.base_size:
        base = random_hubert(768, layers=12, heads=12, ffn=3072, conv=512)
        (work / "base.onnx").write_bytes(hubert_onnx(base))
        run = onnx_runner(work / "base.onnx")
        w = conv_windows(base)
        span = np.subtract(*w.span(10**6)[::-1])  # a full window: left context + chunk + lookahead
        x = audio[:span]
        run(x)
        times = []
        for _ in range(args.runs):
            t = time.perf_counter()
            run(x)
            times.append(time.perf_counter() - t)
        report["hubert_base_size_window_ms"] = round(1000 * statistics.median(times), 1)
        report["hubert_base_size_window_s_of_audio"] = span / 16000
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


def samples_until_rows(enc, audio: np.ndarray, rows: int) -> int:
    """Samples a fresh streamer of `enc` takes (fed one by one) before it gives `rows` rows (phonetic:
    row k at sample 320 k + 890, its 2-frame groups included)."""
    streamer, out = enc.streamer(), 0
    for n in range(audio.size):
        out += len(streamer.feed(audio[n : n + 1]))
        if out >= rows:
            return n + 1
    raise ValueError(f"{rows} rows need more than {audio.size} samples")


def avatar_rows(avatar: Avatar) -> int:
    """Feature rows frame 0's window needs (rows_needed(0))."""
    from embedtalk_sdk.runtime.audio.mel import rows_needed

    window = int(avatar.bundle.manifest["audio"]["window"])
    return rows_needed(0, avatar.fps, avatar.audio_encoder.rate, window)


if __name__ == "__main__":
    main()
