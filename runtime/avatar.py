"""`Avatar`: play a bundle — audio in, uint8 frames (or an MP4) out. Never imports torch.

    from embedtalk_sdk import Avatar
    avatar = Avatar.load("alice.etk")            # the fastest backend that runs here, or choose one:
    # backend="auto" | "tensorrt" | "tensorrt-rtx" | "cuda" | "onnxruntime" | "torch"
    video = avatar.speak("hello.wav")            # uint8 [T, H, W, 3] at avatar.fps
    avatar.speak("hello.wav", out="out.mp4")     # H.264 + AAC, frames streamed to the encoder
    for frame in avatar.stream(chunks): ...      # 16 kHz PCM chunks in, frames out as ready

Audio becomes feature rows through the bundle's encoder (runtime/audio/encoders.py: mel, hubert,
or features the app supplies). Frame n uses the feature window of `frame_windows`
(docs/interfaces.md), AUs for frame n (given, or neutral + generated blinks), camera
viewmats[pingpong(n, K)] and torso/background image pingpong(n, Kb) of the torso track
(runtime/track.py: H.264, decoded once into memory from load on). The network runs on batches of `batch`
frames (`DEFAULT_BATCH`).
"""
from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np

from embedtalk_sdk.runtime.audio.encoders import SAMPLE_RATE, AudioEncoder, FeatureStreamer, encoder_from_manifest
from embedtalk_sdk.runtime.audio.io import AudioError, load_audio, pcm_chunk, prepare_audio
from embedtalk_sdk.runtime.audio.mel import RowBuffer, frame_windows, frames_ready, n_video_frames, window_bounds
from embedtalk_sdk.runtime.camera import pingpong
from embedtalk_sdk.runtime.frame_pipeline import FramePipeline
from embedtalk_sdk.runtime.aus import AU_NAMES, AU_SCALE, BLINK_INDEX, N_AUS
from embedtalk_sdk.runtime.backends.base import DEFAULT_BATCH, Backend
from embedtalk_sdk.runtime.backends.cpu import warm_cpu_renderer
from embedtalk_sdk.runtime.backends.registry import auto_backends, create_backend
from embedtalk_sdk.runtime.bundle import Bundle, BundleError
from embedtalk_sdk.runtime.manifest import check_avatar_manifest
from embedtalk_sdk.runtime.pixels import to_uint8
from embedtalk_sdk.runtime.track import open_track

BLINK_SEED = 0
DEFAULT_BLINK_S = 0.2  # a typical blink, used when the manifest gives no blink_duration_s

Progress = bool | Callable[[int, int], None]


def _get(bundle: Bundle, dotted: str) -> Any:
    """manifest["a"]["b"] for "a.b", or a BundleError naming the missing key."""
    node: Any = bundle.manifest
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            raise BundleError(f"bundle {bundle.path}: manifest lacks {dotted!r}")
        node = node[key]
    return node


class BlinkSchedule:
    """Deterministic eye blinks: AU45 over time, as a sequence of raised-sine bumps.

    Gaps between blink onsets are period * U(0.5, 1.5) drawn from a seeded generator one blink at
    a time, so the schedule does not depend on how frames are requested (speak == stream).
    Requests must move forward in time; blinks that ended are dropped (bounded memory).
    """

    def __init__(self, period_s: float, duration_s: float, peak: float, fps: float, seed: int = BLINK_SEED) -> None:
        self.period, self.duration, self.peak, self.fps = float(period_s), float(duration_s), float(peak), float(fps)
        self._rng = np.random.default_rng(seed)
        self._onsets: list[float] = []
        self._last = 0.0  # onset of the most recent blink drawn (0 = clip start, not a blink)

    def values(self, n0: int, n1: int) -> np.ndarray:
        """AU45 intensity (0..peak) for frames n0..n1-1, float32 [n1-n0]."""
        t = np.arange(n0, n1, dtype=np.float64) / self.fps
        out = np.zeros(t.shape, dtype=np.float32)
        if t.size == 0 or self.period <= 0 or self.duration <= 0 or self.peak <= 0:
            return out
        while self._last <= t[-1]:
            self._last += self.period * self._rng.uniform(0.5, 1.5)
            self._onsets.append(self._last)
        self._onsets = [o for o in self._onsets if o + self.duration > t[0]]
        for onset in self._onsets:
            phase = (t - onset) / self.duration
            bump = np.where((phase > 0) & (phase < 1), np.sin(np.pi * np.clip(phase, 0, 1)), 0.0)
            np.maximum(out, self.peak * bump, out=out)
        return out


class Avatar:
    """A loaded avatar bundle plus the backend that plays it.

    Create with `Avatar.load(path)`. One clip at a time: a second speak/frames/stream started while
    one is rendering (from another thread, or before an earlier frames()/stream() iterator is
    finished or closed) raises RuntimeError; use one Avatar per thread.
    """

    def __init__(self, bundle: Bundle, backend: Backend, batch: int = DEFAULT_BATCH,
                 encoder_file: str | os.PathLike | None = None) -> None:
        """Use `Avatar.load`; this wires an already-open bundle to an already-built backend."""
        self._bundle, self._backend, self._batch = bundle, backend, int(batch)
        self._busy = threading.Lock()  # held while a clip renders: see _render
        self._fps = float(_get(bundle, "fps"))
        self._width, self._height = int(_get(bundle, "width")), int(_get(bundle, "height"))
        self._load_audio_encoder(encoder_file)
        self._load_aus()
        self._load_tracks()

    @classmethod
    def load(cls, path: str | os.PathLike, backend: str = "auto", batch: int = DEFAULT_BATCH,
             encoder_file: str | os.PathLike | None = None,
             backend_options: Mapping[str, Any] | None = None) -> "Avatar":
        """Open and verify the bundle at `path` (an `.etk` folder or a `.zip`) and create its backend.

        backend: "auto" (the fastest that works here; logged at INFO on "embedtalk_sdk.runtime"),
            or a name of `available_backends()`: "tensorrt", "tensorrt-rtx", "cuda", "onnxruntime",
            "torch". batch: frames per network call.
        backend_options: keyword arguments for the backend's constructor, e.g. {"device": 1} (GPU
            backends: the CUDA device ordinal) or {"threads": 4} (onnxruntime's intra-op threads);
            with "auto", only backends that take them all are tried (`create_backend`).
        encoder_file: the audio encoder file of a bundle exported with a shared one
            (`export --shared-encoder`); by default it is looked up beside the bundle under the
            name its manifest records. Its sha256 must match the manifest's.
        Raises BundleError (bad/corrupt/too-new bundle, missing or mismatched encoder file),
        ValueError (unknown backend, or an option it does not take), BackendError (the backend
        cannot run here).
        """
        if backend == "onnxruntime" or (backend == "auto" and auto_backends()[:1] == ["onnxruntime"]):
            warm_cpu_renderer()  # numba's start-up, in a thread, while the bundle is verified and loaded
        bundle = Bundle.open(path)
        check_avatar_manifest(bundle.manifest, str(bundle.path))  # before a backend sizes buffers from it
        return cls(bundle, create_backend(backend, bundle, backend_options), batch=batch, encoder_file=encoder_file)

    # ------------------------------------------------------------ set-up

    def _load_audio_encoder(self, encoder_file: str | os.PathLike | None) -> None:
        self._window = int(_get(self._bundle, "audio.window"))
        self._encoder = encoder_from_manifest(self._bundle, encoder_file)
        self._feature_dim, self._rate = self._encoder.dim, self._encoder.rate  # rate: feature rows per second

    def _load_aus(self) -> None:
        names = list(_get(self._bundle, "aus.names"))
        neutral = np.asarray(_get(self._bundle, "aus.neutral"), dtype=np.float32)
        if names != list(AU_NAMES) or neutral.shape != (N_AUS,):
            # The network's AU inputs are in AU_NAMES order; another order would feed it the wrong units.
            raise BundleError(f"bundle {self._bundle.path}: aus.names must be {list(AU_NAMES)} and aus.neutral "
                              f"have {N_AUS} entries; got {names}, {neutral.shape[0] if neutral.ndim else 0}")
        self._neutral = neutral
        self._blink = self._blink_params(_get(self._bundle, "aus"))

    def _blink_params(self, aus: dict) -> tuple[float, float, float]:
        """(period_s, duration_s, peak): blink_period_s, or 1 / blink_rate_hz (0 Hz: no blinks)."""
        if "blink_period_s" in aus:
            period = float(aus["blink_period_s"])
        else:
            rate = float(_get(self._bundle, "aus.blink_rate_hz"))
            period = 1.0 / rate if rate > 0 else 0.0
        return period, float(aus.get("blink_duration_s", DEFAULT_BLINK_S)), float(_get(self._bundle, "aus.blink_peak"))

    def _load_tracks(self) -> None:
        b = self._bundle
        self._viewmats = np.ascontiguousarray(b.array("viewmats"), dtype=np.float32)
        k, kb = int(_get(b, "tracks.frames")), int(_get(b, "tracks.torso_frames"))
        if self._viewmats.shape != (k, 4, 4) or k < 1 or not np.isfinite(self._viewmats).all():
            raise BundleError(f"{b.path}/viewmats.npy has shape {self._viewmats.shape}, expected ({k}, 4, 4) "
                              "finite floats")
        self._torso = open_track(b, _get(b, "tracks.torso"), kb, self._height, self._width)
        self._frame = np.empty((self._height, self._width, 3), dtype=np.uint8)  # reused per frame

    # ------------------------------------------------------------ properties

    @property
    def fps(self) -> float:
        """Video frames per second."""
        return self._fps

    @property
    def width(self) -> int:
        """Frame width in pixels."""
        return self._width

    @property
    def height(self) -> int:
        """Frame height in pixels."""
        return self._height

    @property
    def window(self) -> int:
        """Feature rows in one frame's audio window (the network's audio input is [window, F])."""
        return self._window

    @property
    def batch(self) -> int:
        """Frames per network call."""
        return self._batch

    @property
    def backend(self) -> Backend:
        """The backend that plays this avatar (its buffers are reused: one clip at a time)."""
        return self._backend

    @property
    def backend_name(self) -> str:
        """The backend that plays this avatar ("onnxruntime", "torch", ...)."""
        return self._backend.name

    @property
    def bundle(self) -> Bundle:
        """The open bundle."""
        return self._bundle

    @property
    def audio_encoder(self) -> AudioEncoder:
        """How this avatar turns audio into feature rows (`encoder.from_audio` False: the app
        supplies them with `features=`)."""
        return self._encoder

    def feature_windows(self, features: np.ndarray, frame_ids: np.ndarray) -> np.ndarray:
        """The network's audio input for video frames `frame_ids`: windows [T, window, F] of the
        feature rows [M, F] (at the bundle's feature rate), as `speak` builds them."""
        feats = self._check_features(features)
        frame_ids = np.asarray(frame_ids, dtype=np.int64)
        windows = frame_windows(feats, int(frame_ids.max()) + 1, self._fps, self._rate, self._window)
        return windows[frame_ids]

    def audio_features(self, audio: Any, sample_rate: int | None = None) -> np.ndarray:
        """Feature rows [M, F] of `audio` (a path, or samples with sample_rate), as `speak` computes
        them; ValueError for bundles whose features the app supplies (encoder "features")."""
        return self._prepare(audio, sample_rate, None)[1]

    def n_frames(self, n_samples: int, sample_rate: int = 16000) -> int:
        """Frames `speak` makes for a clip of n_samples: round(duration * fps)."""
        return n_video_frames(n_samples, sample_rate=sample_rate, fps=self._fps)

    def __repr__(self) -> str:
        size = f"{self._width}x{self._height} @ {self._fps:g} fps"
        return f"Avatar({str(self._bundle.path)!r}, {size}, backend={self.backend_name!r})"

    # ------------------------------------------------------------ offline

    def speak(
        self,
        audio: str | os.PathLike | np.ndarray | None,
        out: str | os.PathLike | None = None,
        aus: np.ndarray | None = None,
        sample_rate: int | None = None,
        progress: Progress = False,
        features: np.ndarray | None = None,
    ) -> np.ndarray | Path:
        """Render the avatar speaking `audio`.

        Args:
            audio: a file path (any format `load_audio` reads), or samples [S] / [S, C] (float in
                [-1, 1] or integer PCM) with `sample_rate` given. May be None when `features` is.
            out: optional .mp4 path: frames are encoded as they are made (H.264 + the audio as
                AAC) and never all held in memory; the path is returned instead of the frames.
            aus: optional action units, OpenFace intensities 0..5: [T, 6] (one row per frame, at
                least T rows) or [6] (constant). None: the bundle's neutral AUs plus blinks.
            sample_rate: rate of an array `audio` in Hz (required for arrays).
            progress: True prints "frame i/T" to stderr; a callable gets (done, total).
            features: precomputed audio features [M, F] (or [M, 2, F]) at the bundle's feature
                rate (50 Hz), used instead of the bundle's encoder; required for bundles whose
                encoder is "features" (e.g. the dataset's aud_hu.npy). With audio None,
                T = round(M * fps / rate) and the MP4 is silent.

        Returns:
            uint8 [T, H, W, 3] with T = round(duration * fps), or the Path of `out`. The array form
            holds every frame in memory (T x H x W x 3 bytes: 10 minutes at 25 fps and 512² is
            11.8 GB); for long clips write to `out`, or iterate `frames()` / `stream()`, which keep
            only a batch.

        Raises:
            AudioError: unreadable, empty, NaN/Inf or too-short audio. FileNotFoundError /
            IsADirectoryError: `out`'s folder is missing or `out` is a folder (before any work).
        """
        if out is not None:
            from embedtalk_sdk.runtime.video import check_output_path, write_mp4  # PyAV: only needed for files

            check_output_path(out)
        samples, feats, t = self._prepare(audio, sample_rate, features, whole_clip=False)
        frames = self._frames(samples, feats, t, self._au_source(aus, t), progress)
        if out is not None:
            write_mp4(out, (f.copy() for f in frames), fps=self._fps, audio=samples, sample_rate=16000)
            return Path(out)
        video = np.empty((t, self._height, self._width, 3), dtype=np.uint8)
        for n, frame in enumerate(frames):
            video[n] = frame
        return video

    def frames(
        self,
        audio: str | os.PathLike | np.ndarray | None,
        aus: np.ndarray | None = None,
        sample_rate: int | None = None,
        progress: Progress = False,
        features: np.ndarray | None = None,
    ) -> Iterator[np.ndarray]:
        """Like `speak`, but yields the frames (uint8 [H, W, 3], each a new array) one by one."""
        samples, feats, t = self._prepare(audio, sample_rate, features, whole_clip=False)  # errors raise here
        return (frame.copy() for frame in self._frames(samples, feats, t, self._au_source(aus, t), progress))

    def _prepare(
        self, audio: Any, sample_rate: int | None, features: np.ndarray | None, whole_clip: bool = True
    ) -> tuple[np.ndarray | None, np.ndarray | None, int]:
        """-> (16 kHz mono samples or None, feature rows [M, F], frame count T >= 1). Without
        `whole_clip` the rows of audio are left to `_frames` (None), which computes them piece by piece."""
        samples = None if audio is None else self._load_samples(audio, sample_rate)
        if features is not None:
            feats = self._check_features(features)
            if samples is None:
                return None, feats, self._at_least_one(n_video_frames(feats.shape[0], sample_rate=self._rate,
                                                                      fps=self._fps), "features")  # fmt: skip
            return samples, feats, self._at_least_one(self.n_frames(samples.shape[0]), audio)
        if samples is None:
            raise ValueError("speak: give audio (a path or an array) or features=")
        t = self._at_least_one(self.n_frames(samples.shape[0]), audio)
        return samples, self._encoder.features(samples) if whole_clip else None, t

    def _at_least_one(self, t: int, audio: Any) -> int:
        # One rule for every entry point (array, frames, mp4, CLI): no clip of zero frames.
        if t == 0:
            name = audio if isinstance(audio, (str, os.PathLike)) else "the audio"
            raise AudioError(f"{name}: too short for one video frame at {self._fps:g} fps "
                             f"(needs at least {0.5 / self._fps * 1000:.0f} ms)")
        return t

    @staticmethod
    def _load_samples(audio: Any, sample_rate: int | None) -> np.ndarray:
        if isinstance(audio, (str, os.PathLike)):
            if sample_rate is not None:
                raise ValueError("sample_rate is for array audio; files carry their own rate")
            return load_audio(audio, SAMPLE_RATE)
        if sample_rate is None:
            raise ValueError("audio is an array: pass its sample_rate= (Hz)")
        return prepare_audio(np.asarray(audio), sample_rate, sample_rate=SAMPLE_RATE)

    def _check_features(self, features: np.ndarray) -> np.ndarray:
        feats = np.asarray(features, dtype=np.float32)
        if feats.ndim == 3:  # ER-NeRF aud_hu.npy: [M, 2, F], two 50 Hz rows per 25 fps frame
            feats = feats.reshape(-1, feats.shape[-1])
        if feats.ndim != 2 or feats.shape[0] == 0 or feats.shape[1] != self._feature_dim:
            raise ValueError(f"features must be [M, {self._feature_dim}] (M > 0), got shape {np.shape(features)}")
        if not np.isfinite(feats).all():
            raise ValueError("features contain NaN or Inf")
        return feats

    # ------------------------------------------------------------ AUs

    def generated_aus(self) -> Callable[[int, int], np.ndarray]:
        """The AUs `speak` and `stream` generate when none are given: a function (n0, n1) -> network
        AUs float32 [n1-n0, 6] (intensity / 5) of frames n0..n1-1, the neutral AUs plus blinks from
        a new `BlinkSchedule` (each call starts its own schedule; requests must move forward)."""
        return self._au_source(None, None)

    def _au_source(self, aus: np.ndarray | None, t: int | None) -> Callable[[int, int], np.ndarray]:
        """A function (n0, n1) -> network AUs [n1-n0, 6] (intensity / 5) for frames n0..n1-1."""
        if aus is None:
            blinks = BlinkSchedule(*self._blink, fps=self._fps)
            base = self._neutral / AU_SCALE

            def generated(n0: int, n1: int) -> np.ndarray:
                out = np.repeat(base[None], n1 - n0, axis=0)
                out[:, BLINK_INDEX] = np.maximum(out[:, BLINK_INDEX], blinks.values(n0, n1) / AU_SCALE)
                return out

            return generated
        a = np.asarray(aus, dtype=np.float32)
        if not np.isfinite(a).all():
            raise ValueError("aus contain NaN or Inf")
        if a.shape == (N_AUS,):
            a = a[None]
            return lambda n0, n1: np.repeat(a / AU_SCALE, n1 - n0, axis=0)
        if a.ndim != 2 or a.shape[1] != N_AUS or (t is not None and a.shape[0] < t):
            raise ValueError(f"aus must be [{N_AUS}] or [T, {N_AUS}] with T >= {t} frames, got shape {a.shape}")
        return lambda n0, n1: a[n0:n1] / AU_SCALE

    # ------------------------------------------------------------ the frame loop (every entry point's)

    def _render(
        self,
        n0: int,
        n1: int,
        inputs: Callable[[int, int], tuple[np.ndarray, np.ndarray]],
        scene: Callable[[int], tuple[np.ndarray, np.ndarray]],
        report: Callable[[int], None] = lambda done: None,
        pipe: FramePipeline | None = None,
    ) -> Iterator[np.ndarray]:
        """Frames n0..n1-1, `batch` at a time through the network; yields a reused buffer (copy to keep).
        With `pipe` (`_pipeline`) the frames render side by side in its threads and it hands them
        out in order, the last ones only when drained (`_pipelined`).

        One clip at a time: the backend's buffers hold a batch in flight, so a second clip started
        meanwhile (another thread, or an unfinished frames()/stream() iterator) would silently
        render with the other's offsets. It raises RuntimeError instead.

        inputs(a, b): (audio windows float32 [b-a, window, F], network AUs float32 [b-a, 6]) of
        frames a..b-1. scene(n): (viewmat float32 [4, 4], background uint8 [H, W, 3]) of frame n;
        the backend converts the background. report(done): called after each batch.
        """
        if not self._busy.acquire(blocking=False):
            raise RuntimeError(
                f"{self!r} is already rendering a clip (in another thread, or an unfinished frames()/stream() "
                "iterator): finish or close() that iterator first, or use one Avatar per thread")
        try:
            for a in range(n0, n1, self._batch):
                b = min(a + self._batch, n1)
                delta_means, delta_opacity = self._backend.deform(*inputs(a, b))
                if pipe is not None:  # the next deform reuses the backend's buffers while these render
                    delta_means, delta_opacity = delta_means.copy(), delta_opacity.copy()
                for i in range(b - a):
                    viewmat, background = scene(a + i)
                    if pipe is None:
                        yield self._backend.render(delta_means[i], delta_opacity[i], viewmat, background,
                                                   out=self._frame)
                    else:
                        yield from pipe.put(delta_means[i], delta_opacity[i], viewmat, background)
                report(b - (pipe.in_flight if pipe is not None else 0))
        finally:
            self._busy.release()

    def _pipeline(self) -> FramePipeline | None:
        """A FramePipeline for an offline clip where the backend renders frames side by side
        (`render_workers` > 1: the compiled CPU rasteriser on 2+ cores), else None. None too while
        `bench --profile` times the stages (they are per frame and process-wide)."""
        workers = int(getattr(self._backend, "render_workers", 1))
        if workers < 2 or getattr(self._backend, "stages", None) is not None:
            return None
        return FramePipeline(self._backend.render, workers, (self._height, self._width, 3), depth=workers + self._batch)

    @staticmethod
    def _pipelined(frames: Iterator[np.ndarray], pipe: FramePipeline | None, report: Callable[[int], None],
                   total: int) -> Iterator[np.ndarray]:
        """`frames` (from `_render` calls with `pipe`), then the frames still in `pipe`; closes it."""
        if pipe is None:
            yield from frames
            return
        try:
            yield from frames
            yield from pipe.drain()
            report(total)
        finally:
            pipe.close()

    def track(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        """The cameras and torso/background images `speak` uses for frames 0..t-1:
        (viewmats float32 [t, 4, 4], backgrounds uint8 [t, H, W, 3]; new arrays)."""
        scenes = [self._track(n) for n in range(int(t))]
        return (np.stack([v for v, _ in scenes]).astype(np.float32), np.stack([b.copy() for _, b in scenes]))

    def _track(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Frame n's camera and torso/background from the bundle's tracks (ping-pong looped)."""
        return self._viewmats[int(pingpong(n, self._viewmats.shape[0]))], self._torso.frame(n)

    def _frames(
        self, samples: np.ndarray | None, feats: np.ndarray | None, t: int, aus: Callable[[int, int], np.ndarray],
        progress: Progress,
    ) -> Iterator[np.ndarray]:
        """Frames 0..t-1 from the app's feature rows, or (feats None) from the samples with their rows
        computed a batch of frames' audio at a time by the encoder's streamer, which gives whole-clip
        features' rows bit for bit: the first frame waits for its own window's audio, not for the
        whole clip's features (a phonetic bundle's 8.6 s clip: ~300 ms), and no frame waits for more
        than a batch's. Yields a reused buffer (copy to keep)."""
        report = _progress_reporter(progress, t)
        pipe = self._pipeline()
        if feats is None:
            assert samples is not None
            piece = max(1, round(SAMPLE_RATE * self._batch / self._fps))
            pieces = (samples[i:i + piece] for i in range(0, samples.shape[0], piece))
            return self._pipelined(self._streamed(pieces, self._encoder.streamer(), aus, report, pipe), pipe, report, t)

        def inputs(a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
            return frame_windows(feats, b - a, self._fps, self._rate, self._window, first_frame=a), aus(a, b)

        return self._pipelined(self._render(0, t, inputs, self._track, report, pipe), pipe, report, t)

    # ------------------------------------------------------------ explicit per-frame inputs (evaluation)

    def render_frames(
        self,
        windows: np.ndarray,
        aus: np.ndarray,
        viewmats: np.ndarray,
        backgrounds: np.ndarray,
    ) -> Iterator[np.ndarray]:
        """Render frames from explicit inputs instead of the bundle's tracks (e.g. a dataset's
        validation cameras and torso images, to compare with its ground truth).

        Args:
            windows: audio-feature windows [T, window, F] (`frame_windows` of the bundle's features).
            aus: AU intensities 0..5 [T, 6] (OpenFace scale, as in au.csv).
            viewmats: world-to-camera, OpenCV [T, 4, 4].
            backgrounds: torso + background images [T, H, W, 3], uint8, or float in [0, 1] (rounded
                to uint8 as the exporter stores the bundle's track, so speak and render_frames
                of the same inputs are the same frames).

        Yields uint8 [H, W, 3] frames (each a new array), batched `batch` at a time through the network.
        Raises ValueError here, before the first frame, if the inputs do not fit together.
        """
        windows = np.asarray(windows, dtype=np.float32)
        aus = np.asarray(aus, dtype=np.float32)
        t = windows.shape[0]
        if windows.shape[1:] != (self._window, self._feature_dim):
            raise ValueError(f"windows must be [T, {self._window}, {self._feature_dim}], got {windows.shape}")
        if aus.shape != (t, N_AUS) or np.shape(viewmats) != (t, 4, 4) or len(backgrounds) != t:
            raise ValueError(f"aus [T, {N_AUS}], viewmats [T, 4, 4], backgrounds [T, H, W, 3] must match "
                             f"T = {t}: got {aus.shape}, {np.shape(viewmats)}, {len(backgrounds)}")
        viewmats = np.ascontiguousarray(viewmats, dtype=np.float32)

        def inputs(a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
            return windows[a:b], aus[a:b] / AU_SCALE

        def scene(n: int) -> tuple[np.ndarray, np.ndarray]:
            return viewmats[n], self._background_u8(n, backgrounds[n])

        return (frame.copy() for frame in self._render(0, t, inputs, scene))

    def render_network_inputs(
        self, windows: np.ndarray, aus: np.ndarray, track_frames: np.ndarray
    ) -> Iterator[np.ndarray]:
        """Frames from the network's own inputs, each at its own place in the bundle's tracks: the
        frame loop of `speak`/`stream` for callers that interleave several streams (the server
        batches the frames of all its sessions into one network call).

        windows float32 [T, window, F], aus float32 [T, 6] as the network sees them (intensity / 5,
        e.g. from `generated_aus`), track_frames int [T]: frame i uses the camera and torso image of
        frame track_frames[i], as `speak` does for its frame of that index. Same inputs, same bytes
        as `speak`. Yields a reused uint8 [H, W, 3] buffer per frame (copy to keep); one clip at a
        time as every entry point (RuntimeError otherwise).
        """
        windows = np.asarray(windows, dtype=np.float32)
        aus = np.asarray(aus, dtype=np.float32)
        frames = np.asarray(track_frames, dtype=np.int64)
        t = windows.shape[0]
        if windows.shape[1:] != (self._window, self._feature_dim) or aus.shape != (t, N_AUS) or frames.shape != (t,):
            raise ValueError(f"windows [T, {self._window}, {self._feature_dim}], aus [T, {N_AUS}] and track_frames "
                             f"[T] must match: got {windows.shape}, {aus.shape}, {frames.shape}")

        def inputs(a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
            return windows[a:b], aus[a:b]

        return self._render(0, t, inputs, lambda i: self._track(int(frames[i])))

    def _background_u8(self, n: int, background: np.ndarray) -> np.ndarray:
        b = np.asarray(background)
        if b.shape != self._frame.shape:
            raise ValueError(f"background {n} is {b.shape}, the avatar renders {self._frame.shape}")
        return b if b.dtype == np.uint8 else to_uint8(np.array(b, dtype=np.float32))

    # ------------------------------------------------------------ real time

    def stream(self, chunks: Iterable[np.ndarray], sample_rate: int = SAMPLE_RATE) -> Iterator[np.ndarray]:
        """Real-time playback: mono PCM chunks in, frames (uint8 [H, W, 3], new arrays) out.

        chunks: any iterable of 1-D float (in [-1, 1]) or int16 arrays at 16 kHz, of any sizes.
        Frame n is yielded as soon as its feature window is complete; the rest come when `chunks`
        ends. With the default window that is ~150 ms of audio after its time stamp for "mel";
        "hubert" computes rows in fixed windows with lookahead (EncoderWindows), ~400 ms for the
        first frame (runtime/design.md). Only bounded buffers of samples and feature rows are kept,
        so streams may be arbitrarily long. Uses the generated AUs (neutral + blinks). Gives the
        same frames as `speak` on the concatenated audio. "features" bundles cannot stream audio
        (ValueError): their features come from the app.
        """
        if sample_rate != SAMPLE_RATE:
            raise ValueError(f"stream takes {SAMPLE_RATE} Hz chunks, got sample_rate={sample_rate}")
        streamer = self._encoder.streamer()  # a "features" bundle raises here
        checked = (pcm_chunk(chunk, f"stream chunk {index}") for index, chunk in enumerate(chunks))
        return (frame.copy() for frame in self._streamed(checked, streamer, self._au_source(None, None)))

    def _streamed(
        self, chunks: Iterable[np.ndarray], feats: FeatureStreamer, aus: Callable[[int, int], np.ndarray],
        report: Callable[[int], None] = lambda done: None, pipe: FramePipeline | None = None,
    ) -> Iterator[np.ndarray]:
        """Frames of float32 16 kHz chunks, each as soon as its feature window is complete (reused
        buffer); with `pipe`, as `_render` says."""
        buf = RowBuffer(self._feature_dim)
        n = 0  # next frame to yield
        for chunk in chunks:
            buf.append(feats.feed(chunk))
            ready = frames_ready(n, buf.end, self.n_frames(feats.n_samples), self._fps, self._rate, self._window)
            yield from self._buffered_frames(buf, n, ready, aus, report, pipe)
            n = ready
            buf.drop_before(window_bounds(n, self._fps, self._rate, self._window)[0])
        buf.append(feats.flush())
        yield from self._buffered_frames(buf, n, self.n_frames(feats.n_samples), aus, report, pipe)

    def _buffered_frames(
        self, buf: RowBuffer, n0: int, n1: int, aus: Callable[[int, int], np.ndarray], report: Callable[[int], None],
        pipe: FramePipeline | None,
    ) -> Iterator[np.ndarray]:
        def inputs(a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
            windows = frame_windows(buf.rows, b - a, self._fps, self._rate, self._window, first_frame=a,
                                    row_offset=buf.start)  # fmt: skip
            return windows, aus(a, b)

        return self._render(n0, n1, inputs, self._track, report, pipe)


def _progress_reporter(progress: Progress, total: int) -> Callable[[int], None]:
    if callable(progress):
        return lambda done: progress(done, total)
    if not progress:
        return lambda done: None

    def report(done: int) -> None:
        print(f"\rframe {done}/{total}", end="\n" if done >= total else "", file=sys.stderr, flush=True)

    return report
