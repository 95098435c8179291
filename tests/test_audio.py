"""Audio input (embedtalk_sdk.runtime.audio.io) and features (embedtalk_sdk.runtime.audio.mel)."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf

from embedtalk_sdk.runtime.audio.io import AudioError, AudioTooLong, load_audio, prepare_audio
from embedtalk_sdk.runtime.audio.mel import (
    MelSpec,
    MelStreamer,
    frame_windows,
    log_mel,
    mel_filterbank,
    n_video_frames,
    rows_needed,
    window_bounds,
)

SR = 16000


def sine(freq: float, seconds: float, rate: int, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_freq(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * rate / len(x))


def write_wav(path: Path, data: np.ndarray, rate: int = SR, subtype: str = "PCM_16") -> Path:
    sf.write(str(path), data, rate, subtype=subtype)
    return path


# ---------------------------------------------------------------- load_audio: good inputs


def test_44k_stereo_is_downmixed_and_resampled(tmp_path):
    left, right = sine(440, 1.0, 44100, 0.6), sine(440, 1.0, 44100, 0.2)
    path = write_wav(tmp_path / "stereo.wav", np.stack([left, right], axis=1), 44100)
    x = load_audio(path)
    assert x.dtype == np.float32 and x.shape == (SR,)
    expected = sine(440, 1.0, SR, 0.4)  # mean of the channels
    inner = slice(200, -200)  # the resampling filter rings at the clip's ends
    assert np.max(np.abs(x[inner] - expected[inner])) < 3e-3
    assert abs(peak_freq(x, SR) - 440) <= 1.0


def test_16k_mono_passes_through_exactly(tmp_path):
    data = sine(300, 0.5, SR)
    path = write_wav(tmp_path / "a.wav", data, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(path), data)


def test_int_pcm_is_scaled():
    i16 = np.array([16384, -32768, 0], np.int16)
    np.testing.assert_allclose(prepare_audio(i16, SR), [0.5, -1, 0])
    np.testing.assert_allclose(prepare_audio(np.array([128, 0, 192], np.uint8), SR), [0, -1, 0.5])
    i32 = np.array([2**30, -(2**31)], np.int32)
    np.testing.assert_allclose(prepare_audio(i32, SR), [0.5, -1.0])


def test_m4a_falls_back_to_pyav(tmp_path):
    path = tmp_path / "speech.m4a"
    data = sine(440, 1.0, 22050)
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=22050, layout="mono")
        frame = av.AudioFrame.from_ndarray(data[None], format="fltp", layout="mono")
        frame.sample_rate = 22050
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    x = load_audio(path)
    # AAC pads the tail to whole 1024-sample frames; ffmpeg does not trim it from an mp4.
    assert SR <= x.shape[0] <= SR + 2048 * SR // 22050
    assert abs(peak_freq(x[:SR], SR) - 440) <= 2.0
    assert 0.4 < np.max(np.abs(x)) <= 1.0


def test_max_seconds_stops_a_long_file_before_it_is_decoded_whole(tmp_path):
    """A 150 kB FLAC of silence decodes to 10 minutes (38 MB of float32): a caller with a limit
    (the server's uploads) must not pay for that. soundfile's path reads the header; PyAV's
    counts while decoding."""
    flac = tmp_path / "long.flac"
    sf.write(str(flac), np.zeros(600 * SR, np.int16), SR, subtype="PCM_16")
    assert flac.stat().st_size < 400_000
    with pytest.raises(AudioTooLong, match="600.0 s of audio; the limit is 60 s"):
        load_audio(flac, max_seconds=60)
    m4a = tmp_path / "long.m4a"
    with av.open(str(m4a), "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=SR, layout="mono")
        for _ in range(10):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, SR), np.float32), format="fltp", layout="mono")
            frame.sample_rate = SR
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    with pytest.raises(AudioTooLong, match="the limit is 2 s"):
        load_audio(m4a, max_seconds=2)
    assert load_audio(m4a, max_seconds=20).shape[0] >= 10 * SR


def test_silent_audio_is_allowed(tmp_path):
    x = load_audio(write_wav(tmp_path / "silence.wav", np.zeros(8000, np.float32)))
    assert x.shape == (8000,) and not x.any()


def test_hot_float_audio_is_clipped_to_full_scale():
    # Clipped, not scaled: a stream cannot know its peak in advance, and speak must equal stream.
    with pytest.warns(UserWarning, match=r"1 samples beyond full scale \(peak 2.000\) were clipped"):
        x = prepare_audio(np.array([0.0, 2.0, -1.0], np.float32), SR)
    np.testing.assert_allclose(x, [0.0, 1.0, -1.0])


@pytest.mark.parametrize("placeholder", [0, 0xFFFFFFFF])
def test_streaming_wav_placeholder_sizes_are_read_to_the_end(tmp_path, placeholder):
    raw = bytearray(write_wav(tmp_path / "a.wav", sine(440, 0.5, SR)).read_bytes())
    i = raw.find(b"data")
    raw[i + 4 : i + 8] = struct.pack("<I", placeholder)
    path = tmp_path / "piped.wav"
    path.write_bytes(bytes(raw))
    assert load_audio(path).shape == (8000,)


# ---------------------------------------------------------------- load_audio: refusals


def refused(path: Path, *words: str) -> None:
    with pytest.raises(AudioError) as info:
        load_audio(path)
    message = str(info.value)
    assert str(path) in message
    for word in words:
        assert word in message.lower()


def test_missing_file(tmp_path):
    refused(tmp_path / "nope.wav", "not found")


def test_directory(tmp_path):
    refused(tmp_path, "not a file")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    refused(path, "empty")


def test_zero_samples(tmp_path):
    refused(write_wav(tmp_path / "none.wav", np.zeros(0, np.float32)), "no audio samples")


def test_nan_samples(tmp_path):
    data = sine(440, 0.1, SR)
    data[10] = np.nan
    data[20] = np.inf
    refused(write_wav(tmp_path / "nan.wav", data, subtype="FLOAT"), "2 samples", "nan")


def test_text_file_named_wav(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("this is not audio\n" * 20)
    refused(path, "not a readable audio file")


def test_png_named_wav(tmp_path):
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 0)
    pixels = zlib.compress((b"\x00" + b"\xff\x00\x00" * 2) * 2)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    png = b"\x89PNG\r\n\x1a\n" + body
    path = tmp_path / "picture.wav"
    path.write_bytes(png)
    refused(path, "not audio")


def test_truncated_wav(tmp_path):
    raw = write_wav(tmp_path / "full.wav", sine(440, 1.0, SR)).read_bytes()
    path = tmp_path / "cut.wav"
    path.write_bytes(raw[: len(raw) // 2 + 1])  # odd length: also a partial sample
    refused(path, "truncated")
    header_only = tmp_path / "header.wav"
    header_only.write_bytes(raw[:44])
    refused(header_only, "truncated")


def test_bad_arrays():
    with pytest.raises(AudioError, match=r"\[C, S\]"):
        prepare_audio(np.zeros((2, 1000), np.float32), SR)
    with pytest.raises(AudioError, match="whole number"):
        prepare_audio(np.zeros(100, np.float32), 44100.5)
    with pytest.raises(AudioError, match="NaN"):
        prepare_audio(np.array([0.0, np.nan]), SR)


# ---------------------------------------------------------------- MelSpec


def test_melspec_dict_round_trip():
    spec = MelSpec(n_mels=40, fmax=8000.0)
    assert MelSpec.from_dict(spec.to_dict()) == spec
    manifest_audio = {"encoder": "mel", **MelSpec().to_dict(), "window": 16, "feature_dim": 32}
    assert MelSpec.from_dict(manifest_audio) == MelSpec()
    with pytest.raises(ValueError, match="missing"):
        MelSpec.from_dict({"sample_rate": 16000})
    with pytest.raises(ValueError):
        MelSpec(n_fft=401)
    with pytest.raises(ValueError):
        MelSpec(fmax=9000.0)
    assert MelSpec().rate == 50.0


# ---------------------------------------------------------------- log_mel


def slaney_hz_to_mel(f: float) -> float:
    return f * 3 / 200 if f < 1000 else 15 + 27 * np.log(f / 1000) / np.log(6.4)


def slaney_mel_to_hz(m: float) -> float:
    return m * 200 / 3 if m < 15 else 1000 * 6.4 ** ((m - 15) / 27)


def reference_filterbank(spec: MelSpec) -> np.ndarray:
    """Slaney triangles written out one weight at a time."""
    mels = np.linspace(slaney_hz_to_mel(spec.fmin), slaney_hz_to_mel(spec.fmax), spec.n_mels + 2)
    edges = [slaney_mel_to_hz(m) for m in mels]
    fb = np.zeros((spec.n_mels, spec.n_fft // 2 + 1))
    for i in range(spec.n_mels):
        lo, mid, hi = edges[i], edges[i + 1], edges[i + 2]
        for j in range(fb.shape[1]):
            f = j * spec.sample_rate / spec.n_fft
            if lo < f <= mid:
                fb[i, j] = (f - lo) / (mid - lo)
            elif mid < f < hi:
                fb[i, j] = (hi - f) / (hi - mid)
        fb[i] *= 2 / (hi - lo)
    return fb


def test_filterbank_matches_slaney_reference():
    spec = MelSpec()
    np.testing.assert_allclose(mel_filterbank(spec), reference_filterbank(spec), atol=1e-12)
    assert (mel_filterbank(spec) > 0).any(axis=1).all()  # no empty band


@pytest.mark.parametrize("n", [0, 1, 319, 320, 321, 16000, 16001])
def test_log_mel_shape(n):
    x = np.random.default_rng(n).uniform(-1, 1, n).astype(np.float32)
    m = log_mel(x)
    assert m.shape == (n // 320 + 1, 32) and m.dtype == np.float32
    assert np.isfinite(m).all()


def test_log_mel_frame_by_hand():
    spec = MelSpec()
    x = np.random.default_rng(1).uniform(-0.5, 0.5, 5000)
    m = log_mel(x, spec)
    padded = np.concatenate([np.zeros(200), x, np.zeros(200)])
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)
    fb = reference_filterbank(spec)
    for k in (0, 7, len(m) - 1):  # both padded ends and the middle
        frame = padded[k * 320 : k * 320 + 400]  # centred on sample k*320
        power = np.abs(np.fft.fft(frame * hann)[:201]) ** 2
        np.testing.assert_allclose(m[k], np.log(fb @ power + 1e-6), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("freq", [300.0, 1000.0, 3000.0, 6000.0])
def test_sine_lands_in_its_mel_band(freq):
    spec = MelSpec()
    m = log_mel(sine(freq, 0.5, SR), spec)
    mels = np.linspace(slaney_hz_to_mel(spec.fmin), slaney_hz_to_mel(spec.fmax), spec.n_mels + 2)
    centres = np.array([slaney_mel_to_hz(v) for v in mels[1:-1]])
    band = int(np.argmax(m[len(m) // 2]))
    assert abs(band - int(np.argmin(np.abs(centres - freq)))) <= 1
    assert m[len(m) // 2, band] > m[len(m) // 2].mean() + 5  # energy concentrated (natural log)


def test_log_mel_is_deterministic_and_silence_is_log_eps():
    x = np.random.default_rng(2).uniform(-1, 1, 7000).astype(np.float32)
    np.testing.assert_array_equal(log_mel(x), log_mel(x.copy()))
    np.testing.assert_allclose(log_mel(np.zeros(1000)), np.log(1e-6), rtol=1e-6)


# ---------------------------------------------------------------- MelStreamer


@pytest.mark.parametrize("seed", range(6))
def test_streaming_equals_offline(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 20000))
    x = rng.uniform(-1, 1, n).astype(np.float32)
    cuts = np.sort(rng.integers(0, n + 1, int(rng.integers(0, 40))))
    streamer = MelStreamer()
    rows = []
    for chunk in np.split(x, cuts):
        rows.append(streamer.feed(chunk))
        assert streamer.buffered_samples < 400
    rows.append(streamer.flush())
    streamed = np.concatenate(rows)
    offline = log_mel(x)
    assert streamed.shape == offline.shape
    np.testing.assert_allclose(streamed, offline, atol=1e-5, rtol=0)


def test_streamer_lifecycle():
    streamer = MelStreamer()
    assert streamer.feed(np.zeros(199)).shape == (0, 32)
    assert streamer.feed(np.zeros(1)).shape == (1, 32)  # frame 0 spans padding + 200 samples
    assert streamer.feed(np.zeros(319)).shape == (0, 32)  # frame 1 spans samples 120..519
    assert streamer.flush().shape == (1, 32)  # 519 samples: M = 2, the last uses end padding
    assert streamer.n_rows == 2 and streamer.n_samples == 519
    with pytest.raises(RuntimeError):
        streamer.feed(np.zeros(10))
    streamer.reset()
    assert streamer.flush().shape == (1, 32)  # an empty clip still has M = 0 // hop + 1 rows


# ---------------------------------------------------------------- frame windows


def test_frame_windows_edges_and_centres():
    feats = np.repeat(np.arange(50, dtype=np.float32)[:, None], 3, axis=1)  # row i holds i
    w = frame_windows(feats, 25)
    assert w.shape == (25, 16, 3) and w.dtype == np.float32
    np.testing.assert_array_equal(w[0, :, 0], [0] * 9 + list(range(1, 8)))  # rows -8..7 clamped
    np.testing.assert_array_equal(w[10, :, 0], np.arange(12, 28))  # c = 20: rows 12..27
    np.testing.assert_array_equal(w[24, :, 0], list(range(40, 50)) + [49] * 6)  # c = 48
    odd = frame_windows(feats, 3, window=5)
    np.testing.assert_array_equal(odd[1, :, 0], [0, 1, 2, 3, 4])  # c = 2: rows 0..4


def test_window_bounds_and_rows_needed():
    assert window_bounds(0) == (-8, 8) and rows_needed(0) == 8
    assert window_bounds(3) == (-2, 14) and rows_needed(3) == 14
    assert rows_needed(3, fps=30.0) == 13  # c = round(3 * 50 / 30) = 5
    assert window_bounds(1, fps=20.0, window=2) == (2, 4)  # c = 2.5 rounds up to 3


def test_n_video_frames():
    assert n_video_frames(16000) == 25
    assert n_video_frames(320) == 1 and n_video_frames(319) == 0  # ties round up
    assert n_video_frames(16000, fps=30.0) == 30
    assert n_video_frames(16000 * 100, fps=30000 / 1001) == 2997
    assert n_video_frames(44100, sample_rate=44100) == 25


@pytest.mark.parametrize("seed", range(3))
def test_streamed_windows_equal_offline_windows(seed):
    """Runtime-style loop: bounded row buffer, windows emitted as soon as they are final."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, int(rng.integers(3000, 30000))).astype(np.float32)
    n_frames = n_video_frames(len(x))
    offline = frame_windows(log_mel(x), n_frames)

    streamer, buf, offset, n, out = MelStreamer(), np.zeros((0, 32), np.float32), 0, 0, []

    def emit(last: bool) -> None:
        nonlocal buf, offset, n
        while n < n_frames and (last or rows_needed(n) <= offset + len(buf)):
            out.append(frame_windows(buf, 1, first_frame=n, row_offset=offset)[0])
            n += 1
            drop = min(max(0, window_bounds(n)[0] - offset), len(buf))  # rows no frame needs
            buf, offset = buf[drop:], offset + drop
        assert last or len(buf) < 16  # bounded: only part of the next window is kept

    for chunk in np.array_split(x, int(rng.integers(1, 60))):
        buf = np.concatenate([buf, streamer.feed(chunk)])
        emit(last=False)
    buf = np.concatenate([buf, streamer.flush()])
    emit(last=True)
    np.testing.assert_allclose(np.stack(out), offline, atol=1e-5, rtol=0)


def test_frame_windows_refuses_dropped_rows():
    with pytest.raises(ValueError, match="buffer"):
        frame_windows(np.zeros((20, 2)), 1, first_frame=10, row_offset=15)


@pytest.mark.parametrize("n", [0, 1, 199, 200, 321, 2048 * 320 - 1, 2048 * 320, 2048 * 320 + 200, 16000 * 65 + 7])
def test_log_mel_in_blocks_equals_the_whole_clip_padded(n):
    # log_mel computes rows in blocks from slices (bounded memory on long clips): the same bytes as
    # padding the whole clip once and framing it.
    from embedtalk_sdk.runtime.audio.mel import _frames_log_mel

    x = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    spec = MelSpec()
    pad = spec.n_fft // 2
    whole = _frames_log_mel(np.pad(x.astype(np.float64), (pad, pad)), n // spec.hop + 1, spec)
    assert np.array_equal(log_mel(x, spec), whole)
