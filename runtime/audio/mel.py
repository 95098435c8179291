"""Log-mel features and per-video-frame feature windows (numpy only; see docs/interfaces.md).

Definition (fixed: bundles store a MelSpec and must reproduce training's features exactly):
- frame k is centred on sample k*hop: the signal is zero-padded by n_fft//2 on both ends and
  frame k is padded[k*hop : k*hop + n_fft]; M = S // hop + 1 frames for S samples.
- periodic Hann window (0.5 - 0.5 cos(2 pi n / n_fft)), power spectrum |rfft|^2 (no scaling).
- mel filterbank: Slaney mel scale (linear below 1 kHz, logarithmic above) with Slaney area
  normalisation (each triangle scaled by 2 / its width in Hz) -- the same matrix as
  librosa.filters.mel(sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax) with its defaults.
- natural log: log(mel_power + 1e-6).

Rounding: "round" in this module means round half up, floor(x + 1/2), computed exactly on the
rational values of fps and rates (Python's round() would round ties to even).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Any, Mapping

import numpy as np

from embedtalk_sdk.runtime.config import config_from_mapping

__all__ = [
    "MelSpec",
    "log_mel",
    "MelStreamer",
    "frame_windows",
    "window_bounds",
    "rows_needed",
    "n_video_frames",
    "mel_filterbank",
    "LOG_EPS",
]

LOG_EPS = 1e-6
_BLOCK = 2048  # frames per FFT batch: bounds memory on long clips


@dataclass(frozen=True)
class MelSpec:
    """Parameters of `log_mel`; stored in bundle manifests (`to_dict`/`from_dict`)."""

    sample_rate: int = 16000
    n_fft: int = 400
    hop: int = 320
    n_mels: int = 32
    fmin: float = 50.0
    fmax: float = 7600.0

    def __post_init__(self) -> None:
        if self.sample_rate <= 0 or self.hop <= 0 or self.n_mels <= 0:
            raise ValueError(f"MelSpec: sample_rate, hop and n_mels must be > 0: {self}")
        # Even n_fft: the padded clip then always holds its last frame (centre at S//hop*hop).
        if self.n_fft <= 0 or self.n_fft % 2:
            raise ValueError(f"MelSpec: n_fft must be even and > 0, got {self.n_fft}")
        if self.hop > self.n_fft:
            raise ValueError(f"MelSpec: hop ({self.hop}) must be <= n_fft ({self.n_fft})")
        if not 0.0 <= self.fmin < self.fmax <= self.sample_rate / 2:
            raise ValueError(f"MelSpec: need 0 <= fmin < fmax <= sample_rate/2: {self}")

    @property
    def rate(self) -> float:
        """Feature rows per second (50 with the defaults)."""
        return self.sample_rate / self.hop

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str | None = None) -> "MelSpec":
        """Build from a dict with every field; other keys (a manifest's "window", ...) ignored.
        ConfigError (a ValueError) names the missing or ill-typed fields and `source`."""
        return config_from_mapping(cls, d, source, ignore_unknown=True)


def log_mel(samples: np.ndarray, spec: MelSpec = MelSpec()) -> np.ndarray:
    """Log-mel spectrogram of a whole clip.

    Args:
        samples: float [S] mono at spec.sample_rate (as `load_audio` returns).
        spec: the feature parameters.

    Returns:
        float32 [M, n_mels], M = S // hop + 1; row k describes the n_fft samples centred on k*hop.
    """
    x = np.asarray(samples)
    if x.ndim != 1:
        raise ValueError(f"expected mono samples [S], got shape {x.shape}")
    pad, n_rows = spec.n_fft // 2, x.shape[0] // spec.hop + 1
    out = np.empty((n_rows, spec.n_mels), dtype=np.float32)
    # Rows in blocks, each from its own float64 slice of the zero-padded signal: the same numbers as
    # padding the whole clip, without two float64 copies of it (10 min of audio: ~150 MB less).
    for a in range(0, n_rows, _BLOCK):
        b = min(a + _BLOCK, n_rows)
        start, end = a * spec.hop - pad, (b - 1) * spec.hop - pad + spec.n_fft  # in unpadded samples
        piece = _as_mono(x[max(start, 0):min(end, x.shape[0])])  # start <= len(x): rows <= len // hop
        piece = np.pad(piece, (max(-start, 0), max(end - x.shape[0], 0)))
        out[a:b] = _frames_log_mel(piece, b - a, spec)
    return out


class MelStreamer:
    """Incremental `log_mel`: the rows equal `log_mel` of the concatenated chunks (within 1e-5).

    Keeps fewer than n_fft samples between calls. Usage: `feed(chunk)` as audio arrives, then
    `flush()` once at the end of the clip for the last rows (those that need the end padding).
    """

    def __init__(self, spec: MelSpec = MelSpec()) -> None:
        self.spec = spec
        self.reset()

    def reset(self) -> None:
        """Start a new clip."""
        self._buf = np.zeros(self.spec.n_fft // 2)  # the leading zero padding
        self._n_samples = 0
        self._n_rows = 0
        self._flushed = False

    @property
    def n_rows(self) -> int:
        """Rows returned so far."""
        return self._n_rows

    @property
    def n_samples(self) -> int:
        """Samples fed so far."""
        return self._n_samples

    @property
    def buffered_samples(self) -> int:
        """Samples (padding included) kept for the next rows; < n_fft after each feed()."""
        return self._buf.shape[0]

    def feed(self, chunk: np.ndarray) -> np.ndarray:
        """Add samples float [s] (any length, 0 too); return the newly complete rows [K, n_mels]."""
        if self._flushed:
            raise RuntimeError("MelStreamer: feed() after flush(); call reset() for a new clip")
        x = _as_mono(chunk)
        self._n_samples += x.shape[0]
        self._buf = np.concatenate([self._buf, x])
        n_fft, hop = self.spec.n_fft, self.spec.hop
        k = (self._buf.shape[0] - n_fft) // hop + 1 if self._buf.shape[0] >= n_fft else 0
        return self._emit(k)

    def flush(self) -> np.ndarray:
        """End of clip: return the remaining rows [K, n_mels] (they use the end zero padding)."""
        if self._flushed:
            raise RuntimeError("MelStreamer: flush() called twice; call reset() for a new clip")
        self._flushed = True
        self._buf = np.concatenate([self._buf, np.zeros(self.spec.n_fft // 2)])
        return self._emit(self._n_samples // self.spec.hop + 1 - self._n_rows)

    def _emit(self, k: int) -> np.ndarray:
        rows = _frames_log_mel(self._buf, k, self.spec)
        self._buf = self._buf[k * self.spec.hop :].copy()  # copy: drop the old array
        self._n_rows += k
        return rows


def frame_windows(
    features: np.ndarray,
    n_frames: int,
    fps: float = 25.0,
    rate: float = 50.0,
    window: int = 16,
    *,
    first_frame: int = 0,
    row_offset: int = 0,
) -> np.ndarray:
    """Feature windows of video frames: rows window_bounds(n) of `features`, edges repeated.

    Args:
        features: [M, F] rows at `rate` Hz (log-mel, HuBERT, ...).
        n_frames: how many video frames, starting at `first_frame`.
        fps: video frame rate.
        rate: feature rows per second.
        window: rows per window; frame n gets rows c - window//2 .. c - window//2 + window - 1
            with c = round(n * rate / fps), clamped to the clip's rows.
        first_frame: index of the first frame wanted (streaming).
        row_offset: global index of features[0] (streaming on a buffer that dropped old rows).
            The clip's last row is taken to be the buffer's last row: mid-stream, only ask for
            frames n with rows_needed(n) <= row_offset + M.

    Returns:
        float32 [n_frames, window, F].
    """
    if n_frames < 0 or window <= 0:
        raise ValueError(f"frame_windows: need n_frames >= 0, window > 0; got {n_frames}, {window}")
    feats = np.asarray(features)
    if feats.ndim != 2 or feats.shape[0] == 0:
        raise ValueError(f"frame_windows: features must be [M>0, F], got shape {feats.shape}")
    n = np.arange(first_frame, first_frame + n_frames, dtype=np.int64)
    start = _centre_rows(n, fps, rate) - window // 2
    rows = np.clip(start[:, None] + np.arange(window), 0, row_offset + feats.shape[0] - 1)
    local = rows - row_offset
    if local.size and local.min() < 0:
        raise ValueError(
            f"frame_windows: frame {first_frame} needs row {int(rows.min())} but the buffer "
            f"starts at row {row_offset}; keep rows from window_bounds(n)[0]"
        )
    return feats[local].astype(np.float32, copy=False)


class RowBuffer:
    """Feature rows [start, end) of a stream (`frame_windows(rows, ..., row_offset=start)`); rows
    before the oldest window still needed are dropped, so memory stays bounded."""

    def __init__(self, dim: int) -> None:
        self.rows = np.zeros((0, dim), dtype=np.float32)
        self.start = 0

    @property
    def end(self) -> int:
        return self.start + self.rows.shape[0]

    def append(self, new: np.ndarray) -> None:
        if new.shape[0]:
            self.rows = np.concatenate([self.rows, new.astype(np.float32, copy=False)])

    def drop_before(self, row: int) -> None:
        k = min(max(0, row - self.start), self.rows.shape[0] - 1)  # keep >= 1 row for edge repeats
        if k > 0:
            self.rows = self.rows[k:].copy()
            self.start += k


def window_bounds(
    n: int, fps: float = 25.0, rate: float = 50.0, window: int = 16
) -> tuple[int, int]:
    """Rows [start, stop) of frame n's window before clamping (start may be < 0)."""
    start = int(_centre_rows(np.array([n], dtype=np.int64), fps, rate)[0]) - window // 2
    return start, start + window


def rows_needed(n: int, fps: float = 25.0, rate: float = 50.0, window: int = 16) -> int:
    """How many feature rows (from row 0) must exist before frame n's window is final mid-stream.

    At the end of a clip fewer rows suffice: the window then repeats the last row.
    """
    return window_bounds(n, fps, rate, window)[1]


def frames_ready(n: int, rows: int, limit: int, fps: float = 25.0, rate: float = 50.0, window: int = 16,
                 short_by: int = 0) -> int:
    """The first frame >= n that is not final yet: frames are final once the clip surely has them
    (< `limit`) and their window's rows exist (`rows` rows in all), or all but its last `short_by`
    rows (a live server's shorter lookahead; the missing rows repeat the last one)."""
    while n < limit and rows_needed(n, fps, rate, window) - short_by <= rows:
        n += 1
    return n


def n_video_frames(n_samples: int, sample_rate: int = 16000, fps: float = 25.0) -> int:
    """Video frames of a clip: round(n_samples * fps / sample_rate), ties up."""
    x = Fraction(int(n_samples)) * _fraction(fps) / _fraction(sample_rate)
    return int((2 * x.numerator + x.denominator) // (2 * x.denominator))


def mel_filterbank(spec: MelSpec) -> np.ndarray:
    """Slaney-normalised Slaney-scale filterbank, float64 [n_mels, n_fft//2 + 1] (read-only)."""
    return _mel_filterbank(spec)


def _fraction(x: float) -> Fraction:
    # Exact for integers and for the usual fps (29.97 -> 2997/100, 30000/1001 as a float -> itself).
    return Fraction(x).limit_denominator(1_000_000)


def _centre_rows(n: np.ndarray, fps: float, rate: float) -> np.ndarray:
    """c = round(n * rate / fps), ties up, in exact integer arithmetic."""
    r = (_fraction(rate) / _fraction(fps)).limit_denominator(1_000_000)
    p, q = r.numerator, r.denominator
    return (2 * n * p + q) // (2 * q)


def _as_mono(samples: np.ndarray) -> np.ndarray:
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"expected mono samples [S], got shape {x.shape}")
    return x


def _frames_log_mel(padded: np.ndarray, n_frames: int, spec: MelSpec) -> np.ndarray:
    """Log-mel of frames padded[k*hop : k*hop + n_fft], k = 0..n_frames-1 -> float32 [K, n_mels]."""
    out = np.empty((n_frames, spec.n_mels), dtype=np.float32)
    if n_frames == 0:
        return out
    frames = np.lib.stride_tricks.sliding_window_view(padded, spec.n_fft)[:: spec.hop]
    window = _hann(spec.n_fft)
    fb = _mel_filterbank(spec)
    for a in range(0, n_frames, _BLOCK):
        b = min(a + _BLOCK, n_frames)
        power = np.abs(np.fft.rfft(frames[a:b] * window, axis=1)) ** 2
        out[a:b] = np.log(power @ fb.T + LOG_EPS)
    return out


@lru_cache(maxsize=8)
def _hann(n: int) -> np.ndarray:
    w = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)  # periodic, as for spectral analysis
    w.setflags(write=False)
    return w


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney: linear (3 / 200 mel per Hz) below 1 kHz, log with 27 mels per factor 6.4 above."""
    f = np.asarray(f, dtype=np.float64)
    logstep = np.log(6.4) / 27.0
    above = 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / logstep
    return np.where(f < 1000.0, f * 3.0 / 200.0, above)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    logstep = np.log(6.4) / 27.0
    return np.where(m < 15.0, m * 200.0 / 3.0, 1000.0 * np.exp(logstep * (m - 15.0)))


@lru_cache(maxsize=8)
def _mel_filterbank(spec: MelSpec) -> np.ndarray:
    fft_hz = np.linspace(0.0, spec.sample_rate / 2, spec.n_fft // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(spec.fmin), _hz_to_mel(spec.fmax), spec.n_mels + 2))
    width = np.diff(edges)
    ramps = edges[:, None] - fft_hz[None, :]
    rising = -ramps[:-2] / width[:-1, None]
    falling = ramps[2:] / width[1:, None]
    fb = np.maximum(0.0, np.minimum(rising, falling))
    fb *= (2.0 / (edges[2:] - edges[:-2]))[:, None]  # Slaney: equal area per filter
    fb.setflags(write=False)
    return fb
