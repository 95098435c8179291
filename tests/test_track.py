"""The torso track as video (runtime/track.py) and the format-2 bundle around it."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from embedtalk_sdk.export.bundle import write_bundle
from embedtalk_sdk.runtime.avatar import Avatar
from embedtalk_sdk.runtime.bundle import MANIFEST, Bundle, BundleError, bundle_parts
from embedtalk_sdk.runtime.camera import pingpong
from embedtalk_sdk.runtime.manifest import seal
from embedtalk_sdk.runtime.track import VideoTrack, encode_track

from test_runtime import make_test_bundle, speech

H, W = 42, 54


def smooth_images(kb: int, h: int = H, w: int = W) -> np.ndarray:
    """Kb distinct, smooth colour images (a moving gradient), each far from the others."""
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    out = [np.stack([120 + 80 * np.sin(xx / 11 + k), 120 + 80 * np.cos(yy / 9 - 0.7 * k), 30 + 40.0 * k + 0 * xx], -1)
           for k in range(kb)]
    return np.clip(out, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("kb", [1, 2, 5])
def test_round_trip_count_order_size(kb: int) -> None:
    images = smooth_images(kb)
    track = VideoTrack(encode_track(images), "t.mp4", kb, H, W)
    for n in range(4 * kb + 1):  # ping-pong playback, past the end of the track
        frame = track.frame(n)
        assert frame.shape == (H, W, 3) and frame.dtype == np.uint8
        errs = [np.abs(frame.astype(int) - im).mean() for im in images]
        assert int(np.argmin(errs)) == pingpong(n, kb), (n, errs)  # the right image, in ping-pong order
        assert errs[pingpong(n, kb)] < 1.0
    decoded = track.wait()
    assert decoded.shape == images.shape and not decoded.flags.writeable


def test_crf_0_is_lossless() -> None:
    images = smooth_images(3)
    assert np.array_equal(VideoTrack(encode_track(images, crf=0), "t.mp4", 3, H, W).wait(), images)


def test_any_order_gives_the_same_frames() -> None:
    images = smooth_images(4)
    data = encode_track(images)
    reference = VideoTrack(data, "t", 4, H, W).wait().copy()
    track = VideoTrack(data, "t", 4, H, W)
    for n in (5, 0, 3, 1, 6, 2, 0):  # backwards and forwards, before and after decoding finished
        assert np.array_equal(track.frame(n), reference[pingpong(n, 4)]), n
    assert np.array_equal(VideoTrack(data, "t", 4, H, W).wait(), reference)  # decoding is deterministic


@pytest.mark.parametrize(
    "mangle, match",
    [
        (lambda d: b"\x00" * 64 + d[64:], "not a readable video"),
        (lambda d: d[: len(d) // 2], "not a readable video"),
        (lambda d: b"not a video at all", "not a readable video"),
    ],
    ids=["header-zeroed", "truncated", "garbage"],
)
def test_corrupt_track_is_refused(mangle, match) -> None:
    data = mangle(encode_track(smooth_images(3)))
    with pytest.raises(BundleError, match=match):
        VideoTrack(data, "bundle/torso_bg.mp4", 3, H, W)


def test_track_of_the_wrong_size_or_length_is_refused() -> None:
    data = encode_track(smooth_images(3))
    with pytest.raises(BundleError, match=r"expected h264 60x42 with 3"):
        VideoTrack(data, "t", 3, H, 60)
    with pytest.raises(BundleError, match=r"with 3 frames, expected h264 54x42 with 4"):
        VideoTrack(data, "t", 4, H, W)


def _retrack(bundle: Path, out: Path, track: bytes) -> Path:
    """The same bundle with another (hashed, so it passes verification) torso track."""
    src = Bundle.open(bundle)
    manifest = {k: v for k, v in src.manifest.items() if k not in ("format", "format_version", "sdk_version", "files")}
    blobs = {rel: src.bytes_of(rel) for rel in src.files if not rel.endswith(".npy")}
    arrays = {rel[:-4]: src.array(rel) for rel in src.files if rel.endswith(".npy")}
    blobs["torso_bg.mp4"] = track
    return write_bundle(out, manifest, arrays, blobs)


def test_avatar_refuses_a_bundle_with_a_corrupt_track(tmp_path: Path) -> None:
    good = make_test_bundle(tmp_path / "good.etk")
    bad = _retrack(good, tmp_path / "bad.etk", b"\x00" * 4096)
    with pytest.raises(BundleError, match=r"bad\.etk/torso_bg\.mp4 is not a readable video"):
        Avatar.load(bad, backend="onnxruntime")


def test_h264_and_raw_tracks_play_the_same_frames(tmp_path: Path) -> None:
    # Same seed: the same network and Gaussians; only the track's storage differs.
    small = Avatar.load(make_test_bundle(tmp_path / "h264.etk"), backend="onnxruntime")
    raw = Avatar.load(make_test_bundle(tmp_path / "raw.etk", raw_track=True), backend="onnxruntime")
    audio = speech(1.0)
    a, b = small.speak(audio, sample_rate=16000), raw.speak(audio, sample_rate=16000)
    assert a.shape == b.shape and len(a) == 25
    diff = np.abs(a.astype(int) - b)
    # The test track is uniform noise (the codec's worst case); real tracks differ by < 1 level.
    assert 0 < diff.mean() < 12
    assert np.array_equal(small.speak(audio, sample_rate=16000), a)  # decoding is deterministic


def test_format_1_bundles_are_refused_with_what_to_do(tmp_path: Path) -> None:
    path = make_test_bundle(tmp_path / "old.etk")
    manifest = json.loads((path / MANIFEST).read_text())
    manifest["format_version"] = 1
    (path / MANIFEST).write_text(json.dumps(seal(manifest)))
    with pytest.raises(BundleError, match=r"format version 1, from an older embedtalk-sdk.*export it again"):
        Bundle.open(path)


def test_bundle_parts_add_up(tmp_path: Path) -> None:
    path = make_test_bundle(tmp_path / "b.etk")
    manifest = Bundle.open(path).manifest
    parts = bundle_parts(manifest)
    assert set(parts) == {"network", "torso track", "camera track", "gaussians"}
    assert sum(parts.values()) == sum(e["bytes"] for e in manifest["files"].values())
    assert parts["torso track"] == (path / "torso_bg.mp4").stat().st_size
