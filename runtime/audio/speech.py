"""Procedural speech-like audio with a ground-truth mouth-opening curve (numpy + scipy).

A sentence is phrases of words of syllables: (consonant) + vowel (+ coda). Vowels are a glottal
pulse train (f0 100-220 Hz with declination, accents and drift) through a cascade of formant
resonators with textbook F1/F2/F3; consonants are short noise bursts, closures or nasal murmur.
The mouth opening follows each vowel's amplitude envelope times its openness (/a/ most open,
/i/ /u/ least), is zero in pauses and bilabial closures, and is smoothed, so it is predictable
from the audio's spectrum (loudness and F1 both grow with openness).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import signal
from scipy.ndimage import gaussian_filter1d

OPENNESS_RATE = 100  # Hz: the mouth curve has one value per 10 ms

# Peterson & Barney style adult formants (Hz) and how open the mouth is for each vowel.
VOWELS: dict[str, tuple[tuple[float, float, float], float]] = {
    "a": ((730.0, 1090.0, 2440.0), 1.00),
    "e": ((530.0, 1840.0, 2480.0), 0.65),
    "o": ((570.0, 840.0, 2410.0), 0.70),
    "i": ((270.0, 2290.0, 3010.0), 0.35),
    "u": ((300.0, 870.0, 2240.0), 0.30),
}
_BANDWIDTHS = (80.0, 100.0, 140.0)
_FIXED_FORMANTS = ((3500.0, 250.0), (4500.0, 300.0))  # F4, F5: constant, for a natural tilt

# Consonants: kind, noise band (Hz) or None, lips closed?
_CONSONANTS: dict[str, tuple[str, tuple[float, float] | None, bool]] = {
    "p": ("stop", (400.0, 1500.0), True),
    "b": ("stop", (300.0, 1200.0), True),
    "m": ("nasal", None, True),
    "t": ("stop", (3000.0, 6000.0), False),
    "d": ("stop", (2500.0, 5000.0), False),
    "k": ("stop", (1500.0, 3200.0), False),
    "g": ("stop", (1200.0, 2800.0), False),
    "s": ("fric", (4000.0, 7500.0), False),
    "sh": ("fric", (2000.0, 5000.0), False),
    "f": ("fric", (1200.0, 7000.0), False),
    "n": ("nasal", None, False),
    "l": ("liquid", None, False),
}
_VOICED = {"b", "d", "g", "m", "n", "l"}


@dataclass(frozen=True)
class SpeechTrack:
    """A synthetic sentence and its mouth-opening ground truth.

    samples: [S] float32 in [-1, 1] at `sample_rate`.
    openness: [M] float32 in [0, 1], row k is the mouth opening at t = k / OPENNESS_RATE.
    text: the syllables spoken, words separated by spaces and phrases by " | ".
    """

    samples: np.ndarray
    sample_rate: int
    openness: np.ndarray
    text: str

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.sample_rate

    def mouth_open(self, t_seconds: float | np.ndarray) -> np.ndarray:
        """Mouth opening in [0, 1] at times `t_seconds` (any shape), linear interpolation."""
        grid = np.arange(len(self.openness)) / OPENNESS_RATE
        return np.interp(t_seconds, grid, self.openness).astype(np.float32)


@dataclass
class _Segment:
    """One stretch of the control signals (all amplitudes relative, shaped later)."""

    n: int  # samples
    voice: float = 0.0  # glottal source amplitude
    noise: float = 0.0  # burst / frication amplitude
    band: tuple[float, float] | None = None
    formants: tuple[float, float, float] = (500.0, 1500.0, 2500.0)
    mouth: float = 0.0  # target opening
    shape: str = "flat"  # amplitude envelope: "flat" | "vowel" | "burst"
    accent: float = 0.0  # semitones of pitch accent
    phrase: int = -1  # phrase index (-1 in pauses) for declination


def synthesize_speech(seconds: float, seed: int, sample_rate: int = 16000) -> SpeechTrack:
    """Synthesise `seconds` of speech-like audio; different seeds give different sentences."""
    rng = np.random.default_rng(seed)
    n_total = int(round(seconds * sample_rate))
    segments, text = _plan_sentence(rng, n_total, sample_rate)
    controls = _render_controls(segments, n_total, sample_rate)
    f0 = _pitch_contour(controls, rng, sample_rate)
    voiced = _voiced_part(controls, f0, rng, sample_rate)
    noise = _noise_part(segments, rng, n_total, sample_rate)
    audio = voiced + noise + 3e-4 * rng.standard_normal(n_total)  # faint room noise floor
    audio *= 0.7 / max(float(np.percentile(np.abs(audio), 99.9)), 1e-6)
    samples = np.clip(audio, -0.99, 0.99).astype(np.float32)
    openness = _mouth_curve(controls["mouth"], sample_rate)
    return SpeechTrack(samples=samples, sample_rate=sample_rate, openness=openness, text=text)


# ---------------------------------------------------------------------------------------------
# Planning: which sounds, when.


def _plan_sentence(rng: np.random.Generator, n_total: int, sr: int) -> tuple[list[_Segment], str]:
    """Segments covering exactly `n_total` samples, and the transcript."""
    ms = lambda lo, hi: int(rng.uniform(lo, hi) * sr / 1000)  # noqa: E731
    segs = [_Segment(n=ms(200, 400))]  # leading silence
    used, words, phrase = segs[0].n, [], 0
    while used < n_total:
        phrase_words = []
        for _ in range(rng.integers(2, 6)):
            word_segs, word = _plan_word(rng, sr, phrase)
            segs += word_segs + [_Segment(n=ms(30, 110))]  # gap between words
            used += sum(s.n for s in word_segs) + segs[-1].n
            phrase_words.append(word)
            if used >= n_total:
                break
        segs.append(_Segment(n=ms(250, 550)))  # pause between phrases
        used += segs[-1].n
        words.append(" ".join(phrase_words))
        phrase += 1
    _trim(segs, n_total)
    return segs, " | ".join(words)


def _plan_word(rng: np.random.Generator, sr: int, phrase: int) -> tuple[list[_Segment], str]:
    """One word of 1-3 syllables; the first syllable carries the pitch accent."""
    segs, sylls = [], []
    n_syll = int(rng.choice([1, 2, 2, 3], p=[0.3, 0.3, 0.2, 0.2]))
    for k in range(n_syll):
        onset = rng.choice(list(_CONSONANTS)) if rng.random() < 0.85 else ""
        vowel = str(rng.choice(list(VOWELS)))
        coda = str(rng.choice(["n", "s", "t", "m"])) if rng.random() < 0.2 else ""
        accent = rng.uniform(1.0, 3.0) if k == 0 and rng.random() < 0.6 else 0.0
        segs += _plan_syllable(rng, sr, str(onset), vowel, coda, accent, phrase)
        sylls.append(f"{onset}{vowel}{coda}")
    return segs, "-".join(sylls)


def _plan_syllable(rng: np.random.Generator, sr: int, onset: str, vowel: str, coda: str,
                   accent: float, phrase: int) -> list[_Segment]:
    formants, openness = VOWELS[vowel]
    ms = lambda lo, hi: int(rng.uniform(lo, hi) * sr / 1000)  # noqa: E731
    segs = []
    if onset:
        segs += _consonant(onset, formants, openness, ms, phrase)
    vowel_ms = (140, 260) if accent else (110, 210)
    segs.append(_Segment(n=ms(*vowel_ms), voice=1.0, formants=formants, mouth=openness,
                         shape="vowel", accent=accent, phrase=phrase))
    if coda:
        segs += _consonant(coda, formants, openness, ms, phrase)
    return segs


def _consonant(c: str, formants: tuple[float, float, float], openness: float,
               ms: Callable[[float, float], int], phrase: int) -> list[_Segment]:
    """Segments for one consonant next to a vowel with `formants` and `openness`."""
    kind, band, lips_closed = _CONSONANTS[c]
    voiced = c in _VOICED
    near = 0.0 if lips_closed else 0.35 * openness  # jaw half-follows the vowel
    if kind == "stop":
        closure = _Segment(n=ms(35, 70), voice=0.08 if voiced else 0.0, formants=(250, 900, 2300),
                           mouth=near, phrase=phrase)
        burst = _Segment(n=ms(10, 22), noise=0.5, band=band, mouth=near, shape="burst",
                         phrase=phrase)
        aspir = _Segment(n=ms(15, 35), noise=0.0 if voiced else 0.12, band=(800.0, 5000.0),
                         voice=0.3 if voiced else 0.0, formants=formants, mouth=near,
                         shape="burst", phrase=phrase)
        return [closure, burst, aspir]
    if kind == "fric":
        mouth = 0.1 if c == "f" else 0.15
        amp = {"s": 0.35, "sh": 0.35, "f": 0.12}[c]
        return [_Segment(n=ms(70, 120), noise=amp, band=band, mouth=mouth, shape="vowel",
                         phrase=phrase)]
    if kind == "nasal":
        return [_Segment(n=ms(55, 90), voice=0.35, formants=(250.0, 1100.0, 2400.0), mouth=near,
                         shape="vowel", phrase=phrase)]
    return [_Segment(n=ms(45, 70), voice=0.6, formants=(360.0, 1300.0, 2700.0),
                     mouth=0.5 * openness, shape="vowel", phrase=phrase)]  # /l/


def _trim(segs: list[_Segment], n_total: int) -> None:
    """Cut the plan to exactly `n_total` samples, ending in silence if possible."""
    used = 0
    for k, s in enumerate(segs):
        if used + s.n >= n_total:
            s.n = n_total - used
            del segs[k + 1:]
            return
        used += s.n


# ---------------------------------------------------------------------------------------------
# Control signals at audio rate.


def _envelope(n: int, shape: str, sr: int) -> np.ndarray:
    """Amplitude envelope [n]: raised-cosine attack/decay so syllables swell and fade."""
    env = np.ones(n)
    if shape == "flat" or n == 0:
        return env
    attack, decay = (0.03, 0.07) if shape == "vowel" else (0.002, 0.008)
    na, nd = min(int(attack * sr), n // 2), min(int(decay * sr), n // 2)
    if na:
        env[:na] = 0.5 - 0.5 * np.cos(np.pi * np.arange(na) / na)
    if nd:
        env[n - nd:] = 0.5 + 0.5 * np.cos(np.pi * np.arange(1, nd + 1) / nd)
    if shape == "vowel":
        env *= np.linspace(1.0, 0.8, n)  # slight loss of loudness through the syllable
    return env


def _render_controls(segs: list[_Segment], n_total: int, sr: int) -> dict[str, np.ndarray]:
    """Per-sample control arrays: voice, formants [S,3], mouth, accent, phrase position."""
    voice = np.zeros(n_total)
    mouth = np.zeros(n_total)
    accent = np.zeros(n_total)
    formants = np.zeros((n_total, 3))
    phrase_pos = np.zeros(n_total)  # 0 at a phrase's start .. 1 at its end (declination)
    starts = np.cumsum([0] + [s.n for s in segs])
    for s, a in zip(segs, starts):
        env = _envelope(s.n, s.shape, sr)
        voice[a:a + s.n] = s.voice * env
        mouth[a:a + s.n] = s.mouth * (env if s.shape == "vowel" else 1.0)
        accent[a:a + s.n] = s.accent
        formants[a:a + s.n] = s.formants
    for p in {s.phrase for s in segs} - {-1}:
        idx = [k for k, s in enumerate(segs) if s.phrase == p]
        a, b = starts[idx[0]], starts[idx[-1] + 1]
        phrase_pos[a:b] = np.linspace(0.0, 1.0, b - a)
    return {"voice": voice, "mouth": mouth, "accent": accent, "formants": formants,
            "phrase_pos": phrase_pos}


def _pitch_contour(controls: dict[str, np.ndarray], rng: np.random.Generator,
                   sr: int) -> np.ndarray:
    """f0 [S] in Hz: speaker base, phrase declination, smoothed accents, slow drift."""
    n = len(controls["voice"])
    t = np.arange(n) / sr
    base = rng.uniform(100.0, 220.0)
    step = sr // 1000  # smooth at 1 kHz: cheap and plenty for pitch
    accent = gaussian_filter1d(controls["accent"][::step], sigma=40.0)
    accent = np.interp(np.arange(n), np.arange(0, n, step), accent)
    drift = 1.0 * np.sin(2 * np.pi * rng.uniform(0.15, 0.35) * t + rng.uniform(0, 2 * np.pi))
    semitones = 1.0 - 3.0 * controls["phrase_pos"] + accent + drift
    return base * 2.0 ** (semitones / 12.0)


def _glottal_pulses(f0: np.ndarray, rng: np.random.Generator, sr: int) -> np.ndarray:
    """Rosenberg glottal flow derivative [S] for the instantaneous pitch `f0` [S]."""
    jitter = 1.0 + 0.01 * gaussian_filter1d(rng.standard_normal(len(f0)), sigma=sr * 0.01) * 10
    phase = np.mod(np.cumsum(f0 * jitter / sr), 1.0)
    tp, tn = 0.4, 0.16  # opening and closing fractions of the period
    flow = np.where(phase < tp, 0.5 - 0.5 * np.cos(np.pi * phase / tp), 0.0)
    closing = (phase >= tp) & (phase < tp + tn)
    flow[closing] = np.cos(0.5 * np.pi * (phase[closing] - tp) / tn)
    return np.diff(flow, prepend=0.0)  # lip radiation ~ differentiation


def _resonator(freq: np.ndarray, bw: float, sr: int) -> tuple[np.ndarray, np.ndarray]:
    """Klatt two-pole resonator coefficients (unity gain at DC) for centre frequencies [B]."""
    c = -np.exp(-2 * np.pi * bw / sr) * np.ones_like(freq)
    b = 2 * np.exp(-np.pi * bw / sr) * np.cos(2 * np.pi * freq / sr)
    return 1.0 - b - c, np.stack([b, c], axis=-1)


def _voiced_part(controls: dict[str, np.ndarray], f0: np.ndarray, rng: np.random.Generator,
                 sr: int) -> np.ndarray:
    """Glottal source (plus a little breath) through time-varying cascade formant filters."""
    n = len(f0)
    source = _glottal_pulses(f0, rng, sr) + 0.003 * rng.standard_normal(n)
    source *= controls["voice"]
    block = sr // 200  # 5 ms blocks: formants change slowly, so filter block-wise with state
    n_blocks = -(-n // block)
    tracks = controls["formants"][::block][:n_blocks]
    voiced = controls["voice"][::block][:n_blocks] > 0
    tracks = _hold_formants(tracks, voiced)
    tracks = gaussian_filter1d(tracks, sigma=3.0, axis=0)  # ~15 ms formant transitions
    out = source.copy()
    for k, bw in enumerate(_BANDWIDTHS):
        out = _filter_blocks(out, tracks[:, k], bw, block, sr)
    for freq, bw in _FIXED_FORMANTS:
        out = _filter_blocks(out, np.full(n_blocks, freq), bw, block, sr)
    return out


def _hold_formants(tracks: np.ndarray, voiced: np.ndarray) -> np.ndarray:
    """Carry the last voiced formants through silences so transitions start from real vowels."""
    if not voiced.any():
        return np.tile([500.0, 1500.0, 2500.0], (len(tracks), 1))
    idx = np.where(voiced, np.arange(len(tracks)), 0)
    idx = np.maximum.accumulate(idx)
    first = int(np.argmax(voiced))
    idx[:first] = first
    return tracks[idx]


def _filter_blocks(x: np.ndarray, freqs: np.ndarray, bw: float, block: int, sr: int) -> np.ndarray:
    """Run `x` through a resonator whose centre frequency changes every `block` samples."""
    gains, poles = _resonator(freqs, bw, sr)
    y = np.empty_like(x)
    zi = np.zeros(2)
    for k in range(len(freqs)):
        sl = slice(k * block, (k + 1) * block)
        a = np.array([1.0, -poles[k, 0], -poles[k, 1]])
        y[sl], zi = signal.lfilter([gains[k]], a, x[sl], zi=zi)
    return y


def _noise_part(segs: list[_Segment], rng: np.random.Generator, n_total: int,
                sr: int) -> np.ndarray:
    """Band-limited noise bursts and frication for the consonant segments [S]."""
    out = np.zeros(n_total)
    start = 0
    for s in segs:
        if s.noise > 0 and s.band is not None and s.n > 8:
            lo, hi = s.band[0], min(s.band[1], 0.45 * sr)
            sos = signal.butter(2, [lo, hi], btype="band", fs=sr, output="sos")
            burst = signal.sosfilt(sos, rng.standard_normal(s.n + 64))[64:]
            out[start:start + s.n] += s.noise * 0.02 * burst * _envelope(s.n, s.shape, sr)
        start += s.n
    return out


def _mouth_curve(mouth: np.ndarray, sr: int) -> np.ndarray:
    """Per-sample mouth targets -> smoothed openness at OPENNESS_RATE, float32 in [0, 1]."""
    step = sr // 1000
    ms = mouth[: len(mouth) // step * step].reshape(-1, step).mean(axis=1)  # 1 kHz
    ms = gaussian_filter1d(ms, sigma=25.0)  # the jaw is slow: ~25 ms smoothing
    hop = 1000 // OPENNESS_RATE
    n_out = int(np.ceil(len(mouth) / sr * OPENNESS_RATE)) + 1
    idx = np.minimum(np.arange(n_out) * hop, len(ms) - 1)
    return np.clip(ms[idx], 0.0, 1.0).astype(np.float32)
