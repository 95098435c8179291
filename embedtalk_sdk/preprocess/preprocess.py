"""`embedtalk-sdk preprocess talk.mp4 -o DATA`: one talking-portrait video -> a dataset folder
(docs/interfaces.md; the TalkingGaussian / ER-NeRF layout), offline, with MediaPipe only.

Steps (each skipped when its record in DATA/preprocess/steps/ says it already ran on the same
inputs and options; a step writes its files, then that record, atomically):

1. decode      PyAV -> ori_imgs/{i}.jpg at 25 fps (nearest source frame for each output time, so
               other or variable source rates are resampled), aud.wav (16 kHz mono, aligned with the
               first video frame, padded / trimmed to the frames' length).
2. landmarks   Face Landmarker -> preprocess/face_track.npz, ori_imgs/{i}.lms (iBUG-68),
               au.csv (AUs from blendshapes, see `embedtalk_sdk.preprocess.face`).
3. sync        how well the sound predicts the mouth at each offset (`judge_sync`); a clip whose
               sound is clearly shifted is corrected: aud.wav is written again from the source with
               the sound moved so that its best offset lands in natural sync (--keep-audio-sync or
               --audio-shift: only measured and warned about). design.md.
4. cameras     head poses refined against a person-specific template and smoothed over time
               (`embedtalk_sdk.preprocess.headpose`) -> transforms_{train,val}.json (metres, OpenGL c2w;
               the last 1/11 of frames is val), preprocess/head_poses.npz.
5. background  selfie segmentation of 20-60 frames spread over the clip -> bc.jpg (per-pixel
               temporal median of surely-background pixels; pixels never seen are inpainted).
6. compose     selfie segmentation of every frame -> parsing/{i}.png (ER-NeRF colours),
               gt_imgs/{i}.jpg (background pixels replaced by bc.jpg, as ER-NeRF does) and
               torso_imgs/{i}.png (RGBA: the torso, the neck continued under the head).
7. points      points3d.npy: a dense head point cloud (`embedtalk_sdk.preprocess.pointcloud`).
8. hubert      aud_hu.npy [M, 2, 1024] (TalkingGaussian's layout) when a HuBERT path is given.

DATA/preprocess_log.json records, per step, what it found (frame rates, faces, pose error, ...)
and how long it took. Refusals raise `PreprocessError` with one line naming the file and what to do:
a missing, empty or unreadable (corrupt) file, no video stream, no audio track (unless --audio
gives one), silent audio, less than 1 s of video, no face in any frame or in under half of them.
Decisions: several faces -> the largest face in each frame is used, with a warning (a poster or a
passer-by should not stop a run); a variable or other frame rate is resampled to 25 fps and
logged (a warning for variable rates); frames without a face (under half) get interpolated
landmarks, with a warning. Steps already done are kept when a later one fails, so a re-run after a
fix resumes.
"""
from __future__ import annotations

import hashlib
import json
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from PIL import Image

from embedtalk_sdk import __version__
from embedtalk_sdk.data.layout import (
    JPEG_QUALITY, write_au_csv, write_image, write_landmarks, write_npy, write_transforms, write_wav,
)
from embedtalk_sdk.model_files import FACE_LANDMARKER, SELFIE_SEGMENTATION, model_file
from embedtalk_sdk.runtime.aus import BLINK_CSV_COLUMN
from embedtalk_sdk.runtime.errors import EmbedTalkError
from embedtalk_sdk.runtime.fileio import atomic_path, atomic_write

FPS = 25
SAMPLE_RATE = 16000
MIN_FRAMES = 25  # 1 s: the 1/11 validation split needs a few frames
MIN_FACE_SHARE = 0.5
BACKGROUND_SAMPLES = 60
BACKGROUND_MIN_SAMPLES = 20
COMPOSE_THREADS = 2
# Mouth-sound sync (design.md): best offsets (frames; < 0: the mouth leads the sound) measured on
# clips in sync: Ted -3 (r 0.56), the German clip -1, the synthetic speaker 0 (its mouth follows
# the sound's envelope); the English clip whose sound is 0.2 s late: -7.
SYNC_NATURAL = (-5, 0)
SYNC_TARGET = -2.5  # frames: where a corrected clip's best offset lands (the band's middle; Ted -2.6)
SYNC_MIN_FRAMES = 250  # the estimate decides on clips of 10 s or more (may_5s, 5 s, peaks at +14 by noise) ...
SYNC_MIN_CORR = 0.3  # ... when the sound predicts the mouth clearly at its best offset ...
SYNC_MIN_GAIN = 0.1  # ... and clearly better there than anywhere in natural sync

Progress = Callable[[str, int, int], None]  # (step, done, total)


class PreprocessError(EmbedTalkError, ValueError):
    """A video that cannot become a dataset; the message names the file and what to do."""


@dataclass
class PreprocessOptions:
    """What a run depends on (besides the video). A model path left None is found as
    `embedtalk_sdk.model_files` says ($EMBEDTALK_MODELS, then the user cache)."""

    face_model: str | None = None
    segmentation_model: str | None = None
    audio: str | None = None  # a separate speech track instead of the video's own
    audio_shift: float = 0.0  # seconds; negative moves the speech earlier (sound late in the clip); no auto-sync
    keep_audio_sync: bool = False  # True: a clip found out of sync is only warned about, not corrected
    hubert_path: str | None = None
    pose_smoothing: float = 1.0  # Gaussian sigma in frames over the head pose (0: off)
    points: int = 30000  # initial point-cloud size
    point_frames: int = 8
    jpeg_quality: int = JPEG_QUALITY


# ---------------------------------------------------------------------------------------------
# Small file helpers.


def _atomic_json(path: Path, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=1).encode())


def _load_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _file_fingerprint(path: Path) -> dict:
    st = path.stat()
    return {"path": str(path.resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


# ---------------------------------------------------------------------------------------------
# Step 1: decode.


@dataclass
class VideoInfo:
    frames: int
    width: int
    height: int
    source_fps: float
    source_frames: int
    variable_rate: bool
    resampled: bool
    rotation: int
    start_time: float
    dropped_timestamps: int = 0


def _open_video(path: Path):
    import av

    if not path.is_file():
        raise PreprocessError(f"{path}: no such video file; check the path")
    if path.stat().st_size == 0:
        raise PreprocessError(f"{path}: the file is empty (0 bytes); copy the video again")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise PreprocessError(f"{path}: not a readable video ({e}); re-export it (e.g. ffmpeg -i IN -c:v libx264 "
                              "-c:a aac OUT.mp4) or copy it again") from None
    if not container.streams.video:
        container.close()
        raise PreprocessError(f"{path}: has no video stream; give a video of the speaker")
    return container


def _source_frames(path: Path) -> Iterator[tuple[float, np.ndarray, int]]:
    """(time in seconds from the stream start, RGB uint8 frame, rotation) of every decoded frame."""
    import av

    container = _open_video(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate or Fraction(FPS)
        k = 0
        try:
            for frame in container.decode(stream):
                t = frame.time if frame.time is not None else k / float(rate)
                img = frame.to_ndarray(format="rgb24")
                rot = int(round((frame.rotation or 0) / 90.0)) % 4
                if rot:
                    img = np.ascontiguousarray(np.rot90(img, rot))
                yield float(t), img, rot * 90
                k += 1
        except av.FFmpegError as e:
            raise PreprocessError(f"{path}: the video is corrupt after {k} frames ({e}); re-export it or "
                                  "copy it again") from None
    finally:
        container.close()


def resample_times(times: np.ndarray, fps: float = FPS) -> np.ndarray:
    """Which source frame each output frame shows: output frame k (at k / fps after the first source
    frame) takes the source frame nearest in time (exact ties: the later one); there are
    round((span + one median interval) * fps) outputs. times: source presentation times [m]
    (seconds, increasing). Returns source indices [n]. `decode_video` streams exactly this."""
    t = np.asarray(times, np.float64) - float(times[0])
    step = float(np.median(np.diff(t))) if len(t) > 1 else 1.0 / fps
    n = max(int(np.floor((t[-1] + step) * fps + 0.5)), 1)
    mids = (t[1:] + t[:-1]) / 2.0
    return np.searchsorted(mids, np.arange(n) / fps + 1e-9, side="right")


TRUNCATED_FRACTION = 0.98  # fewer decoded frames than this share of the declared ones: refused


def _check_complete(path: Path, decoded: int, declared: int) -> None:
    """Refuse a video whose stream ends well before its container says (a cut or half-copied file:
    the index, written first in a faststart mp4, still lists every frame)."""
    if declared and decoded < TRUNCATED_FRACTION * declared:
        raise PreprocessError(f"{path}: only {decoded} of the {declared} frames the file declares could be decoded "
                              "(truncated or damaged); copy or re-export the video")


def decode_video(path: Path, out: Path, quality: int, progress: Callable[[int, int], None] | None) -> VideoInfo:
    """Write ori_imgs/{i}.jpg at 25 fps (`resample_times`). Streams: two source frames in memory."""
    container = _open_video(path)
    stream = container.streams.video[0]
    declared = int(stream.frames or 0)  # what the container's index promises (0: it does not say)
    est = declared
    if not est and stream.duration:
        est = int(float(stream.duration * stream.time_base) * FPS)
    container.close()
    imgs = out / "ori_imgs"
    imgs.mkdir(parents=True, exist_ok=True)
    times: list[float] = []
    dropped = 0
    written = 0
    prev: np.ndarray | None = None
    shape, rotation, t0 = None, 0, 0.0
    pending: list = []

    with ThreadPoolExecutor(max_workers=2) as pool:

        def emit(img: np.ndarray, count: int) -> None:
            nonlocal written
            while written < count:
                pending.append(pool.submit(write_image, imgs / f"{written}.jpg", img, quality))
                written += 1
                if progress and written % 10 == 0:
                    progress(written, max(est, written))
            while len(pending) > 8:
                pending.pop(0).result()

        for t, img, rot in _source_frames(path):
            if shape is None:
                shape, rotation, t0 = img.shape, rot, t
            if img.shape != shape:
                raise PreprocessError(f"{path}: frame size changes from {shape[1]}x{shape[0]} to "
                                      f"{img.shape[1]}x{img.shape[0]}; re-encode the video at one size")
            t -= t0
            if times and t <= times[-1]:
                dropped += 1  # a repeated or out-of-order time stamp
                continue
            if prev is not None:  # outputs before the midpoint show the previous source frame
                mid = (times[-1] + t) / 2.0
                emit(prev, max(int(np.ceil((mid - 1e-9) * FPS)), 0))
            times.append(t)
            prev = img
        if prev is None:
            raise PreprocessError(f"{path}: no video frames could be decoded; re-export the video")
        _check_complete(path, len(times) + dropped, declared)
        step = float(np.median(np.diff(times))) if len(times) > 1 else 1.0 / FPS
        emit(prev, max(int(np.floor((times[-1] + step) * FPS + 0.5)), 1))
        for f in pending:
            f.result()
    for k in range(written, written + 100000):  # frames of an earlier, longer run
        stale = imgs / f"{k}.jpg"
        if not stale.exists():
            break
        stale.unlink()
    dt = np.diff(times) if len(times) > 1 else np.array([1.0 / FPS])
    med = float(np.median(dt))
    variable = bool(len(dt) > 1 and np.ptp(dt) > 0.02 * med)
    source_fps = 1.0 / med if med > 0 else float(FPS)
    if progress:
        progress(written, written)
    return VideoInfo(frames=written, width=int(shape[1]), height=int(shape[0]), source_fps=round(source_fps, 4),
                     source_frames=len(times), variable_rate=variable,
                     resampled=variable or abs(source_fps - FPS) > 0.01, rotation=rotation, start_time=float(t0),
                     dropped_timestamps=dropped)  # fmt: skip


def _audio_start(path: Path) -> float | None:
    import av

    with av.open(str(path)) as c:
        if not c.streams.audio:
            return None
        s = c.streams.audio[0]
        return float(s.start_time * s.time_base) if s.start_time is not None else 0.0


def decode_audio_track(video: Path, audio: Path | None, video_start: float, n_frames: int,
                       shift: float = 0.0) -> tuple[np.ndarray, dict]:
    """16 kHz mono speech aligned with frame 0, exactly n_frames * 640 samples long.

    shift: seconds to move the speech relative to the frames (negative: earlier, for a clip whose
    sound comes late)."""
    from embedtalk_sdk.runtime.audio.io import AudioError, load_audio

    found: dict[str, Any] = {}
    if audio is None:
        start = _audio_start(video)
        if start is None:
            raise PreprocessError(f"{video}: has no audio track; preprocessing needs the speaker's voice: give a "
                                  "video with sound, or pass the speech separately with --audio FILE")
        src = video
        offset = video_start - start  # seconds of audio before the first frame
    else:
        src, offset = audio, 0.0
    try:
        samples = load_audio(src, SAMPLE_RATE)
    except AudioError as e:
        raise PreprocessError(str(e)) from None
    found["audio_source"] = str(src)
    found["audio_seconds"] = round(len(samples) / SAMPLE_RATE, 3)
    skip = int(round(offset * SAMPLE_RATE))
    if skip > 0:
        samples = samples[skip:]
    elif skip < 0:
        samples = np.concatenate([np.zeros(-skip, np.float32), samples])
    found["audio_offset_s"] = round(offset, 4)
    if shift:
        found["audio_shift_s"] = shift
        k = int(round(shift * SAMPLE_RATE))
        samples = np.concatenate([np.zeros(k, np.float32), samples]) if k > 0 else samples[-k:]
    need = n_frames * SAMPLE_RATE // FPS
    if len(samples) < need:
        found["audio_padded_s"] = round((need - len(samples)) / SAMPLE_RATE, 3)
        samples = np.concatenate([samples, np.zeros(need - len(samples), np.float32)])
    found["audio_trimmed_s"] = round(max(len(samples) - need, 0) / SAMPLE_RATE, 3)
    samples = samples[:need]
    if float(np.max(np.abs(samples), initial=0.0)) < 1e-4:
        raise PreprocessError(f"{src}: the audio track is silent; give the video with the speaker's voice "
                              "(or --audio FILE)")
    return samples, found


# ---------------------------------------------------------------------------------------------
# Step 3: sync.


def peak_offset(curve: dict[int, float]) -> float:
    """The offset (frames) where a correlation curve peaks, between frames by a parabola through the
    best offset and its two neighbours (the best offset itself at the curve's ends)."""
    best = max(curve, key=curve.get)
    lo, hi = curve.get(best - 1), curve.get(best + 1)
    if lo is None or hi is None:
        return float(best)
    bend = lo - 2.0 * curve[best] + hi
    return best + 0.5 * (lo - hi) / bend if bend < 0 else float(best)


def judge_sync(curve: dict[int, float], frames: int) -> dict:
    """Whether a clip's sound is clearly shifted against its mouth, and the move that fixes it.

    curve: {offset (frames): r} from `embedtalk_sdk.metrics.audio_predicts_mouth` over `frames` frames.
    Out of sync when the clip has at least SYNC_MIN_FRAMES frames, the best offset lies outside
    SYNC_NATURAL, its r is at least SYNC_MIN_CORR and SYNC_MIN_GAIN above the best r inside the band.
    "shift_s" moves the sound so that the best offset lands on SYNC_TARGET (negative: earlier; the
    `audio_shift` of `decode_audio_track`). Returns a JSON-able dict with the reason in words.
    """
    lo, hi = SYNC_NATURAL
    verdict: dict[str, Any] = {"natural_band_frames": [lo, hi], "frames": frames, "out_of_sync": False}
    if not curve:
        return {**verdict, "shift_s": 0.0, "reason": "too short to measure"}
    best = max(curve, key=curve.get)
    r_best = curve[best]
    r_band = max((c for d, c in curve.items() if lo <= d <= hi), default=0.0)
    peak = peak_offset(curve)
    # best offset d: the sound that predicts frame i is at frame i - d; a peak above the target means
    # the sound comes early, and moving it later (shift > 0) puts the peak on the target
    shift = round((peak - SYNC_TARGET) / FPS, 3)
    verdict.update(best_offset_frames=int(best), peak_offset_frames=round(peak, 2), correlation_best=round(r_best, 4),
                   correlation_in_band=round(r_band, 4), correlation_at_zero=round(curve.get(0, 0.0), 4),
                   shift_s=shift)  # fmt: skip
    where = (f"best offset {best:+d} frames (r {r_best:.2f}; {r_band:.2f} at best in natural sync, "
             f"{lo}..{hi} frames)")
    if frames < SYNC_MIN_FRAMES:
        reason = f"{where}: too short to judge ({frames} frames, {SYNC_MIN_FRAMES} needed)"
    elif lo <= best <= hi:
        reason = f"{where}: in natural sync"
    elif r_best < SYNC_MIN_CORR:
        reason = f"{where}: the sound predicts the mouth too weakly to judge (r under {SYNC_MIN_CORR})"
    elif r_best - r_band < SYNC_MIN_GAIN:
        reason = f"{where}: not clearly better than in natural sync (by under {SYNC_MIN_GAIN})"
    else:
        verdict["out_of_sync"] = True
        reason = f"{where}: the sound comes {abs(shift):.2f} s {'early' if shift > 0 else 'late'} against the mouth"
    verdict["reason"] = reason
    if not verdict["out_of_sync"]:
        verdict["shift_s"] = 0.0
    return verdict


# ---------------------------------------------------------------------------------------------
# The runner.


class _Run:
    def __init__(self, video: Path, out: Path, opts: PreprocessOptions, progress: Progress | None,
                 log: Callable[[str], None]) -> None:
        self.video, self.out, self.opts = video, out, opts
        self.progress = progress
        self.log = log
        self.state = out / "preprocess"
        self.steps_dir = self.state / "steps"
        self.log_path = out / "preprocess_log.json"
        self.record: dict[str, Any] = {"video": str(video), "sdk_version": __version__,
                                       "options": asdict(opts), "steps": {}, "warnings": []}
        self.fingerprints: dict[str, str] = {}
        self.n = 0
        self.width = self.height = 0
        self.video_start = 0.0

    def warn(self, message: str) -> None:
        self.record["warnings"].append(message)
        warnings.warn(message, stacklevel=3)
        self.log(f"warning: {message}")

    def bar(self, step: str) -> Callable[[int, int], None] | None:
        if self.progress is None:
            return None
        return lambda done, total: self.progress(step, done, total)

    def run_step(self, name: str, fn: Callable[[], dict], opts: dict, deps: list[str]) -> dict:
        key = {"video": _file_fingerprint(self.video), "step": name, "options": opts,
               "deps": [self.fingerprints.get(d) for d in deps], "version": 1}
        fp = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()
        self.fingerprints[name] = fp
        marker = self.steps_dir / f"{name}.json"
        if marker.exists():
            try:
                done = json.loads(marker.read_text())
            except json.JSONDecodeError:
                done = {}
            if done.get("fingerprint") == fp:
                done["status"] = "skipped (already done)"
                self.record["steps"][name] = done
                self.log(f"{name}: already done, skipped")
                _atomic_json(self.log_path, self.record)
                return done["found"]
        t0, c0 = time.perf_counter(), time.process_time()
        found = fn()
        entry = {"fingerprint": fp, "status": "done", "seconds": round(time.perf_counter() - t0, 2),
                 "cpu_seconds": round(time.process_time() - c0, 2), "found": found}
        _atomic_json(marker, entry)
        self.record["steps"][name] = entry
        _atomic_json(self.log_path, self.record)
        return found

    # -- per-frame helpers --------------------------------------------------------------------

    def frames(self, ids: range | list[int] | None = None) -> Iterator[np.ndarray]:
        """ori_imgs frames, decoded a few ahead on a thread."""
        ids = list(range(self.n)) if ids is None else list(ids)
        with ThreadPoolExecutor(max_workers=1) as pool:
            futures = [pool.submit(_load_rgb, self.out / "ori_imgs" / f"{i}.jpg") for i in ids[:4]]
            for k in range(len(ids)):
                if k + 4 < len(ids):
                    futures.append(pool.submit(_load_rgb, self.out / "ori_imgs" / f"{ids[k + 4]}.jpg"))
                yield futures[k].result()
                futures[k] = None

    # -- steps --------------------------------------------------------------------------------

    def decode(self) -> dict:
        info = decode_video(self.video, self.out, self.opts.jpeg_quality, self.bar("decode"))
        if info.frames < MIN_FRAMES:
            raise PreprocessError(f"{self.video}: only {info.frames} frames at {FPS} fps; give at least "
                                  f"{MIN_FRAMES / FPS:g} s of video (1-5 minutes is best)")
        samples, afound = decode_audio_track(self.video, Path(self.opts.audio) if self.opts.audio else None,
                                             info.start_time, info.frames, self.opts.audio_shift)
        with atomic_path(self.out / "aud.wav", suffix=".part.wav") as tmp:
            write_wav(tmp, samples, SAMPLE_RATE)
        found = {**asdict(info), **afound}
        if info.variable_rate:
            self.warn(f"{self.video}: variable frame rate (median {info.source_fps:g} fps): resampled to {FPS} fps "
                      "by taking the nearest source frame for each output frame")
        elif info.resampled:
            self.log(f"{self.video}: {info.source_fps:g} fps source resampled to {FPS} fps")
        return found

    def landmarks(self) -> dict:
        from embedtalk_sdk.preprocess.face import AU_CSV_COLUMNS, aus_from_blendshapes, fill_missing, to_ibug68, track_faces

        track = track_faces(self.frames(), self.n, self.opts.face_model, FPS, self.bar("landmarks"))
        found_share = float(track.found.mean())
        if not track.found.any():
            raise PreprocessError(f"{self.video}: no face found in any of its {self.n} frames; give a video of one "
                                  "person facing the camera")
        if found_share < MIN_FACE_SHARE:
            raise PreprocessError(f"{self.video}: a face is visible in only {found_share:.0%} of the frames; cut the "
                                  "video to the part where the speaker faces the camera")
        multi = int((track.faces > 1).sum())
        if multi:
            self.warn(f"{self.video}: {multi} of {self.n} frames show more than one face; using the largest face")
        if not track.found.all():
            self.warn(f"{self.video}: no face in {int((~track.found).sum())} frames; their landmarks are interpolated")
        track = fill_missing(track)
        track.save(self.state / "face_track.npz")
        ibug = to_ibug68(track.landmarks)[..., :2]
        for i in range(self.n):
            write_landmarks(self.out / "ori_imgs" / f"{i}.lms", ibug[i])
        aus = aus_from_blendshapes(track.blendshapes, track.names)
        write_au_csv(self.out / "au.csv", aus, FPS, AU_CSV_COLUMNS, track.found)
        blink = aus[:, AU_CSV_COLUMNS.index(BLINK_CSV_COLUMN)]
        return {"frames_with_face": int(track.found.sum()), "frames_without_face": int((~track.found).sum()),
                "frames_with_several_faces": multi,
                "au_mean": {c: round(float(v), 3) for c, v in zip(AU_CSV_COLUMNS, aus.mean(axis=0))},
                "au45_p99": round(float(np.percentile(blink, 99)), 3)}  # fmt: skip

    def sync(self) -> dict:
        from embedtalk_sdk.metrics import audio_predicts_mouth
        from embedtalk_sdk.preprocess.face import FaceTrack, mouth_opening
        from embedtalk_sdk.runtime.audio.encoders import MelEncoder

        audio = Path(self.opts.audio) if self.opts.audio else None

        def decoded(shift: float) -> np.ndarray:
            return decode_audio_track(self.video, audio, self.video_start, self.n, shift)[0]

        # measured on the sound as decode wrote it, decoded again from the source: a re-run of this
        # step (new options, new landmarks) starts from there and never moves the sound twice
        samples = decoded(self.opts.audio_shift)
        mouth = mouth_opening(FaceTrack.load(self.state / "face_track.npz").landmarks)
        measured = audio_predicts_mouth(MelEncoder().features(samples), mouth)
        verdict = judge_sync(measured["curve"], self.n)
        found = {**verdict, "curve": {str(d): round(c, 3) for d, c in measured["curve"].items()},
                 "audio_shift_applied_s": 0.0}
        move = f"{abs(verdict['shift_s']):.2f} s {'later' if verdict['shift_s'] > 0 else 'earlier'}"
        if not verdict["out_of_sync"]:
            found["action"] = "kept the sound as it is"
            self.log(f"sync: {verdict['reason']}")
        elif self.opts.keep_audio_sync:
            found["action"] = "kept the sound as it is (--keep-audio-sync)"
            self.warn(f"{self.video}: {verdict['reason']}; kept as it is (--keep-audio-sync; without it the sound "
                      f"is moved {move})")
        elif self.opts.audio_shift:
            given = f"--audio-shift {self.opts.audio_shift:+g}"
            found["action"] = f"kept the sound as it is ({given} given)"
            self.warn(f"{self.video}: {verdict['reason']} with {given}; if the clip is out of sync, re-run with "
                      f"--audio-shift {self.opts.audio_shift + verdict['shift_s']:+.2f}")
        else:
            samples = decoded(verdict["shift_s"])
            found["audio_shift_applied_s"] = verdict["shift_s"]
            found["action"] = f"moved the sound {move} (best offset to {SYNC_TARGET:+g} frames)"
            self.warn(f"{self.video}: {verdict['reason']}: moved the sound {move} in aud.wav (--keep-audio-sync "
                      "keeps it as it is)")
        with atomic_path(self.out / "aud.wav", suffix=".part.wav") as tmp:
            write_wav(tmp, samples, SAMPLE_RATE)
        return found

    def cameras(self) -> dict:
        from embedtalk_sdk.preprocess.face import MEDIAPIPE_FOV_DEG, FaceTrack, canonical_face_mesh, focal_from_fov
        from embedtalk_sdk.preprocess.headpose import camera_track, fit_head_poses, smooth_poses

        track = FaceTrack.load(self.state / "face_track.npz")
        canonical, _ = canonical_face_mesh(self.opts.face_model)
        focal = focal_from_fov(self.height)
        cx, cy = self.width / 2.0, self.height / 2.0
        fit = fit_head_poses(track.landmarks, track.matrices, canonical, focal, cx, cy)
        rot, trans = smooth_poses(fit["rot"], fit["trans"], self.opts.pose_smoothing)
        c2w = camera_track(rot, trans)
        np.savez(self.state / "head_poses.npz", rot=rot, trans=trans, rot_raw=fit["rot"], trans_raw=fit["trans"],
                 template=fit["template"], rigid=fit["rigid"], focal=focal)
        n_train = write_transforms(self.out, c2w, focal, cx, cy, self.width, self.height, FPS)
        from scipy.spatial.transform import Rotation

        euler = Rotation.from_matrix(rot).as_euler("YXZ", degrees=True)  # yaw, pitch, roll
        dist = np.linalg.norm(c2w[:, :3, 3], axis=1)
        return {"focal_len": round(focal, 3), "fov_deg": MEDIAPIPE_FOV_DEG,
                "reprojection_px_mediapipe": round(fit["error_mediapipe_px"], 3),
                "reprojection_px": round(fit["error_px"], 3), "rigid_landmarks": int(len(fit["rigid"])),
                "yaw_range_deg": [round(float(euler[:, 0].min()), 2), round(float(euler[:, 0].max()), 2)],
                "pitch_range_deg": [round(float(euler[:, 1].min()), 2), round(float(euler[:, 1].max()), 2)],
                "roll_range_deg": [round(float(euler[:, 2].min()), 2), round(float(euler[:, 2].max()), 2)],
                "camera_distance_m": [round(float(dist.min()), 4), round(float(dist.max()), 4)],
                "train_frames": n_train, "val_frames": self.n - n_train}  # fmt: skip

    def background(self) -> dict:
        from embedtalk_sdk.preprocess.segmentation import PersonSegmenter, background_from_frames

        k = min(BACKGROUND_SAMPLES, max(BACKGROUND_MIN_SAMPLES, self.n // 4), self.n)
        ids = np.unique(np.linspace(0, self.n - 1, k).round().astype(int)).tolist()
        samples, masks = [], []
        bar = self.bar("background")
        with PersonSegmenter(self.opts.segmentation_model) as seg:
            for k, frame in enumerate(self.frames(ids)):
                samples.append(frame)
                masks.append(seg.mask(frame))
                if bar:
                    bar(k + 1, len(ids))
        bc, seen = background_from_frames(np.stack(samples), np.stack(masks))
        with atomic_path(self.out / "bc.jpg", suffix=".part.jpg") as tmp:
            write_image(tmp, bc, self.opts.jpeg_quality)
        person_share = float(np.mean([(m > 0.5).mean() for m in masks]))
        return {"person_share_mean": round(person_share, 4), "background_seen_share": round(float(seen.mean()), 4),
                "background_samples": len(ids)}

    def compose(self) -> dict:
        from embedtalk_sdk.preprocess.face import FaceTrack
        from embedtalk_sdk.preprocess.segmentation import PersonSegmenter, extend_neck, parsing_image, split_person

        track = FaceTrack.load(self.state / "face_track.npz")
        bc8 = _load_rgb(self.out / "bc.jpg")
        bc = bc8.astype(np.float32)
        for sub in ("gt_imgs", "torso_imgs", "parsing"):
            (self.out / sub).mkdir(parents=True, exist_ok=True)
        bar = self.bar("compose")
        head_share = np.zeros(self.n)
        done = [0]
        lock = threading.Lock()

        def compose_frame(seg, i: int) -> None:
            frame = _load_rgb(self.out / "ori_imgs" / f"{i}.jpg")
            person = seg.mask(frame)
            head_a, torso_a, labels = split_person(person, track.landmarks[i])
            head_share[i] = float((head_a > 0.5).mean())
            # background pixels -> bc.jpg, blended along the soft edge of the person mask
            gt8 = np.where((person > 0.5)[..., None], frame, bc8)
            soft = (person > 0.004) & (person < 0.996)
            p1 = person[soft][:, None]
            gt8[soft] = np.clip(frame[soft] * p1 + bc[soft] * (1.0 - p1) + 0.5, 0, 255).astype(np.uint8)
            rgb, alpha = extend_neck(frame, torso_a, head_a, track.landmarks[i])
            rgba = np.empty(rgb.shape[:2] + (4,), np.uint8)
            rgba[..., :3] = rgb * (alpha[..., None] > 0)
            rgba[..., 3] = np.clip(alpha * 255 + 0.5, 0, 255)
            write_image(self.out / "gt_imgs" / f"{i}.jpg", gt8, self.opts.jpeg_quality)
            write_image(self.out / "torso_imgs" / f"{i}.png", rgba)
            write_image(self.out / "parsing" / f"{i}.png", parsing_image(labels))
            with lock:
                done[0] += 1
                if bar and done[0] % 10 == 0:
                    bar(done[0], self.n)

        def worker(k: int) -> None:  # frames k, k + W, ...: segmentation, numpy and codecs release the GIL
            with PersonSegmenter(self.opts.segmentation_model) as seg:
                for i in range(k, self.n, COMPOSE_THREADS):
                    compose_frame(seg, i)

        with ThreadPoolExecutor(max_workers=COMPOSE_THREADS) as pool:
            for f in [pool.submit(worker, k) for k in range(COMPOSE_THREADS)]:
                f.result()
        if bar:
            bar(self.n, self.n)
        return {"head_share_mean": round(float(np.mean(head_share)), 4)}

    def points(self) -> dict:
        from embedtalk_sdk.preprocess.face import FaceTrack, canonical_face_mesh, mouth_opening
        from embedtalk_sdk.preprocess.pointcloud import frame_points, merge_points, pick_frames

        track = FaceTrack.load(self.state / "face_track.npz")
        with np.load(self.state / "head_poses.npz") as z:
            rot, trans, template, focal = z["rot"], z["trans"], z["template"], float(z["focal"])
        canonical, _ = canonical_face_mesh(self.opts.face_model)
        scale = float(np.linalg.norm(template - template.mean(0), axis=1).mean()
                      / np.linalg.norm(canonical - canonical.mean(0), axis=1).mean())
        from scipy.spatial.transform import Rotation

        yaw = Rotation.from_matrix(rot).as_euler("YXZ")[:, 0]
        picks = pick_frames(yaw, mouth_opening(track.landmarks), self.opts.point_frames)
        pts, cols = [], []
        bar = self.bar("points")
        from scipy import ndimage

        from embedtalk_sdk.preprocess.segmentation import PersonSegmenter, head_region

        seg = PersonSegmenter(self.opts.segmentation_model)
        voxel = 0.0015
        # a pixel spans ~depth / focal metres: skip pixels where several fall into one voxel
        stride = max(1, int(voxel / (0.3 / focal)))
        for k, (i, frame) in enumerate(zip(picks, self.frames(picks))):
            person = seg.mask(frame)
            head = head_region(track.landmarks[i], self.width, self.height) & (person > 0.5)
            head = ndimage.binary_erosion(head, iterations=1)  # no background-coloured edge pixels
            p, c = frame_points(frame, head, rot[i], trans[i], template, focal, self.width / 2.0,
                                self.height / 2.0, scale, stride)
            pts.append(p)
            cols.append(c)
            if bar:
                bar(k + 1, len(picks))
        seg.close()
        cloud = merge_points(pts, cols, voxel, self.opts.points)
        write_npy(self.out / "points3d.npy", cloud)
        lo, hi = cloud[:, :3].min(0), cloud[:, :3].max(0)
        return {"points": int(len(cloud)), "frames_used": picks, "voxel_m": voxel,
                "bbox_min_m": np.round(lo, 4).tolist(), "bbox_max_m": np.round(hi, 4).tolist(),
                "head_scale_vs_canonical": round(scale, 4)}

    def hubert(self) -> dict:
        from embedtalk_sdk.audio.features import hubert_features

        feats = hubert_features(self.out / "aud.wav", self.opts.hubert_path)
        m = len(feats) - len(feats) % 2
        arr = feats[:m].reshape(-1, 2, feats.shape[1]).astype(np.float32)
        write_npy(self.out / "aud_hu.npy", arr)
        return {"shape": list(arr.shape)}


def resolve_models(opts: PreprocessOptions) -> PreprocessOptions:
    """`opts` with both model paths found (model_files.model_file); raises ModelFileError."""
    face = model_file(FACE_LANDMARKER, opts.face_model, "--face-model")
    segmentation = model_file(SELFIE_SEGMENTATION, opts.segmentation_model, "--segmentation-model")
    return replace(opts, face_model=str(face), segmentation_model=str(segmentation))


def preprocess(video: str | Path, out: str | Path, options: PreprocessOptions | None = None,
               progress: Progress | None = None, log: Callable[[str], None] = lambda m: None) -> dict:
    """Turn one talking-portrait video into a dataset folder `out`; returns the log record.

    Resumable: finished steps whose inputs and options are unchanged are skipped.
    Raises PreprocessError (bad input; one line naming the file and what to do), ModelFileError (a
    model file found nowhere) and FaceModelError (a model file that cannot be used).
    """
    video, out = Path(video), Path(out)
    opts = resolve_models(options or PreprocessOptions())
    if not video.is_file():
        raise PreprocessError(f"{video}: no such video file; check the path")
    out.mkdir(parents=True, exist_ok=True)
    run = _Run(video, out, opts, progress, log)
    run.steps_dir.mkdir(parents=True, exist_ok=True)
    audio_fp = _file_fingerprint(Path(opts.audio)) if opts.audio else None
    dec = run.run_step("decode", run.decode, {"audio": audio_fp, "shift": opts.audio_shift,
                                              "q": opts.jpeg_quality}, [])
    run.n, run.width, run.height = int(dec["frames"]), int(dec["width"]), int(dec["height"])
    run.video_start = float(dec["start_time"])
    face_fp = _file_fingerprint(Path(opts.face_model))
    run.run_step("landmarks", run.landmarks, {"model": face_fp}, ["decode"])
    rules = [SYNC_NATURAL, SYNC_TARGET, SYNC_MIN_FRAMES, SYNC_MIN_CORR, SYNC_MIN_GAIN]
    run.run_step("sync", run.sync, {"keep": opts.keep_audio_sync, "rules": rules}, ["decode", "landmarks"])
    run.run_step("cameras", run.cameras, {"smoothing": opts.pose_smoothing}, ["landmarks"])
    seg_fp = _file_fingerprint(Path(opts.segmentation_model))
    run.run_step("background", run.background, {"model": seg_fp}, ["decode"])
    run.run_step("compose", run.compose, {"model": seg_fp, "q": opts.jpeg_quality}, ["landmarks", "background"])
    run.run_step("points", run.points, {"model": seg_fp, "points": opts.points, "frames": opts.point_frames},
                 ["cameras"])
    if opts.hubert_path:
        run.run_step("hubert", run.hubert, {"hubert": str(opts.hubert_path)}, ["sync"])
    return run.record
