"""Audio input: any audio file or array -> 16 kHz mono float32 in [-1, 1] (see docs/interfaces.md).

numpy/scipy/soundfile/PyAV only: the playback runtime imports this without PyTorch.

Reading order: soundfile (wav, flac, ogg, aiff, ...) first, PyAV (ffmpeg: mp3, m4a, mp4, webm, ...)
when soundfile cannot open the file. Every refusal is one `AudioError` naming the file, the
problem and what to do about it.

Truncated WAV files: libsndfile silently reads a WAV whose data chunk was cut short (an interrupted
copy or download) and returns fewer samples than the header declares. We refuse those, because a
silently shorter clip becomes a silently shorter video. The streaming placeholders that pipe
writers use for the data size (0 and 0xFFFFFFFF) are accepted and read to the end of the file
(size 0 through PyAV, as libsndfile reads it as empty).

Compressed files (AAC, MP3) decode with the encoder's tail padding (AAC: up to 1024 samples at
the source rate, ffmpeg does not trim it from .mp4/.m4a): a clip may gain up to ~64 ms of silence.
"""
from __future__ import annotations

import os
import struct
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf

from embedtalk_sdk.runtime.errors import EmbedTalkError

__all__ = ["AudioError", "load_audio", "prepare_audio", "decode_audio"]

_PLACEHOLDER_SIZES = (0, 0xFFFFFFFF)


class AudioError(EmbedTalkError, ValueError):
    """An audio input the SDK cannot use; the message names the input, the problem and the fix."""


class AudioTooLong(AudioError):
    """The audio lasts longer than the caller allows (`max_seconds`); found while decoding, so a
    small, highly compressed file never expands into memory whole."""


def load_audio(path: str | os.PathLike, sample_rate: int = 16000, max_seconds: float | None = None) -> np.ndarray:
    """Read an audio file (or a video file's first audio track) as mono float32.

    Args:
        path: any format soundfile or ffmpeg can decode (wav, flac, ogg, mp3, m4a, mp4, ...).
        sample_rate: output rate in Hz; other rates are resampled (polyphase, exact ratio).
        max_seconds: refuse (AudioTooLong) audio longer than this, before decoding past it.

    Returns:
        samples: float32 [S] in [-1, 1], channels averaged.

    Raises:
        AudioError: missing/empty/truncated file, not audio, no samples, NaN or Inf samples.
    """
    data, rate = decode_audio(path, max_seconds)
    return prepare_audio(data, rate, sample_rate=sample_rate, name=str(path))


def decode_audio(path: str | os.PathLike, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """Decode a file at its own rate and channel count, without any conversion.

    Returns:
        (samples float32 [S, C], sample_rate). Integer PCM is scaled to [-1, 1).

    Raises:
        AudioError: as `load_audio` (except NaN/Inf and zero samples, checked by `prepare_audio`);
        AudioTooLong past `max_seconds`.
    """
    p = Path(path)
    _check_file(p)
    if _wav_data_size(p) == 0:  # streaming placeholder: libsndfile would read nothing
        return _decode_with_av(p, "WAV data size 0 (streaming placeholder)", max_seconds)
    try:
        if max_seconds is not None:
            info = sf.info(str(p))
            if info.frames > max_seconds * info.samplerate:
                raise _too_long(p, info.frames / info.samplerate, max_seconds)
        data, rate = sf.read(str(p), dtype="float32", always_2d=True)
        return data, int(rate)
    except RuntimeError as sf_err:  # sf.LibsndfileError: a format libsndfile does not know
        return _decode_with_av(p, sf_err, max_seconds)


def _too_long(p: Path, seconds: float, max_seconds: float) -> AudioTooLong:
    return AudioTooLong(f"{p}: at least {seconds:.1f} s of audio; the limit is {max_seconds:g} s")


PREP_BLOCK = 1 << 20  # samples converted at a time: a long clip is not copied whole in float64


def _non_finite_error(name: str, bad: int) -> AudioError:
    return AudioError(f"{name}: {bad} samples are NaN or Inf; the file is corrupt or was written by a "
                      "broken tool. Re-export the audio.")


def _clipped_warning(name: str, beyond: int, peak: float) -> None:
    warnings.warn(f"{name}: {beyond} samples beyond full scale (peak {peak:.3f}) were clipped to [-1, 1]; "
                  "normalise the audio for the best result", stacklevel=4)


def check_finite(x: np.ndarray, name: str) -> np.ndarray:
    """`x` if every sample is finite; AudioError naming `name` and the count otherwise."""
    if not np.all(np.isfinite(x)):
        raise _non_finite_error(name, int(np.count_nonzero(~np.isfinite(x))))
    return x


def full_scale(mono: np.ndarray, name: str) -> np.ndarray:
    """Float samples clipped to [-1, 1], with a warning if any lay beyond.

    The one rule of every audio path (speak, stream, the server): a stream cannot know its peak
    in advance, so it cannot scale; clipping gives the same samples whichever way they arrive.
    """
    beyond = int(np.count_nonzero(np.abs(mono) > 1.0))
    if beyond:
        _clipped_warning(name, beyond, float(np.max(np.abs(mono))))
        mono = np.clip(mono, -1.0, 1.0)
    return mono


def pcm_chunk(chunk: np.ndarray, name: str, allow_empty: bool = True) -> np.ndarray:
    """A 16 kHz mono PCM chunk (stream, server) as float32 in [-1, 1], by `speak`'s rules: int16
    scaled by 1/32768, floats refused if NaN/Inf and clipped beyond full scale (warning), other
    types and shapes refused (AudioError naming `name`)."""
    x = np.asarray(chunk)
    if x.ndim != 1:
        raise AudioError(f"{name}: chunks must be mono 1-D arrays, got shape {x.shape}")
    if x.size == 0 and not allow_empty:
        raise AudioError(f"{name}: empty chunk")
    if x.dtype == np.int16:
        return x.astype(np.float32) / 32768.0
    if not np.issubdtype(x.dtype, np.floating):
        raise AudioError(f"{name}: chunks must be float or int16 PCM, got {x.dtype}")
    return full_scale(check_finite(x, name), name).astype(np.float32, copy=False)


def prepare_audio(
    samples: np.ndarray,
    source_rate: int,
    sample_rate: int = 16000,
    name: str = "<array>",
) -> np.ndarray:
    """Convert in-memory audio to the SDK's format.

    Args:
        samples: [S] or [S, C] (frames x channels, as soundfile returns). float in [-1, 1], or
            integer PCM (int16, int32, uint8, ...) which is scaled by its full range.
        source_rate: rate of `samples` in Hz.
        sample_rate: output rate in Hz.
        name: how error messages refer to this input (the file path when called by `load_audio`).

    Returns:
        float32 [S'] in [-1, 1], S' = ceil(S * sample_rate / source_rate); float samples beyond
        full scale are clipped (`full_scale`), as `Avatar.stream` does.

    Raises:
        AudioError: no samples, NaN/Inf samples, unusable shape, dtype or rate.
    """
    src = _check_rate(source_rate, name, "source_rate")
    dst = _check_rate(sample_rate, name, "sample_rate")
    x = _frames_2d(np.asarray(samples), name)
    if x.shape[0] == 0:
        raise AudioError(f"{name}: contains no audio samples; give one with at least one sample.")
    # Block by block (same numbers as the whole clip at once): float64, channel mean, full scale.
    mono = np.empty(x.shape[0], np.float32 if src == dst else np.float64)
    bad = beyond = 0
    peak = 0.0
    for a in range(0, x.shape[0], PREP_BLOCK):
        block = _to_float64(x[a:a + PREP_BLOCK], name)
        bad += int(np.count_nonzero(~np.isfinite(block)))
        if bad:
            continue
        m = block.mean(axis=1)
        over = np.abs(m) > 1.0
        if over.any():
            beyond, peak = beyond + int(np.count_nonzero(over)), max(peak, float(np.max(np.abs(m))))
        mono[a:a + PREP_BLOCK] = np.clip(m, -1.0, 1.0)
    if bad:
        raise _non_finite_error(name, bad)
    if beyond:
        _clipped_warning(name, beyond, peak)
    if src == dst:
        return mono
    # Resampling filters ring slightly above full scale on hard transients.
    return np.ascontiguousarray(np.clip(_resample(mono, src, dst), -1.0, 1.0), dtype=np.float32)


def _check_file(p: Path) -> None:
    if not p.exists():
        raise AudioError(f"{p}: audio file not found; check the path.")
    if not p.is_file():
        raise AudioError(f"{p}: is not a file (a directory?); give the path of an audio file.")
    if p.stat().st_size == 0:
        raise AudioError(f"{p}: the file is empty (0 bytes); re-export or re-copy the audio.")


def _wav_data_size(p: Path) -> int | None:
    """The declared data chunk size of a RIFF/WAVE file (None if not a WAV or no data chunk).

    Raises AudioError when the data chunk claims more bytes than the file holds (truncated).
    """
    size = p.stat().st_size
    with p.open("rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
            return None  # not a WAV (RF64 included): leave it to the decoders
        endian = "<" if head[:4] == b"RIFF" else ">"
        offset = 12
        while offset + 8 <= size:
            f.seek(offset)
            chunk_id, chunk_size = struct.unpack(endian + "4sI", f.read(8))
            if chunk_id == b"data":
                available = size - offset - 8
                if chunk_size not in _PLACEHOLDER_SIZES and chunk_size > available:
                    raise AudioError(
                        f"{p}: truncated WAV: the header declares {chunk_size} bytes of audio but "
                        f"only {available} are present (an interrupted copy or download?). "
                        "Re-export or re-copy the file."
                    )
                return chunk_size
            offset += 8 + chunk_size + (chunk_size & 1)  # chunks are word-aligned
    return None


def _decode_with_av(p: Path, sf_err: object, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    import av  # local: only needed for compressed formats

    hint = "give an audio file (wav, flac, ogg, mp3, m4a) or a video with an audio track"
    try:
        with av.open(str(p)) as container:
            if not container.streams.audio:
                kinds = sorted({s.type for s in container.streams}) or ["no streams"]
                found = f"ffmpeg sees {', '.join(kinds)} as '{container.format.name}'"
                raise AudioError(f"{p}: not audio ({found}); {hint}.")
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="fltp")  # planar float, same rate and layout
            chunks: list[np.ndarray] = []
            rate = stream.codec_context.sample_rate
            decoded = 0
            for frame in container.decode(stream):
                rate = frame.sample_rate
                decoded += frame.samples
                if max_seconds is not None and decoded > max_seconds * rate:
                    raise _too_long(p, decoded / rate, max_seconds)
                chunks.extend(f.to_ndarray() for f in resampler.resample(frame))
            chunks.extend(f.to_ndarray() for f in resampler.resample(None))
    except AudioError:
        raise
    except (av.FFmpegError, OSError) as av_err:
        raise AudioError(
            f"{p}: not a readable audio file (soundfile: {sf_err}; ffmpeg: {av_err}); {hint}."
        ) from av_err
    if not chunks:
        raise AudioError(f"{p}: contains no audio samples; give a file with at least one sample.")
    return np.concatenate(chunks, axis=1).T.astype(np.float32, copy=False), int(rate)


def _frames_2d(x: np.ndarray, name: str) -> np.ndarray:
    """[S] or [S, C] -> a [S, C] view, with its shape and dtype checked."""
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise AudioError(f"{name}: audio must be [S] or [S, C], got shape {x.shape}.")
    if x.shape[1] > x.shape[0] > 0:
        raise AudioError(f"{name}: shape {x.shape} looks like [C, S]; pass samples.T ([S, C]).")
    if x.shape[1] == 0:
        raise AudioError(f"{name}: audio has no channels (shape {x.shape}).")
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)) or x.dtype == np.bool_:
        raise AudioError(f"{name}: unsupported sample type {x.dtype}; give float or integer PCM.")
    return x


def _to_float64(x: np.ndarray, name: str) -> np.ndarray:
    """[S, C] of any real dtype -> float64 [S, C] scaled to [-1, 1]."""
    if np.issubdtype(x.dtype, np.signedinteger):
        return x.astype(np.float64) / float(2 ** (8 * x.dtype.itemsize - 1))
    if np.issubdtype(x.dtype, np.unsignedinteger):  # unsigned PCM is offset binary (8-bit WAV)
        half = float(2 ** (8 * x.dtype.itemsize - 1))
        return (x.astype(np.float64) - half) / half
    if np.issubdtype(x.dtype, np.floating):
        return x.astype(np.float64)
    raise AudioError(f"{name}: unsupported sample type {x.dtype}; give float or integer PCM.")


def _check_rate(rate: float, name: str, what: str) -> int:
    if not np.isfinite(rate) or rate <= 0 or rate != int(rate):
        raise AudioError(f"{name}: {what} must be a positive whole number of Hz, got {rate}.")
    return int(rate)


def _resample(x: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    if source_rate == target_rate:
        return x
    from scipy.signal import resample_poly  # local: scipy.signal takes ~0.5 s to import

    ratio = Fraction(target_rate, source_rate)
    return resample_poly(x, ratio.numerator, ratio.denominator)
