"""Phonetic audio features: per-row phone posteriors of the CMU US-English acoustic model (numpy).

The "phonetic" encoder turns 16 kHz speech into 42 phone posteriors per 50 Hz row, the same rows
log-mel gives, from a pretrained acoustic model that installs offline (pocketsphinx's en-us PTM
model, BSD-2; its notice travels with every bundle that carries the scorer):

1. Sphinx's MFCC front end, as the model's feat.params sets it (`SphinxSpec`): 100 frames/s,
   410-sample Hamming windows, pre-emphasis 0.97, 25 mel filters 130-6800 Hz, 13 cepstra,
   lifter 22, and sphinx's noise removal, which feat.params forces on (without it the model's
   scores are off).
2. Causal cepstral mean normalisation (the mean of the last 500 frames, the model's prior
   fading out over the first 100), so a stream and a whole clip are the same computation.
3. 39-d features [c, d, dd] (d = c[t+2] - c[t-2], dd = d[t+1] - d[t-1]; 3 frames of lookahead,
   edges repeated).
4. The scorer, an ONNX graph in the bundle (embedtalk_sdk/audio/phonetic_model.py builds it and
   holds its numpy reference; export/audio_encoder.py writes it): log-likelihood of each phone's 3 state GMMs, softmax
   over the 42 phones at a temperature.
5. Row k (centred on sample 320 k, like log-mel's) is the mean of frames 2k-2 and 2k-1 (centred at
   20k - 7.2 and 20k + 2.8 ms), frames clamped to the clip.

Everything runs in fixed groups of `GROUP` frames aligned to the clip's start, so `features` (a
whole clip) and a `PhoneticStreamer` fed in any chunks give the same rows bit for bit.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any, Callable, Mapping

import numpy as np

from embedtalk_sdk.runtime.config import config_from_mapping

__all__ = ["SphinxSpec", "PhoneticStreamer", "Scorer", "GROUP", "N_PHONES", "FEATURE_DIM", "mfcc_filterbank",
           "sphinx_cepstra"]

GROUP = 2  # frames per front-end and scorer step: one 50 Hz row
N_PHONES = 42
FEATURE_DIM = 39  # [c, d, dd] of 13 cepstra
_INT16 = 32768.0  # sphinx works on int16 sample values; the noise floor (1.0) is in those units

Scorer = Callable[[np.ndarray], np.ndarray]  # float32 features [GROUP, 39] -> posteriors [GROUP, 42]


@dataclass(frozen=True)
class SphinxSpec:
    """The front end's parameters (the en-us model's feat.params) and the streaming CMN's."""

    sample_rate: int = 16000
    frame_rate: int = 100
    window_samples: int = 410  # 25.625 ms
    preemphasis: float = 0.97
    lower_hz: float = 130.0
    upper_hz: float = 6800.0
    n_filters: int = 25
    n_cepstra: int = 13
    lifter: int = 22
    remove_noise: bool = True
    # Fixed noise added to every sample (std, int16 units; 0 = none), like sphinx's -dither but the
    # same sequence every time. Digital silence (padding, a server's idle stream) otherwise gives
    # log(0)-level cepstra that no recording has: posteriors near 1 where speech gives <= 0.2.
    dither: float = 4.0
    cmn_window: int = 500  # frames of the causal cepstral mean
    cmn_prior_frames: int = 100  # weight of the model's prior mean (cmninit 40,3,-1) at the start
    temperature: float = 10.0  # of the softmax over phones (in the scorer graph)

    def __post_init__(self) -> None:
        if self.sample_rate % self.frame_rate or self.window_samples < self.sample_rate // self.frame_rate:
            raise ValueError(f"SphinxSpec: need a whole frame shift and window >= shift: {self}")
        if not 0 < self.lower_hz < self.upper_hz <= self.sample_rate / 2 or self.temperature <= 0:
            raise ValueError(f"SphinxSpec: bad filter band or temperature: {self}")

    @property
    def shift(self) -> int:
        """Samples between frames (160)."""
        return self.sample_rate // self.frame_rate

    @property
    def n_fft(self) -> int:
        """The FFT size: the window rounded up to a power of two (512)."""
        return 1 << (self.window_samples - 1).bit_length()

    @property
    def row_hop(self) -> int:
        """Samples between feature rows (320: 50 rows/s, like log-mel's)."""
        return self.shift * GROUP

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str | None = None) -> "SphinxSpec":
        """Build from a dict with every field (a missing "dither": 0, the definition before it).
        ConfigError (a ValueError) names the missing, unknown or ill-typed fields and `source`."""
        return config_from_mapping(cls, d, source, defaults={"dither": 0.0})


def mfcc_filterbank(spec: SphinxSpec) -> np.ndarray:
    """Sphinx's triangular mel filters [n_fft/2 + 1, n_filters] (fe_sigproc.c, edges on FFT bins)."""
    mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)  # noqa: E731
    mel_inv = lambda m: 700.0 * (10 ** (m / 2595.0) - 1.0)  # noqa: E731
    n_bins, bin_hz = spec.n_fft // 2 + 1, spec.sample_rate / spec.n_fft
    lo, hi = mel(spec.lower_hz), mel(spec.upper_hz)
    width = (hi - lo) / (spec.n_filters + 1)
    bank = np.zeros((n_bins, spec.n_filters))
    for i in range(spec.n_filters):
        left, centre, right = (int(mel_inv((i + j) * width + lo) / bin_hz + 0.5) * bin_hz for j in range(3))
        for j in range(n_bins):
            hz = j * bin_hz
            if hz < left:
                continue
            if hz > right or j == n_bins - 1:
                break
            up = (hz - left) / (centre - left) * 2 / (right - left)
            down = (right - hz) / (right - centre) * 2 / (right - left)
            bank[j, i] = min(up, down)
    return bank


class _FrontEnd:
    """Samples -> liftered cepstra [n, 13], GROUP frames at a time (sphinx's MFCC with noise removal)."""

    # fe_noise.c's constants: power smoothing, noise/floor adaptation up and down, peak decay,
    # masking, and the gain limit.
    _LAMBDA_POWER, _LAMBDA_A, _LAMBDA_B, _LAMBDA_T, _MU_T, _MAX_GAIN = 0.7, 0.995, 0.5, 0.85, 0.2, 20.0

    def __init__(self, spec: SphinxSpec) -> None:
        self.spec = spec
        n = spec.window_samples
        half = 0.54 - 0.46 * np.cos(2 * np.pi * np.arange(n // 2) / (n - 1.0))
        self._window = np.ones(n)
        self._window[: n // 2] = half
        self._window[n - 1 - np.arange(n // 2)] = half
        self._bank = mfcc_filterbank(spec)
        k, f = np.arange(spec.n_cepstra)[:, None], np.arange(spec.n_filters)[None, :]
        self._dct = (np.cos(np.pi / spec.n_filters * k * (f + 0.5)) * np.sqrt(2.0 / spec.n_filters)).T
        self._dct[:, 0] = np.sqrt(1.0 / spec.n_filters)
        self._lifter = 1 + spec.lifter / 2 * np.sin(np.arange(spec.n_cepstra) * np.pi / spec.lifter)
        nf = spec.n_filters
        self._smooth_lo, self._smooth_hi = np.maximum(np.arange(nf) - 4, 0), np.minimum(np.arange(nf) + 4, nf - 1)
        self._noise: dict[str, np.ndarray] = {}

    def cepstra(self, frames: np.ndarray) -> np.ndarray:
        """Pre-emphasised frames float64 [n, window_samples] -> cepstra float64 [n, n_cepstra]."""
        power = np.abs(np.fft.rfft(frames * self._window, self.spec.n_fft)) ** 2
        mel = power @ self._bank
        if self.spec.remove_noise:
            mel = np.stack([self._remove_noise(m) for m in mel])
        return (np.log(mel + 1e-4) @ self._dct) * self._lifter

    def _remove_noise(self, m: np.ndarray) -> np.ndarray:
        """One frame of fe_noise.c (floating point): spectral subtraction with a slowly adapting noise."""
        s = self._noise
        if not s:
            s.update(power=m.copy(), noise=m / self._MAX_GAIN, floor=m / self._MAX_GAIN, peak=np.zeros_like(m))
        power = self._LAMBDA_POWER * s["power"] + (1 - self._LAMBDA_POWER) * m
        a, b = self._LAMBDA_A, self._LAMBDA_B
        noise = np.where(power >= s["noise"], a * s["noise"] + (1 - a) * power, b * s["noise"] + (1 - b) * power)
        signal = np.maximum(power - noise, 1.0)
        floor = np.where(signal >= s["floor"], a * s["floor"] + (1 - a) * signal, b * s["floor"] + (1 - b) * signal)
        peak = s["peak"] * self._LAMBDA_T
        masked = np.where(signal < self._LAMBDA_T * peak, peak * self._MU_T, signal)
        peak = np.where(signal > peak, signal, peak)
        signal = np.maximum(masked, floor)
        # Digital silence has power 0: the gain is then the maximum, as the C code's comparison gives.
        gain = np.full_like(m, self._MAX_GAIN)
        np.divide(signal, power, out=gain, where=signal < self._MAX_GAIN * power)
        gain = np.maximum(gain, 1 / self._MAX_GAIN)
        sums = np.concatenate([[0.0], np.cumsum(gain)])
        s.update(power=power, noise=noise, floor=floor, peak=peak)
        lo, hi = self._smooth_lo, self._smooth_hi
        return m * (sums[hi + 1] - sums[lo]) / (hi - lo + 1)


_DITHER_PERIOD = 16000  # samples: the fixed noise sequence repeats every second


@lru_cache(maxsize=4)
def _dither_table(std: float) -> np.ndarray:
    return np.random.default_rng(20261207).standard_normal(_DITHER_PERIOD) * std


def _dither(spec: SphinxSpec, start: int, n: int) -> np.ndarray:
    """The fixed noise of samples [start, start + n) (int16 units), by global sample index."""
    return _dither_table(float(spec.dither))[(start + np.arange(n)) % _DITHER_PERIOD]


def sphinx_cepstra(samples: np.ndarray, spec: SphinxSpec = SphinxSpec()) -> np.ndarray:
    """Liftered cepstra float32 [T, 13] of a whole clip before CMN (what sphinx's decoder takes in
    `process_cep`): frame t is samples [160 t, 160 t + 410) of the pre-emphasised clip."""
    x = np.asarray(samples, dtype=np.float64).reshape(-1) * _INT16
    if spec.dither:
        x = x + _dither(spec, 0, x.shape[0])
    pre = np.concatenate([x[:1], x[1:] - spec.preemphasis * x[:-1]])
    n = max(0, (x.shape[0] - spec.window_samples) // spec.shift + 1)
    front, out = _FrontEnd(spec), []
    for t0 in range(0, n, GROUP):
        idx = np.arange(spec.window_samples)[None, :] + spec.shift * np.arange(t0, min(t0 + GROUP, n))[:, None]
        out.append(front.cepstra(pre[idx]))
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, spec.n_cepstra), np.float32)


class _CausalCmn:
    """Subtracts the mean of the last `cmn_window` cepstra (this one included), starting from the
    model's prior mean (cmninit 40,3,-1) weighted as `cmn_prior_frames` frames."""

    def __init__(self, spec: SphinxSpec) -> None:
        self._window, self._prior_frames = spec.cmn_window, spec.cmn_prior_frames
        self._prior = np.zeros(spec.n_cepstra)
        self._prior[:3] = (40.0, 3.0, -1.0)
        self._history = np.zeros((spec.cmn_window, spec.n_cepstra))
        self._sum = np.zeros(spec.n_cepstra)
        self._seen = 0

    def __call__(self, cep: np.ndarray) -> np.ndarray:
        out = np.empty_like(cep)
        for i, c in enumerate(cep):  # frame by frame: the running sum is the same in every chunking
            slot = self._seen % self._window
            if self._seen >= self._window:
                self._sum -= self._history[slot]
            self._history[slot] = c
            self._sum += c
            self._seen += 1
            n = min(self._seen, self._window)
            w = max(self._prior_frames - n, 0)
            out[i] = c - (self._sum + w * self._prior) / (n + w)
        return out


class PhoneticStreamer:
    """Phone-posterior rows of a clip fed in any chunks; `feed` then `flush` once.

    The rows equal `PhoneticEncoder.features` of the whole clip bit for bit. Latency: row k is out
    once sample 320 k + 890 arrived (its second frame's deltas read 3 frames ahead, and cepstra are made
    two frames at a time).
    """

    def __init__(self, spec: SphinxSpec, scorer: Scorer) -> None:
        self.spec, self._score = spec, scorer
        self._front, self._cmn = _FrontEnd(spec), _CausalCmn(spec)
        self._raw = np.zeros(0)  # pre-emphasised samples from frame `_frames`' first sample on
        self._last_sample = 0.0  # for the pre-emphasis across chunks
        self._n_samples = 0
        self._frames = 0  # cepstral frames made
        self._c: list[np.ndarray] = []  # normalised cepstra from frame `_c_base` on (deltas' context)
        self._c_base = 0
        self._scored = 0  # frames scored
        self._post = np.zeros((0, N_PHONES), np.float32)  # posteriors from frame `_post_base` on
        self._post_base = 0
        self._rows = 0
        self._flushed = False

    @property
    def n_samples(self) -> int:
        """Samples fed so far."""
        return self._n_samples

    def feed(self, chunk: np.ndarray) -> np.ndarray:
        """Add float samples [s] in [-1, 1] at 16 kHz; return the newly complete rows [K, 42]."""
        if self._flushed:
            raise RuntimeError("PhoneticStreamer: feed() after flush(); make a new streamer per clip")
        x = np.asarray(chunk, dtype=np.float64).reshape(-1) * _INT16
        if self.spec.dither:
            x = x + _dither(self.spec, self._n_samples, x.shape[0])
        self._n_samples += x.shape[0]
        if x.shape[0]:
            pre = np.empty_like(x)
            pre[0] = x[0] - self.spec.preemphasis * self._last_sample
            pre[1:] = x[1:] - self.spec.preemphasis * x[:-1]
            self._last_sample = x[-1]
            self._raw = np.concatenate([self._raw, pre])
        self._make_frames(final=False)
        self._score_frames(final=False)
        return self._make_rows(final=False)

    def flush(self) -> np.ndarray:
        """End of clip: the remaining rows (a clip shorter than one window is zero-padded to it)."""
        if self._flushed:
            raise RuntimeError("PhoneticStreamer: flush() called twice")
        self._flushed = True
        short = self.spec.window_samples - self._n_samples
        if short > 0:
            self._raw = np.concatenate([self._raw, np.zeros(short)])
        self._make_frames(final=True)
        self._score_frames(final=True)
        return self._make_rows(final=True)

    def _available_frames(self) -> int:
        """Frames whose whole window arrived (counted from the clip's start)."""
        return self._frames + max(0, (self._raw.shape[0] - self.spec.window_samples) // self.spec.shift + 1)

    def _make_frames(self, final: bool) -> None:
        shift, size = self.spec.shift, self.spec.window_samples
        while True:
            n = min(GROUP, self._available_frames() - self._frames)
            if n <= 0 or (n < GROUP and not final):
                return
            idx = np.arange(size)[None, :] + shift * np.arange(n)[:, None]
            cep = self._front.cepstra(self._raw[idx])
            self._c.extend(self._cmn(cep))
            self._raw = self._raw[n * shift :]
            self._frames += n

    def _delta_features(self, t0: int, n: int) -> np.ndarray:
        """[c, d, dd] float32 [n, 39] of frames t0.., edges repeated (frame count known when final)."""
        last = self._frames - 1
        held = np.stack(self._c)  # one stack per call, not seven: the features 1.06 -> 0.97 CPU ms a frame

        def c(t: np.ndarray) -> np.ndarray:
            return held[np.clip(t, 0, last) - self._c_base]

        t = np.arange(t0, t0 + n)
        d = c(t + 2) - c(t - 2)
        dd = (c(t + 3) - c(t - 1)) - (c(t + 1) - c(t - 3))
        return np.concatenate([c(t), d, dd], axis=1).astype(np.float32)

    def _score_frames(self, final: bool) -> None:
        while True:
            # The deltas of frame t read c up to t + 3: before the end, wait for those frames.
            ready = self._frames if final else self._frames - 3
            n = min(GROUP, ready - self._scored)
            if n <= 0 or (n < GROUP and not final):
                return
            feats = self._delta_features(self._scored, n)
            if n < GROUP:  # the clip's last group: one scorer shape everywhere
                feats = np.concatenate([feats, np.repeat(feats[-1:], GROUP - n, axis=0)])
            post = np.asarray(self._score(feats), dtype=np.float32)[:n]
            self._post = np.concatenate([self._post, post])
            self._scored += n
            drop = max(0, self._scored - 3 - self._c_base)  # the next deltas read c from t - 3 on
            del self._c[:drop]
            self._c_base += drop

    def _make_rows(self, final: bool) -> np.ndarray:
        """Rows k whose two frames are scored; at the end, every row up to S // row_hop."""
        if final:
            end = self._n_samples // self.spec.row_hop + 1
        else:  # row k > 0 needs frame 2k - 1; row 0 frame 0
            end = self._scored // GROUP + 1 if self._scored else 0
        out = []
        for k in range(self._rows, end):
            a, b = (min(max(t, 0), self._scored - 1) for t in (GROUP * k - 2, GROUP * k - 1))
            out.append((self._post[a - self._post_base] + self._post[b - self._post_base]) * np.float32(0.5))
        self._rows = max(self._rows, end)
        drop = max(0, GROUP * self._rows - 2 - self._post_base)  # the next row reads frames from 2k - 2 on
        if drop and not final:
            self._post, self._post_base = self._post[drop:], self._post_base + drop
        return np.stack(out) if out else np.zeros((0, N_PHONES), np.float32)
