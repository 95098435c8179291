"""The phonetic audio encoder: sphinx's front end against pocketsphinx's own decoder, the ONNX scorer
against the numpy reference, streaming bit for bit, and an avatar trained with it that plays with
torch and pocketsphinx both blocked."""
from __future__ import annotations

import difflib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pocketsphinx = pytest.importorskip("pocketsphinx")
pytest.importorskip("onnx")

from embedtalk_sdk.audio.phonetic_model import (  # noqa: E402
    PHONES, AcousticModel, ScorerWeights, reference_posteriors, scorer_onnx,
)
from embedtalk_sdk.runtime.audio.encoders import PhoneticEncoder, onnx_scorer  # noqa: E402
from embedtalk_sdk.runtime.audio.mel import MelSpec, log_mel  # noqa: E402
from embedtalk_sdk.runtime.audio.phonetic import (  # noqa: E402
    FEATURE_DIM, GROUP, N_PHONES, PhoneticStreamer, SphinxSpec, sphinx_cepstra,
)
from test_layout import TORCH_SIDE, blocker  # noqa: E402

SENTENCE = "please call me back tomorrow morning"


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """An English sentence from eSpeak NG at 16 kHz (the serve extra's offline TTS)."""
    tts = pytest.importorskip("embedtalk_sdk.serve.tts")
    from embedtalk_sdk.runtime.audio.io import prepare_audio

    samples, rate = tts.EspeakTTS().synthesize(SENTENCE)
    return prepare_audio(samples, rate, 16000)


@pytest.fixture(scope="module")
def scorer_bytes() -> bytes:
    return scorer_onnx(ScorerWeights.of(AcousticModel.load()), SphinxSpec().temperature)


def decode(decoder, pcm: np.ndarray | None = None, cep: np.ndarray | None = None) -> str:
    decoder.start_utt()
    if pcm is not None:
        decoder.process_raw(pcm.tobytes(), full_utt=True)
    else:
        decoder.process_cep(cep.tobytes(), full_utt=True)
    decoder.end_utt()
    return decoder.hyp().hypstr if decoder.hyp() else ""


def test_front_end_gives_the_decoders_own_words(speech):
    """pocketsphinx decodes our cepstra (process_cep) to the words it finds in the raw audio:
    the numpy front end, noise removal included, is the wheel's."""
    pcm = np.clip(np.round(speech * 32768), -32768, 32767).astype(np.int16)
    decoder = pocketsphinx.Decoder(loglevel="ERROR")
    from_raw = decode(decoder, pcm=pcm)
    from_ours = decode(decoder, cep=sphinx_cepstra(pcm / 32768.0, SphinxSpec(dither=0.0)))
    assert len(from_raw.split()) >= 3, from_raw
    assert from_ours == from_raw
    # Without sphinx's noise removal (which the model's feat.params forces on) the words differ:
    # the comparison can fail.
    plain = decode(decoder, cep=sphinx_cepstra(pcm / 32768.0, SphinxSpec(remove_noise=False, dither=0.0)))
    assert difflib.SequenceMatcher(None, plain.split(), from_raw.split()).ratio() < 1.0 or plain != from_raw


def test_exported_scorer_equals_the_numpy_reference(speech, scorer_bytes):
    weights = ScorerWeights.of(AcousticModel.load())
    score = onnx_scorer(scorer_bytes)
    rng = np.random.default_rng(0)
    # Features as the streamer makes them, from real speech, plus far-off ones (silence, noise).
    streamer = PhoneticStreamer(SphinxSpec(), score)
    captured = []
    streamer._score = lambda f: (captured.append(f.copy()), score(f))[1]  # noqa: SLF001 - capture the inputs
    streamer.feed(speech)
    streamer.flush()
    feats = np.concatenate([*captured, rng.normal(0, 3, (20, FEATURE_DIM)).astype(np.float32)])
    got = np.concatenate([score(feats[i : i + GROUP]) for i in range(0, len(feats), GROUP)])
    want = reference_posteriors(feats, weights, SphinxSpec().temperature)
    assert got.shape == want.shape == (len(feats), N_PHONES)
    assert np.abs(got - want).max() < 1e-4
    assert np.allclose(got.sum(1), 1.0, atol=1e-5)
    # The posteriors mean something: silence (dithered zeros) before the sentence, its "p" after.
    rows = PhoneticEncoder(score).features(np.concatenate([np.zeros(8000, np.float32), speech]))
    best = [PHONES[i] for i in rows.argmax(1)]
    assert set(best[:20]) <= {"SIL", "+NSN+"} and "P" in best[24:30], best[:30]


def test_digital_silence_gives_posteriors_like_speech_pauses(speech, scorer_bytes):
    """Zeros (padding, a server's idle stream) used to give posteriors near 1 where speech never goes
    above ~0.2: the network saw inputs it was never trained on. The fixed dither keeps them in range."""
    encoder = PhoneticEncoder(onnx_scorer(scorer_bytes))
    rows = encoder.features(np.concatenate([speech, np.zeros(16000, np.float32), speech]))
    n = speech.size // 320
    in_speech, in_zeros = rows[:n].max(), rows[n + 10 : n + 40].max()
    assert in_zeros < max(0.3, 1.5 * in_speech)
    undithered = PhoneticEncoder(onnx_scorer(scorer_bytes), SphinxSpec(dither=0.0))
    assert undithered.features(np.zeros(16000, np.float32)).max() > 0.9  # what the dither prevents


def test_scorer_graph_is_deterministic_and_small(scorer_bytes):
    again = scorer_onnx(ScorerWeights.of(AcousticModel.load()), SphinxSpec().temperature)
    assert again == scorer_bytes  # export rebuilds it and checks training's sha256
    assert len(scorer_bytes) < 1.2e6


@pytest.mark.parametrize("with_mel", [False, True])
@pytest.mark.parametrize("seconds", [0.0, 0.02, 0.0257, 0.3, 2.37])
def test_stream_equals_whole_clip_bit_for_bit(speech, scorer_bytes, seconds, with_mel):
    encoder = PhoneticEncoder(onnx_scorer(scorer_bytes), mel=MelSpec() if with_mel else None)
    x = np.resize(speech, int(seconds * 16000))
    whole = encoder.features(x)
    assert whole.shape == (x.size // 320 + 1, N_PHONES + (32 if with_mel else 0))
    rng = np.random.default_rng(int(seconds * 1000))
    streamer, rows, i = encoder.streamer(), [], 0
    while i < x.size:
        k = int(rng.choice([0, 1, 7, 160, 333, 2500]))
        rows.append(streamer.feed(x[i : i + k]))
        i = min(i + k, x.size)
        # Mid-stream a row is out once its frames and their deltas' lookahead arrived: <= 86 ms late.
        if i >= 1400:
            assert sum(r.shape[0] for r in rows) >= (i - 1400) // 320
    rows.append(streamer.flush())
    assert np.array_equal(np.concatenate(rows), whole)
    with pytest.raises(RuntimeError):
        streamer.feed(x[:10])


# ---------------------------------------------------------------- an avatar trained with it


def test_bundle_carries_scorer_and_licence(phonetic_avatar):
    from embedtalk_sdk.runtime.bundle import Bundle

    bundle = Bundle.open(phonetic_avatar["inside"])
    audio = bundle.manifest["audio"]
    assert audio["encoder"] == "phonetic" and audio["rate"] == 50.0
    assert audio["feature_dim"] == N_PHONES + audio["mel"]["n_mels"]  # the default appends log-mel rows
    assert audio["model"]["in_bundle"] and audio["model"]["sha256"] == audio["scorer_sha256"]
    notice = bundle.path_of("LICENSE-acoustic-model.txt").read_text()
    assert "Carnegie Mellon University" in notice and "Alpha Cephei" in notice
    size = sum(f["bytes"] for f in bundle.manifest["files"].values())
    assert size < 5e6
    shared = Bundle.open(phonetic_avatar["shared"])
    assert "LICENSE-acoustic-model.txt" in shared.manifest["files"]  # the notice stays with the avatar
    assert (phonetic_avatar["shared"].parent / shared.manifest["audio"]["model"]["file"]).is_file()


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
streamed = np.stack(list(avatar.stream(np.split(audio, cuts[cuts < audio.size]))))
np.savez(out, spoken=spoken, streamed=streamed)
print(json.dumps({"blocked": [m for m in ("torch", "pocketsphinx", "onnx") if m in sys.modules],
                  "encoder": avatar.audio_encoder.name}))
"""


def test_avatar_speaks_and_streams_without_torch_or_pocketsphinx(phonetic_avatar, tmp_path):
    """Playback with torch, onnx and pocketsphinx unimportable: speak == stream bit for bit."""
    block = blocker(TORCH_SIDE + ("embedtalk_sdk.audio", "embedtalk_sdk.data", "pocketsphinx", "onnx"))
    for key in ("inside", "shared"):
        out = tmp_path / f"{key}.npz"
        result = subprocess.run([sys.executable, "-c", block + PLAY, str(phonetic_avatar[key]),
                                 str(phonetic_avatar["data"] / "aud.wav"), str(out)],
                                capture_output=True, text=True, timeout=300)  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        assert json.loads(result.stdout.strip().splitlines()[-1]) == {"blocked": [], "encoder": "phonetic"}
        frames = np.load(out)
        assert frames["spoken"].shape[0] > 50 and frames["spoken"].std() > 1
        assert np.array_equal(frames["spoken"], frames["streamed"])


def test_export_refuses_another_scorer(phonetic_avatar, tmp_path):
    """A checkpoint whose recorded scorer is not the one this pocketsphinx gives is refused."""
    from embedtalk_sdk.export.audio_encoder import encoder_files
    from embedtalk_sdk.model.checkpoint import Checkpoint

    block = dict(Checkpoint.load(phonetic_avatar["ckpt"]).meta["audio"])
    block["scorer_sha256"] = "0" * 64
    with pytest.raises(ValueError, match="pocketsphinx"):
        encoder_files(block, None, tmp_path / "a.etk")


def test_playback_features_are_trainings(phonetic_avatar):
    from embedtalk_sdk.audio.features import FeatureSource, dataset_features
    from embedtalk_sdk.runtime.avatar import Avatar

    wav = Path(phonetic_avatar["data"]) / "aud.wav"
    _, train_rows = dataset_features("phonetic", FeatureSource(wav))
    avatar = Avatar.load(phonetic_avatar["inside"], backend="onnxruntime")
    assert np.array_equal(avatar.audio_features(wav), train_rows)


def test_log_mel_rows_follow_the_posteriors(speech, tmp_path):
    """The default "phonetic" rows are [posteriors, log-mel]; a checkpoint trained on the posteriors
    alone (block without "mel") gets exactly those back."""
    import soundfile as sf

    from embedtalk_sdk.audio.features import FeatureSource, dataset_features

    wav = tmp_path / "speech.wav"
    sf.write(wav, speech, 16000, subtype="FLOAT")
    enc, rows = dataset_features("phonetic", FeatureSource(wav))
    assert rows.shape == (speech.size // 320 + 1, N_PHONES + 32) and enc.block()["mel"] == MelSpec().to_dict()
    assert np.abs(rows[:, N_PHONES:] - log_mel(speech)).max() < 1e-5
    posteriors_only = {k: v for k, v in enc.block().items() if k != "mel"}
    alone, old = dataset_features("phonetic", FeatureSource(wav, block=posteriors_only))
    assert alone.dim == N_PHONES and np.array_equal(old, rows[:, :N_PHONES])
    assert np.array_equal(dataset_features("phonetic-posteriors", FeatureSource(wav))[1], old)
