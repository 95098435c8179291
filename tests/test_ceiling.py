"""The audio-mouth ceiling harness's out-of-fold machinery (benchmarks/audio_mouth_ceiling.py) on
synthetic data whose answer is known."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from embedtalk_sdk.audio.features import FeatureSource

_spec = importlib.util.spec_from_file_location(
    "audio_mouth_ceiling", Path(__file__).parents[1] / "benchmarks" / "audio_mouth_ceiling.py")
ceiling = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = ceiling  # dataclasses look their module up
_spec.loader.exec_module(ceiling)


def linear_data(n: int = 600, d: int = 24, noise: float = 0.5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * rng.uniform(0.1, 10.0, size=d)  # unequal scales: standardisation matters
    y = x @ (rng.normal(size=d) / x.std(0)) + noise * rng.normal(size=n) + 3.0
    return x, y


def test_oof_ridge_recovers_a_linear_target():
    x, y = linear_data()
    cv = ceiling.RidgeCV(x, y)
    pred, tests = ceiling.out_of_fold(len(y), cv)
    s = ceiling.scores(pred, y, tests)
    # signal std ~sqrt(24) against noise 0.5: the ideal correlation is ~0.995
    assert s["corr"] > 0.97 and all(c > 0.95 for c in s["fold_corr"]), s
    assert 0.9 < s["amp"] < 1.05, s
    assert len(cv.chosen) == 5 and all(lam in ceiling.LAMBDAS for lam in cv.chosen)
    assert abs(pred.mean() - y.mean()) < 0.2  # predictions carry the training mean


def test_oof_ridge_on_a_shuffled_target_finds_nothing():
    x, y = linear_data()
    y = np.random.default_rng(1).permutation(y)
    cv = ceiling.RidgeCV(x, y)
    pred, tests = ceiling.out_of_fold(len(y), cv)
    assert abs(ceiling.scores(pred, y, tests)["corr"]) < 0.15
    assert max(cv.chosen) >= 1000  # nothing to fit: the heaviest penalties win


def test_no_test_frame_within_the_gap_of_a_training_frame():
    seen: list[tuple[np.ndarray, np.ndarray]] = []

    def fit(train: np.ndarray, test: np.ndarray) -> np.ndarray:
        seen.append((train, test))
        return np.zeros(len(test))

    n, gap = 103, 8
    ceiling.out_of_fold(n, fit, folds=5, gap=gap)
    assert np.array_equal(np.sort(np.concatenate([t for _, t in seen])), np.arange(n))  # every frame tested once
    for train, test in seen:
        assert np.all(np.diff(test) == 1)  # contiguous
        assert np.abs(train[:, None] - test[None, :]).min() > gap
        assert len(train) == n - len(test) - (test.min() > 0) * gap - (test.max() < n - 1) * gap  # only the gap dropped
    # the inner lambda search keeps the gap too, across the outer fold's hole
    inner = ceiling.train_part(np.arange(n), np.arange(40, 60), gap)
    for test in ceiling.contiguous_folds(inner, 5):
        assert np.abs(ceiling.train_part(inner, test, gap)[:, None] - test[None, :]).min() > gap


def test_encoders_default_and_concatenation(tmp_path: Path):
    names = ceiling.audio_encoders(with_hubert=False)
    assert "mel" in names and "features" not in names and "hubert" not in names
    assert "hubert" in ceiling.audio_encoders(with_hubert=True)
    wav = tmp_path / "a.wav"
    sf.write(wav, np.random.default_rng(0).normal(scale=0.1, size=16000).astype(np.float32), 16000)
    mel, rate = ceiling.encoder_rows("mel", FeatureSource(wav))
    both, rate2 = ceiling.encoder_rows("mel+mel", FeatureSource(wav))
    assert rate == rate2 == 50.0
    assert both.shape == (len(mel), 2 * mel.shape[1]) and np.array_equal(both[:, mel.shape[1]:], mel)
