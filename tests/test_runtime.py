"""The playback runtime: Avatar.speak / frames / stream on a small real bundle, without torch.

The bundle is built by `make_test_bundle`: random Gaussians in front of the camera and a real
ONNX graph with the interface of the baked network (a per-Gaussian table plus a per-frame shared
vector from audio_window and aus, Relu, MatMul heads), written with onnx.helper.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")  # builds the fixture graph; the runtime itself does not need it
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from embedtalk_sdk.runtime.audio.mel import MelSpec
from embedtalk_sdk.runtime.camera import intrinsics
from embedtalk_sdk.export.bundle import write_bundle
from embedtalk_sdk.runtime.avatar import Avatar, BlinkSchedule
from embedtalk_sdk.runtime.backends.registry import available_backends, create_backend
from embedtalk_sdk.runtime.bundle import Bundle, BundleError
from embedtalk_sdk.runtime.track import encode_track

W, H, N, HIDDEN, WINDOW, FPS = 48, 40, 300, 16, 16, 25
AU_NAMES = ["AU01", "AU04", "AU05", "AU06", "AU07", "AU45"]


# ---------------------------------------------------------------- fixture


def deform_graph(rng: np.random.Generator, n: int = N, window: int = WINDOW, feature_dim: int = 32) -> onnx.ModelProto:
    """The baked network's interface: shared = W_a flat(audio) + W_e aus; h = relu(table + shared)."""
    f32 = TensorProto.FLOAT
    inits = {
        "w_audio": rng.normal(0, 0.02, (window * feature_dim, HIDDEN)),
        "w_aus": rng.normal(0, 1.0, (6, HIDDEN)),
        "table": rng.normal(0, 1.0, (n, HIDDEN)),
        "w_mu": rng.normal(0, 0.01, (HIDDEN, 3)),
        "w_alpha": rng.normal(0, 0.3, (HIDDEN, 1)),
        "flat_shape": np.array([0, window * feature_dim], np.int64),
        "axis1": np.array([1], np.int64),
        "axis_last": np.array([-1], np.int64),
    }
    nodes = [
        helper.make_node("Reshape", ["audio_window", "flat_shape"], ["audio_flat"]),
        helper.make_node("MatMul", ["audio_flat", "w_audio"], ["a"]),
        helper.make_node("MatMul", ["aus", "w_aus"], ["e"]),
        helper.make_node("Add", ["a", "e"], ["shared"]),
        helper.make_node("Unsqueeze", ["shared", "axis1"], ["shared3"]),
        helper.make_node("Add", ["shared3", "table"], ["pre"]),
        helper.make_node("Relu", ["pre"], ["h"]),
        helper.make_node("MatMul", ["h", "w_mu"], ["delta_means"]),
        helper.make_node("MatMul", ["h", "w_alpha"], ["alpha1"]),
        helper.make_node("Squeeze", ["alpha1", "axis_last"], ["delta_opacity"]),
    ]
    graph = helper.make_graph(
        nodes,
        "test_deform",
        [
            helper.make_tensor_value_info("audio_window", f32, ["batch", window, feature_dim]),
            helper.make_tensor_value_info("aus", f32, ["batch", 6]),
        ],
        [
            helper.make_tensor_value_info("delta_means", f32, ["batch", n, 3]),
            helper.make_tensor_value_info("delta_opacity", f32, ["batch", n]),
        ],
        [numpy_helper.from_array(v if v.dtype == np.int64 else v.astype(np.float32), k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    return model


def make_test_bundle(
    out: Path,
    seed: int = 0,
    n: int = N,
    edit_model: Callable[[onnx.ModelProto], None] | None = None,
    graph_n: int | None = None,
    raw_track: bool = False,
    **manifest_overrides,
) -> Path:
    """A small, complete bundle: N Gaussians ~3 units in front of a 3-camera track.

    edit_model: changes the ONNX graph in place before it is written; graph_n: Gaussians in the
    graph if not n (both to test refusals); raw_track: the torso track as raw frames instead of
    H.264; manifest_overrides replace top-level manifest keys."""
    rng = np.random.default_rng(seed)
    spec = MelSpec()
    model = deform_graph(rng, n=graph_n or n, feature_dim=spec.n_mels)
    if edit_model is not None:
        edit_model(model)
    viewmats = np.repeat(np.eye(4, dtype=np.float32)[None], 3, axis=0)
    viewmats[:, :3, 3] = [[0.0, 0.0, 3.0], [0.02, 0.0, 3.0], [0.04, 0.01, 3.0]]
    arrays = {
        "means": rng.normal(0, 0.4, (n, 3)).astype(np.float32),
        "quats": rng.normal(0, 1, (n, 4)).astype(np.float32),
        "scales": np.exp(rng.uniform(-3.5, -2.0, (n, 3))).astype(np.float32),
        "opacity_logits": rng.normal(0, 1, n).astype(np.float32),
        "colors": rng.uniform(0, 1, (n, 3)).astype(np.float32),
        "viewmats": viewmats,
    }
    torso = rng.integers(0, 256, (4, H, W, 3), dtype=np.uint8)
    blobs = {"deform.onnx": model.SerializeToString()}
    if raw_track:
        arrays["torso_bg"], torso_entry = torso, {"file": "torso_bg.npy", "codec": "raw"}
    else:
        blobs["torso_bg.mp4"], torso_entry = encode_track(torso, fps=FPS), {"file": "torso_bg.mp4", "codec": "h264"}
    io = {"inputs": {"audio_window": ["batch", WINDOW, spec.n_mels], "aus": ["batch", 6]},
          "outputs": {"delta_means": ["batch", n, 3], "delta_opacity": ["batch", n]}}
    manifest = {
        "fps": FPS, "width": W, "height": H,
        "K": intrinsics(50.0, 50.0, W / 2, H / 2),
        "audio": {"encoder": "mel", **spec.to_dict(), "window": WINDOW, "feature_dim": spec.n_mels, "rate": spec.rate},
        "aus": {"names": AU_NAMES, "neutral": [0.5, 0.2, 0.3, 0.1, 0.4, 0.0],
                "blink_peak": 3.0, "blink_period_s": 1.5, "blink_duration_s": 0.25},
        "gaussians": {"count": n},
        "onnx": {"deform": {"file": "deform.onnx", **io}},
        "tracks": {"frames": 3, "torso_frames": 4, "torso": torso_entry},
        "engines": [],
    }
    manifest.update(manifest_overrides)
    return write_bundle(out, manifest, arrays, blobs)


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory) -> Path:
    return make_test_bundle(tmp_path_factory.mktemp("bundle") / "test.etk")


@pytest.fixture(scope="module")
def avatar(bundle_path: Path) -> Avatar:
    return Avatar.load(bundle_path, backend="onnxruntime")


def speech(seconds: float, rate: int = 16000, seed: int = 1) -> np.ndarray:
    """A voiced, syllable-modulated test signal, float32 mono in [-1, 1]."""
    t = np.arange(int(round(seconds * rate))) / rate
    rng = np.random.default_rng(seed)
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3.7 * t) ** 2
    tone = np.sin(2 * np.pi * 140 * t) + 0.5 * np.sin(2 * np.pi * 910 * t) + 0.1 * rng.normal(size=t.size)
    return (0.3 * envelope * tone).astype(np.float32)


# ---------------------------------------------------------------- tests


def test_backend_registry(bundle_path: Path):
    assert "onnxruntime" in available_backends()
    with pytest.raises(ValueError, match=r"unknown backend 'vulkan'.*auto.*onnxruntime.*torch"):
        create_backend("vulkan", Bundle.open(bundle_path))


def test_properties(avatar: Avatar):
    assert (avatar.fps, avatar.width, avatar.height, avatar.backend_name) == (FPS, W, H, "onnxruntime")


def test_auto_picks_onnxruntime(bundle_path: Path, caplog):
    with caplog.at_level("INFO", logger="embedtalk_sdk.runtime"):
        assert Avatar.load(bundle_path).backend_name == "onnxruntime"
    assert "onnxruntime" in caplog.text


@pytest.mark.parametrize("seconds", [0.03, 0.5, 1.0, 1.37, 2.02])  # 0.01 s: no frame, refused (test_inputs)
def test_speak_frame_count(avatar: Avatar, seconds: float):
    audio = speech(seconds)
    video = avatar.speak(audio, sample_rate=16000)
    expected = (2 * audio.size * FPS + 16000) // 32000  # round(duration * fps), ties up (0.5 s -> 13)
    assert video.dtype == np.uint8 and video.shape == (expected, H, W, 3)


def test_frames_change_with_audio_and_camera(avatar: Avatar):
    video = avatar.speak(speech(1.0), sample_rate=16000).astype(np.int16)
    assert np.abs(np.diff(video, axis=0)).mean() > 0.5  # the head moves / the track advances
    silent = avatar.speak(np.zeros(16000, np.float32), sample_rate=16000).astype(np.int16)
    assert np.abs(video - silent).mean() > 0.1  # audio drives the deformation


def test_44k_stereo_file_and_array(avatar: Avatar, tmp_path: Path):
    import soundfile as sf

    t = np.arange(44100) / 44100
    stereo = np.stack([np.sin(2 * np.pi * 220 * t), 0.5 * np.sin(2 * np.pi * 330 * t)], axis=1).astype(np.float32) * 0.5
    sf.write(tmp_path / "a.wav", stereo, 44100)
    from_file = avatar.speak(tmp_path / "a.wav")
    from_array = avatar.speak(stereo, sample_rate=44100)
    assert from_file.shape == from_array.shape == (25, H, W, 3)
    assert np.abs(from_file.astype(int) - from_array.astype(int)).mean() < 1.0


def test_array_without_sample_rate_is_refused(avatar: Avatar):
    with pytest.raises(ValueError, match="sample_rate"):
        avatar.speak(speech(0.2))


def test_speak_to_mp4(avatar: Avatar, tmp_path: Path):
    from embedtalk_sdk.runtime.video import read_audio_track, read_video

    out = avatar.speak(speech(1.2), out=tmp_path / "o.mp4", sample_rate=16000)
    assert out == tmp_path / "o.mp4"
    frames, fps = read_video(out)
    assert frames.shape[0] == 30 and fps == pytest.approx(FPS)
    import av

    with av.open(str(out)) as c:
        assert c.streams.audio[0].codec_context.name == "aac"
        assert c.streams.video[0].codec_context.name == "h264"
    samples, rate = read_audio_track(out)
    assert abs(samples.shape[0] / rate - 1.2) < 0.05


def test_frames_generator_equals_speak(avatar: Avatar):
    audio = speech(0.7)
    video = avatar.speak(audio, sample_rate=16000)
    frames = list(avatar.frames(audio, sample_rate=16000))
    assert len(frames) == len(video) and all(np.array_equal(f, v) for f, v in zip(frames, video))


@pytest.mark.parametrize("dtype", ["float32", "int16"])
def test_stream_equals_speak(avatar: Avatar, dtype: str):
    rng = np.random.default_rng(3)
    audio = speech(2.3)
    if dtype == "int16":
        audio = np.round(audio * 32767).astype(np.int16)
    sizes = rng.integers(1, 2500, size=200)
    bounds = np.minimum(np.cumsum(np.concatenate([[0], sizes])), audio.size)
    bounds = np.unique(np.append(bounds, audio.size))
    chunks = [audio[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    assert sum(c.size for c in chunks) == audio.size
    streamed = np.stack(list(avatar.stream(iter(chunks))))
    spoken = avatar.speak(audio, sample_rate=16000)
    assert streamed.shape == spoken.shape
    diff = np.abs(streamed.astype(int) - spoken.astype(int))  # uint8 levels
    # Streamed log-mel equals offline within 1e-5, so a few pixels may round the other way.
    assert diff.mean() < 1.0 and (diff > 0).mean() < 0.01


def test_stream_yields_frames_before_the_end(avatar: Avatar):
    audio = speech(2.0)
    chunk = 640  # 40 ms
    fed = {"n": 0}  # audio the stream has pulled so far: latency is bounded

    def counting():
        for i in range(0, audio.size, chunk):
            fed["n"] += chunk
            yield audio[i : i + chunk]

    for seen, _ in enumerate(avatar.stream(counting()), start=1):
        if seen == 10:
            break
    # frame 9's window needs rows up to 2*9+8 = 26 (20 ms each) -> < 0.6 s of audio
    assert fed["n"] <= 0.6 * 16000


def test_stream_memory_is_bounded(avatar: Avatar):
    # A long stream of silence: the row buffer must not grow with time.
    from embedtalk_sdk.runtime.audio.mel import RowBuffer

    sizes = []
    orig = RowBuffer.append

    def spy(self, new):
        orig(self, new)
        sizes.append(self.rows.shape[0])

    RowBuffer.append = spy
    try:
        chunks = (np.zeros(1600, np.float32) for _ in range(60))  # 6 s
        n = sum(1 for _ in avatar.stream(chunks))
    finally:
        RowBuffer.append = orig
    assert n == 150 and max(sizes) < 40


def test_given_aus_change_the_frames(avatar: Avatar):
    audio = speech(0.4)
    t = 10
    base = avatar.speak(audio, sample_rate=16000, aus=np.zeros(6, np.float32))
    wide = avatar.speak(audio, sample_rate=16000, aus=np.full((t, 6), 5.0, np.float32))
    assert base.shape == wide.shape == (t, H, W, 3)
    assert np.abs(base.astype(int) - wide.astype(int)).mean() > 0.1
    with pytest.raises(ValueError, match="aus must be"):
        avatar.speak(audio, sample_rate=16000, aus=np.zeros((3, 6)))



def track_inputs(avatar: Avatar, audio: np.ndarray, aus: np.ndarray) -> tuple[np.ndarray, ...]:
    """The explicit per-frame inputs `speak(audio, aus=aus)` takes from the bundle's tracks."""
    from embedtalk_sdk.runtime.audio.mel import frame_windows

    t = aus.shape[0]
    windows = frame_windows(avatar.audio_features(audio, 16000), t, avatar.fps, 50.0, WINDOW)
    return (windows, *avatar.track(t))


def test_render_frames_is_speak_bit_for_bit(avatar: Avatar):
    # One render path: the same frame through render_frames and through speak is the same bytes.
    audio, aus = speech(0.8), np.tile(np.array([0.5, 0.2, 0.1, 0.3, 0.4, 1.0], np.float32), (20, 1))
    windows, views, torso = track_inputs(avatar, audio, aus)
    spoken = avatar.speak(audio, sample_rate=16000, aus=aus)
    assert np.array_equal(np.stack(list(avatar.render_frames(windows, aus, views, torso))), spoken)


def test_background_reaches_the_rasteriser_as_x_over_255(avatar: Avatar, monkeypatch):
    # The uint8 torso track reaches the rasteriser as stored, whichever way the frame is asked
    # for; rasterize_u8 converts it where it blends, by x / 255 in float32 (the training side's
    # rule; tests/test_cpu_fast.py checks it against rasterize_cpu over background_to_float).
    # speak renders frames side by side (runtime/frame_pipeline.py), so the calls come in any order.
    renderer = avatar._backend._renderer
    seen = []

    def spy(*args):
        seen.append(args[7].copy())  # (means, quats, scales, opacities, colors, viewmat, K, background, ...)
        return rasterize(*args)

    rasterize = renderer._rasterize
    monkeypatch.setattr(renderer, "_rasterize", spy)
    audio, aus = speech(0.4), np.zeros((10, 6), np.float32)
    windows, views, torso = track_inputs(avatar, audio, aus)
    avatar.speak(audio, sample_rate=16000, aus=aus)
    list(avatar.render_frames(windows, aus, views, torso))
    assert np.unique(torso).size == 256  # every uint8 value is checked
    assert len(seen) == 2 * len(torso) and all(got.dtype == np.uint8 for got in seen)
    assert sorted(got.tobytes() for got in seen) == sorted(2 * [frame.tobytes() for frame in torso])

def test_blinks_are_deterministic_and_chunk_independent():
    a = BlinkSchedule(1.5, 0.25, 3.0, fps=25)
    whole = a.values(0, 250)
    b = BlinkSchedule(1.5, 0.25, 3.0, fps=25)
    parts = np.concatenate([b.values(i, min(i + 7, 250)) for i in range(0, 250, 7)])
    assert np.array_equal(whole, parts)
    assert whole.max() > 2.5 and (whole > 0).mean() < 0.3  # blinks happen, eyes mostly open
    assert 4 <= np.count_nonzero(np.diff((whole > 0).astype(int)) == 1) <= 12  # ~6-7 blinks in 10 s


def test_blink_rate_in_manifest(tmp_path: Path):
    aus = {"names": AU_NAMES, "neutral": [0.0] * 6, "blink_peak": 3.0, "blink_rate_hz": 0.5}
    avatar = Avatar.load(make_test_bundle(tmp_path / "b.etk", aus=aus))
    assert avatar._blink == (2.0, 0.2, 3.0)  # period 1/rate, default duration
    assert avatar.speak(speech(0.4), sample_rate=16000).shape == (10, H, W, 3)
    aus.pop("blink_rate_hz")
    with pytest.raises(BundleError, match="aus needs blink_rate_hz or blink_period_s"):
        Avatar.load(make_test_bundle(tmp_path / "c.etk", aus=aus))


def test_precomputed_features(bundle_path: Path, tmp_path: Path):
    feats = np.random.default_rng(0).normal(size=(100, 32)).astype(np.float32)
    avatar = Avatar.load(bundle_path, backend="onnxruntime")
    assert avatar.speak(None, features=feats).shape == (50, H, W, 3)
    with pytest.raises(ValueError, match=r"features must be \[M, 32\]"):
        avatar.speak(None, features=feats[:, :8])
    audio = {"encoder": "features", "window": WINDOW, "feature_dim": 32, "rate": 50}
    fb = make_test_bundle(tmp_path / "f.etk", audio=audio)
    favatar = Avatar.load(fb, backend="onnxruntime")
    assert favatar.speak(speech(1.0), sample_rate=16000, features=feats).shape == (25, H, W, 3)
    with pytest.raises(ValueError, match="pass features="):
        favatar.speak(speech(1.0), sample_rate=16000)
    with pytest.raises(BundleError, match="audio encoder 'wav2vec9'"):
        Avatar.load(make_test_bundle(tmp_path / "g.etk", audio={**audio, "encoder": "wav2vec9"}))


def test_manifest_and_graph_must_agree(tmp_path: Path):
    wrong = make_test_bundle(tmp_path / "w.etk", gaussians={"count": N + 1})
    with pytest.raises(BundleError, match="delta_means"):
        Avatar.load(wrong, backend="onnxruntime")

    widened = make_test_bundle(tmp_path / "x.etk", graph_n=N + 5)
    msg = r"deform\.onnx delta_means has shape \[None, 305, 3\], expected \[None, 300, 3\]"
    with pytest.raises(BundleError, match=msg):
        Avatar.load(widened, backend="onnxruntime")

    def rename_aus(model: onnx.ModelProto) -> None:
        model.graph.input[1].name = "au"
        for node in model.graph.node:
            node.input[:] = ["au" if i == "aus" else i for i in node.input]

    renamed = make_test_bundle(tmp_path / "r.etk", edit_model=rename_aus)
    with pytest.raises(BundleError, match=r"inputs \['au', 'audio_window'\]"):
        Avatar.load(renamed, backend="onnxruntime")


def test_not_a_bundle(tmp_path: Path):
    (tmp_path / "talk.wav").write_bytes(b"RIFF....WAVE")
    for path in (tmp_path, tmp_path / "talk.wav", tmp_path / "nope.etk"):
        with pytest.raises(BundleError, match="not an EmbedTalk bundle|no such bundle"):
            Avatar.load(path)


def test_zip_bundle_plays(tmp_path: Path):
    z = make_test_bundle(tmp_path / "z.zip")
    assert Avatar.load(z).speak(speech(0.2), sample_rate=16000).shape == (5, H, W, 3)


def test_corrupt_bundle_is_refused_by_avatar(tmp_path: Path):
    p = make_test_bundle(tmp_path / "c.etk")
    data = bytearray((p / "deform.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (p / "deform.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"deform\.onnx is corrupt \(sha256 mismatch\)"):
        Avatar.load(p)


def test_runtime_never_imports_torch(bundle_path: Path):
    code = textwrap.dedent(
        f"""
        import sys, importlib.abc

        class NoTorch(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked in this test")
                return None

        sys.meta_path.insert(0, NoTorch())
        import numpy as np
        from embedtalk_sdk import Avatar
        avatar = Avatar.load({str(bundle_path)!r})
        t = np.arange(16000) / 16000
        video = avatar.speak((0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32), sample_rate=16000)
        assert video.shape == (25, {H}, {W}, 3), video.shape
        assert avatar.backend_name == "onnxruntime"
        assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules), "torch was imported"
        print("OK")
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-3000:]


# ---------------------------------------------------------------- frames side by side (frame_pipeline.py)


def _frame_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("embedtalk-frame")]


def test_speak_renders_frames_side_by_side_to_the_same_bytes(avatar: Avatar, monkeypatch):
    # Offline clips render a frame per core (runtime/frame_pipeline.py); each frame must be the
    # bytes of one frame at a time (stream's way: test_speak_equals_stream checks that too).
    if avatar._backend.render_workers < 2:
        pytest.skip("one rasteriser thread here (OMP_NUM_THREADS=1 or numba's kernels): no frames side by side")
    audio = speech(1.3)
    used, render = set(), avatar._backend.render

    def spy(*args, **kwargs):
        used.add(threading.current_thread().name)
        return render(*args, **kwargs)

    monkeypatch.setattr(avatar._backend, "render", spy)
    side_by_side = avatar.speak(audio, sample_rate=16000)
    assert len({name for name in used if name.startswith("embedtalk-frame")}) >= 2, used
    monkeypatch.setattr(avatar, "_pipeline", lambda: None)
    assert np.array_equal(side_by_side, avatar.speak(audio, sample_rate=16000))
    assert not _frame_threads()


def test_a_clip_left_unfinished_stops_its_frame_threads(avatar: Avatar):
    frames = avatar.frames(speech(2.0), sample_rate=16000)
    first = [next(frames) for _ in range(3)]
    frames.close()
    assert not _frame_threads() and len({f.tobytes() for f in first}) == 3
    assert avatar.speak(speech(0.4), sample_rate=16000).shape[0] == 10  # the avatar is free again


def test_a_frames_error_reaches_the_caller_and_ends_the_clip(avatar: Avatar, monkeypatch):
    def broken(*args, **kwargs):
        raise MemoryError("no memory for frame buffers")

    monkeypatch.setattr(avatar._backend, "render", broken)
    with pytest.raises(MemoryError, match="no memory for frame buffers"):
        avatar.speak(speech(0.6), sample_rate=16000)
    assert not _frame_threads()


def test_frame_pipeline_hands_frames_out_in_order_in_buffers_not_yet_reused():
    from embedtalk_sdk.runtime.frame_pipeline import FramePipeline

    rng = np.random.default_rng(0)
    delays = rng.uniform(0, 0.01, 40)

    def render(index, _opacity, _viewmat, _background, out, threads):
        time.sleep(delays[index])  # later frames often finish first
        out[...] = index
        return out

    pipe = FramePipeline(render, workers=3, shape=(2, 2, 3), depth=5)
    got = []
    try:
        for i in range(40):
            ready = pipe.put(i, None, None, None)
            assert pipe.in_flight <= 5
            # the frames one put hands out are all intact (no buffer reused among them)
            got += [int(frame[0, 0, 0]) for frame in ready]
            assert all(np.all(frame == frame[0, 0, 0]) for frame in ready)
        got += [int(frame[0, 0, 0]) for frame in pipe.drain()]
    finally:
        pipe.close()
    assert got == list(range(40))
