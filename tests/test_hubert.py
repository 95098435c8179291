"""HuBERT end to end on a tiny randomly initialised transformers HubertModel (no model hub): the
exported ONNX encoder equals transformers, a HuBERT avatar trained by the real Trainer plays with
torch blocked, speak == stream, and the encoder file is checked by its sha256."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from embedtalk_sdk.audio.hubert import conv_windows, hubert_encoder, hubert_onnx, load_hubert  # noqa: E402
from embedtalk_sdk.runtime.audio.encoders import (  # noqa: E402
    EncoderWindows,
    HubertEncoder,
    WindowedStreamer,
    onnx_runner,
    windowed_features,
)
from test_layout import BLOCK_TRAINING  # noqa: E402
from test_runtime import make_test_bundle  # noqa: E402

HIDDEN = 32  # = the default mel width, so the tiny HuBERT avatar has the mel avatar's geometry


@pytest.fixture(scope="session")
def tiny_hubert(tmp_path_factory) -> Path:
    """A save_pretrained folder of a 2-layer random HubertModel shaped like hubert-large-ls960-ft
    (layer-norm conv stack, stable layer norm, normalising feature extractor)."""
    path = tmp_path_factory.mktemp("hubert") / "tiny-hubert"
    cfg = transformers.HubertConfig(
        hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
        feat_extract_norm="layer", do_stable_layer_norm=True, vocab_size=32,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.HubertModel(cfg).eval().save_pretrained(path)
    transformers.Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_hubert_onnx(tiny_hubert, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("hubert-onnx") / "hubert.onnx"
    path.write_bytes(hubert_onnx(load_hubert(tiny_hubert)))
    return path


def clip(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.3 * np.sin(np.arange(int(seconds * 16000)) * 0.05) + 0.05 * rng.standard_normal(int(seconds * 16000))
            ).astype(np.float32)  # fmt: skip


def test_onnx_equals_transformers(tiny_hubert, tiny_hubert_onnx):
    """The ONNX (raw samples in) = Wav2Vec2FeatureExtractor + HubertModel.last_hidden_state."""
    extractor = transformers.Wav2Vec2FeatureExtractor.from_pretrained(tiny_hubert)
    model = transformers.HubertModel.from_pretrained(tiny_hubert).eval()
    run = onnx_runner(tiny_hubert_onnx)
    for seconds in (0.025, 0.3, 1.7):  # the receptive field alone, short, a few chunks' worth
        x = clip(seconds)
        inputs = extractor(x, sampling_rate=16000, return_tensors="pt").input_values
        with torch.no_grad():
            want = model(inputs).last_hidden_state[0].numpy()
        got = run(x)
        assert got.shape == want.shape == ((x.size - 400) // 320 + 1, HIDDEN)
        assert np.abs(got - want).max() < 1e-4


def test_training_and_playback_features_agree(tiny_hubert, tiny_hubert_onnx):
    """Training's torch encoder and playback's ONNX give the same windowed rows (within 1e-4)."""
    train_enc = hubert_encoder(tiny_hubert)
    assert train_enc.windows == conv_windows(load_hubert(tiny_hubert)) == EncoderWindows()
    play_enc = HubertEncoder(onnx_runner(tiny_hubert_onnx), HIDDEN)
    x = clip(2.3)
    a, b = train_enc.features(x), play_enc.features(x)
    assert a.shape == b.shape == (EncoderWindows().n_rows(x.size), HIDDEN)
    assert np.abs(a - b).max() < 1e-4


@pytest.mark.parametrize("seconds", [0.01, 0.025, 0.5, 1.37, 3.0])
def test_windowed_stream_equals_whole_clip(tiny_hubert_onnx, seconds):
    """The streamer's rows are the whole-clip rows bit for bit, for any chunking; memory bounded."""
    run, w = onnx_runner(tiny_hubert_onnx), EncoderWindows()
    x = clip(seconds, seed=2)
    whole = windowed_features(x, run, w)
    rng = np.random.default_rng(int(seconds * 100))
    streamer, rows, i, most = WindowedStreamer(run, w, HIDDEN), [], 0, 0
    while i < x.size:
        k = int(rng.integers(1, 2500))
        rows.append(streamer.feed(x[i : i + k]))
        most, i = max(most, streamer._buf.size), i + k
        if i < x.size:  # mid-stream: exactly the chunks whose whole span arrived
            done = sum(w.span(a)[1] <= i for a in range(0, w.n_rows(i) + 1, w.chunk_rows))
            assert sum(r.shape[0] for r in rows) == done * w.chunk_rows
    rows.append(streamer.flush())
    assert np.array_equal(np.concatenate(rows), whole)
    assert most <= np.subtract(*w.span(10**6)[::-1]) + 2500  # one full span + one chunk fed


def test_hubert_checkpoint_without_windows_or_model_is_refused(tmp_path):
    from embedtalk_sdk.export.audio_encoder import encoder_files

    block = {"encoder": "hubert", "rate": 50.0, "feature_dim": HIDDEN, "window": 16}
    with pytest.raises(FileNotFoundError, match="--hubert-path"):
        encoder_files(block, tmp_path / "nowhere", tmp_path / "a.etk")


# ---------------------------------------------------------------- a trained HuBERT avatar


@pytest.fixture(scope="session")
def hubert_avatar(tiny_dataset, tiny_hubert, tmp_path_factory) -> dict:
    """A HuBERT avatar from the real Trainer (as `trained_avatar`, audio_encoder hubert), exported
    with the encoder inside the bundle and, for a second bundle, shared beside it."""
    from embedtalk_sdk.export.exporter import export_bundle
    from embedtalk_sdk.train.strategy import DensifyConfig
    from embedtalk_sdk.train.trainer import TrainConfig, Trainer

    run = tmp_path_factory.mktemp("hubert-run")
    cfg = TrainConfig(iterations=60, init_points=1500, lpips_every=0, audio_encoder="hubert",
                      hubert_path=str(tiny_hubert), densify=DensifyConfig(start=20, stop=50, every=20))  # fmt: skip
    Trainer(tiny_dataset, cfg, log=lambda m: None).run(run)
    inside = export_bundle(run / "ckpt.pt", run / "inside" / "avatar.etk", log=lambda m: None)
    shared = export_bundle(run / "ckpt.pt", run / "shared" / "avatar.zip", log=lambda m: None, shared_encoder=True)
    return {"ckpt": run / "ckpt.pt", "inside": inside, "shared": shared, "data": tiny_dataset}


def test_hubert_manifest(hubert_avatar):
    from embedtalk_sdk.runtime.bundle import Bundle

    inside = Bundle.open(hubert_avatar["inside"]).manifest["audio"]
    shared = Bundle.open(hubert_avatar["shared"]).manifest
    assert inside["encoder"] == "hubert" and inside["feature_dim"] == HIDDEN and inside["rate"] == 50.0
    assert inside["model"]["in_bundle"] and inside["model"]["file"] in Bundle.open(hubert_avatar["inside"]).files
    model = shared["audio"]["model"]
    assert not model["in_bundle"] and model["file"] not in shared["files"]
    assert model["sha256"] == inside["model"]["sha256"]  # the same encoder, one copy beside many avatars
    assert (hubert_avatar["shared"].parent / model["file"]).is_file()


PLAY = """
import json, sys
import numpy as np
from embedtalk_sdk.runtime.avatar import Avatar
from embedtalk_sdk.runtime.audio.io import load_audio
bundle, wav, out = sys.argv[1:4]
avatar = Avatar.load(bundle, backend="onnxruntime")
audio = load_audio(wav, 16000)
spoken = avatar.speak(audio, sample_rate=16000)
rng = np.random.default_rng(0)
cuts = np.cumsum(rng.integers(1, 3000, 200))
chunks = np.split(audio, cuts[cuts < audio.size])
streamed = np.stack(list(avatar.stream(chunks)))
np.savez(out, spoken=spoken, streamed=streamed)
print(json.dumps({"torch": "torch" in sys.modules, "encoder": avatar.audio_encoder.name}))
"""


def test_hubert_avatar_speaks_and_streams_without_torch(hubert_avatar, tmp_path):
    """Playback with torch and transformers blocked: speak and stream give identical frames."""
    wav = hubert_avatar["data"] / "aud.wav"
    for key in ("inside", "shared"):
        out = tmp_path / f"{key}.npz"
        code = BLOCK_TRAINING + PLAY
        result = subprocess.run([sys.executable, "-c", code, str(hubert_avatar[key]), str(wav), str(out)],
                                capture_output=True, text=True, timeout=300)  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        assert json.loads(result.stdout.strip().splitlines()[-1]) == {"torch": False, "encoder": "hubert"}
        frames = np.load(out)
        assert frames["spoken"].shape[0] > 50 and frames["spoken"].std() > 1
        assert np.array_equal(frames["spoken"], frames["streamed"])


def test_hubert_bundle_features_match_training(hubert_avatar, tiny_hubert):
    """The bundle computes the rows the network was trained on (ONNX vs torch, within 1e-4)."""
    from embedtalk_sdk.audio.features import FeatureSource, dataset_features
    from embedtalk_sdk.runtime.avatar import Avatar

    wav = hubert_avatar["data"] / "aud.wav"
    _, train_rows = dataset_features("hubert", FeatureSource(wav, tiny_hubert))
    avatar = Avatar.load(hubert_avatar["inside"], backend="onnxruntime")
    assert np.abs(avatar.audio_features(wav) - train_rows).max() < 1e-4


def test_encoder_file_is_checked(hubert_avatar, tiny_hubert_onnx, tmp_path):
    from embedtalk_sdk.runtime.avatar import Avatar
    from embedtalk_sdk.runtime.bundle import Bundle, BundleError

    shared = hubert_avatar["shared"]
    name = Bundle.open(shared).manifest["audio"]["model"]["file"]
    # Moved away from its encoder: refused, saying where to put it or how to pass it.
    alone = tmp_path / "alone" / shared.name
    alone.parent.mkdir()
    shutil.copy(shared, alone)
    with pytest.raises(BundleError, match=rf"needs its audio encoder {name}.*encoder_file="):
        Avatar.load(alone, backend="onnxruntime")
    # The app passes the shared file's path: accepted.
    assert Avatar.load(alone, backend="onnxruntime", encoder_file=shared.parent / name).audio_encoder.name == "hubert"
    # A corrupt copy beside it, or another model passed by path: refused by its sha256.
    corrupt = alone.parent / name
    data = bytearray((shared.parent / name).read_bytes())
    data[len(data) // 2] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="is not the audio encoder of bundle"):
        Avatar.load(alone, backend="onnxruntime")
    other = tmp_path / "other.onnx"
    other.write_bytes(tiny_hubert_onnx.read_bytes() + b"\0")
    with pytest.raises(BundleError, match="is not the audio encoder of bundle"):
        Avatar.load(alone, backend="onnxruntime", encoder_file=other)
    # Inside the bundle: the bundle's own sha256 table refuses a changed file.
    inside = tmp_path / "inside.etk"
    shutil.copytree(hubert_avatar["inside"], inside)
    onnx_file = inside / Bundle.open(inside).manifest["audio"]["model"]["file"]
    data = bytearray(onnx_file.read_bytes())
    data[-10] ^= 0xFF
    onnx_file.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"hubert\.onnx is corrupt"):
        Avatar.load(inside, backend="onnxruntime")


def test_manifest_cannot_point_outside_the_bundle(hubert_avatar, tmp_path):
    from embedtalk_sdk.export.bundle import write_bundle
    from embedtalk_sdk.runtime.avatar import Avatar
    from embedtalk_sdk.runtime.bundle import Bundle, BundleError

    src = Bundle.open(hubert_avatar["inside"])
    arrays = {n[:-4]: src.array(n) for n in src.files if n.endswith(".npy")}
    blobs = {n: src.bytes_of(n) for n in src.files if not n.endswith(".npy")}
    manifest = {k: v for k, v in src.manifest.items() if k not in ("format", "format_version", "sdk_version", "files")}
    for evil in ("../hubert.onnx", "/etc/hubert.onnx", "sub/hubert.onnx"):
        audio = {**manifest["audio"], "model": {**manifest["audio"]["model"], "file": evil, "in_bundle": False}}
        path = write_bundle(tmp_path / f"e{len(evil)}.etk", {**manifest, "audio": audio}, arrays, blobs)
        with pytest.raises(BundleError, match="must be a bare .onnx file name"):
            Avatar.load(path, backend="onnxruntime")


def test_features_bundle_cannot_stream(tmp_path):
    from embedtalk_sdk.runtime.avatar import Avatar

    audio = {"encoder": "features", "window": 16, "feature_dim": 32, "rate": 50}
    avatar = Avatar.load(make_test_bundle(tmp_path / "f.etk", audio=audio), backend="onnxruntime")
    with pytest.raises(ValueError, match="cannot stream audio: .*pass features="):
        avatar.stream([clip(0.5)])
