"""Audio encoders: how 16 kHz mono audio becomes the network's feature rows (numpy + onnxruntime).

Every bundle names one encoder in its manifest's audio block (docs/interfaces.md):

- "mel":      log-mel rows (runtime/audio/mel.py); the block holds the MelSpec fields.
- "hubert":   HuBERT's last hidden state from an ONNX file that takes raw samples (the
              Wav2Vec2FeatureExtractor normalisation is inside it), computed in fixed windows
              (`EncoderWindows`) so that `speak` and `stream` give the same rows.
- "phonetic": 42 phone posteriors of the CMU US-English acoustic model (runtime/audio/phonetic.py:
              sphinx's front end in numpy, the GMM scorer as an ONNX file in the bundle), then the
              clip's log-mel rows when the block has "mel" (the default since 2026-12-07).
- "features": rows the app computes itself (e.g. a dataset's aud_hu.npy); it cannot encode audio.

All of them give rows at `rate` (50) Hz; `frame_windows` cuts the network's window per video frame.
The training side (embedtalk_sdk/audio/features.py) builds the same classes with its own HuBERT
runner (torch), so training, export and playback share one definition of the features.
"""
from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Mapping, Protocol

import numpy as np

from embedtalk_sdk.runtime.audio.mel import MelSpec, MelStreamer, log_mel
from embedtalk_sdk.runtime.audio.phonetic import FEATURE_DIM, N_PHONES, PhoneticStreamer, Scorer, SphinxSpec
from embedtalk_sdk.runtime.bundle import Bundle, BundleError, sha256_of
from embedtalk_sdk.runtime.config import config_from_mapping
from embedtalk_sdk.runtime.onnx_check import check_self_contained

__all__ = [
    "AudioEncoder",
    "MelEncoder",
    "HubertEncoder",
    "FeaturesEncoder",
    "PhoneticEncoder",
    "FixedPieceStreamer",
    "ConcatStreamer",
    "EncoderWindows",
    "FeatureStreamer",
    "WindowedStreamer",
    "ENCODERS",
    "SAMPLE_RATE",
    "encoder_from_manifest",
    "windowed_features",
    "onnx_runner",
    "onnx_scorer",
    "shared_file_name",
]

SAMPLE_RATE = 16000  # every encoder takes 16 kHz mono float audio
# A shared encoder file is named, never located, by the manifest: a bare file name, no folders.
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\.onnx$")

Runner = Callable[[np.ndarray], np.ndarray]  # float32 samples [S] -> rows [M, F]


class FeatureStreamer(Protocol):
    """Incremental features: `feed` chunks, then `flush` once; rows equal the whole-clip ones."""

    @property
    def n_samples(self) -> int: ...

    def feed(self, chunk: np.ndarray) -> np.ndarray: ...

    def flush(self) -> np.ndarray: ...


class AudioEncoder(ABC):
    """One kind of audio features: name, rate, width, computation and manifest block.

    Attributes:
        name: the manifest's audio.encoder value.
        from_audio: False if the app must supply the features (`speak(features=...)`).
        rate: feature rows per second (50).
        dim: feature width F.
    """

    name: ClassVar[str]
    from_audio: ClassVar[bool] = True
    rate: float
    dim: int

    @abstractmethod
    def features(self, samples: np.ndarray) -> np.ndarray:
        """Rows float32 [M, dim] of a whole clip (float samples [S] at 16 kHz)."""

    @abstractmethod
    def streamer(self) -> FeatureStreamer:
        """A fresh incremental computation of `features` for one stream."""

    def block(self) -> dict[str, Any]:
        """The manifest's audio block (without the network's "window"): JSON-ready."""
        return {"encoder": self.name, "rate": float(self.rate), "feature_dim": int(self.dim)}

    @classmethod
    @abstractmethod
    def from_block(cls, block: Mapping[str, Any], bundle: Bundle, encoder_file: Path | None) -> "AudioEncoder":
        """Build from a bundle's audio block; BundleError if the block or its files are wrong."""


class MelEncoder(AudioEncoder):
    """Log-mel rows (`log_mel` / `MelStreamer`); the block is the MelSpec fields."""

    name = "mel"

    def __init__(self, spec: MelSpec = MelSpec()) -> None:
        self.spec, self.rate, self.dim = spec, spec.rate, spec.n_mels

    def features(self, samples: np.ndarray) -> np.ndarray:
        return log_mel(samples, self.spec)

    def streamer(self) -> MelStreamer:
        return MelStreamer(self.spec)

    def block(self) -> dict[str, Any]:
        return {**super().block(), **self.spec.to_dict()}

    @classmethod
    def from_block(cls, block: Mapping[str, Any], bundle: Bundle, encoder_file: Path | None) -> "MelEncoder":
        try:
            enc = cls(MelSpec.from_dict(block))
        except ValueError as e:
            raise BundleError(f"bundle {bundle.path}: audio block: {e}") from None
        # "rate" was not written before HuBERT bundles existed; it is the MelSpec's rate.
        if enc.dim != int(block["feature_dim"]) or float(block.get("rate", enc.rate)) != enc.rate:
            raise BundleError(f"bundle {bundle.path}: audio block is inconsistent: {dict(block)}")
        return enc


class FeaturesEncoder(AudioEncoder):
    """Precomputed rows supplied by the app; it cannot turn audio into features."""

    name = "features"
    from_audio = False

    def __init__(self, dim: int, rate: float = 50.0, where: str = "this avatar") -> None:
        self.dim, self.rate, self.where = int(dim), float(rate), where

    def features(self, samples: np.ndarray) -> np.ndarray:
        raise ValueError(self._cannot("speak a wav"))

    def streamer(self) -> FeatureStreamer:
        raise ValueError(self._cannot("stream audio"))

    def _cannot(self, what: str) -> str:
        return (f"{self.where} uses precomputed audio features (encoder 'features', e.g. a dataset's "
                f"aud_hu.npy), so it cannot {what}: compute them with the tool the avatar was trained "
                f"on and pass features= ([M, {self.dim}] rows at {self.rate:g} Hz)")

    @classmethod
    def from_block(cls, block: Mapping[str, Any], bundle: Bundle, encoder_file: Path | None) -> "FeaturesEncoder":
        return cls(int(block["feature_dim"]), float(block.get("rate", 50.0)), where=f"bundle {bundle.path}")


# ------------------------------------------------------------------ windowed (non-causal) encoders


@dataclass(frozen=True)
class EncoderWindows:
    """How a non-causal encoder (HuBERT) is run on a clip: in fixed windows, the same offline and live.

    Row j describes samples [j*hop, j*hop + receptive_field) (HuBERT's conv stack: 320 and 400).
    Rows are made `chunk_rows` at a time: chunk [a, a + chunk_rows) comes from one encoder run on
    the samples of rows [a - left_rows, a + chunk_rows + lookahead_rows), cut at the clip's ends.
    So a live stream has chunk a once the samples of row a + chunk_rows + lookahead_rows - 1
    arrived: the latency is (chunk_rows + lookahead_rows) rows plus the receptive field's tail.
    Clips shorter than the receptive field are zero-padded to it (one row).
    """

    hop: int = 320
    receptive_field: int = 400
    chunk_rows: int = 10
    left_rows: int = 50
    lookahead_rows: int = 10

    def __post_init__(self) -> None:
        if self.hop <= 0 or self.receptive_field < self.hop or self.chunk_rows <= 0:
            raise ValueError(f"EncoderWindows: need hop > 0, receptive_field >= hop, chunk_rows > 0: {self}")
        if self.left_rows < 0 or self.lookahead_rows < 0:
            raise ValueError(f"EncoderWindows: left_rows and lookahead_rows must be >= 0: {self}")

    def to_dict(self) -> dict[str, int]:
        """The fields as a JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str | None = None) -> "EncoderWindows":
        """Build from a dict with every field; other keys (the audio block's) ignored.
        ConfigError (a ValueError) names the missing or ill-typed fields and `source`."""
        return config_from_mapping(cls, d, source, ignore_unknown=True)

    def n_rows(self, n_samples: int) -> int:
        """Rows of a clip of n_samples (after padding to the receptive field)."""
        return (max(n_samples, self.receptive_field) - self.receptive_field) // self.hop + 1

    def span(self, a: int, n_samples: int | None = None) -> tuple[int, int]:
        """Samples [s0, s1) that chunk a is computed from; n_samples: the clip's length once known
        (padded to the receptive field), None mid-stream (then s1 is what must have arrived)."""
        s0 = self.hop * max(0, a - self.left_rows)
        s1 = self.hop * (a + self.chunk_rows + self.lookahead_rows - 1) + self.receptive_field
        if n_samples is not None:
            s1 = min(s1, max(n_samples, self.receptive_field))
        return s0, s1

    def samples_for_rows(self, rows: int) -> int:
        """Samples a stream must have received before its first `rows` rows (rows >= 1) exist."""
        return self.span((rows - 1) // self.chunk_rows * self.chunk_rows)[1]


def _chunk(run: Runner, padded: np.ndarray, start: int, windows: EncoderWindows, a: int,
           m: int | None) -> np.ndarray:
    """Rows of chunk a from one run on its span. padded: the clip's samples from global index
    `start` on; m: the clip's row count at its end (spans cut there), None mid-stream (full span)."""
    s0, s1 = windows.span(a, None if m is None else start + padded.shape[0])
    rows = run(np.ascontiguousarray(padded[s0 - start : s1 - start]))
    first = a - s0 // windows.hop
    return rows[first : first + (windows.chunk_rows if m is None else min(windows.chunk_rows, m - a))]


def windowed_features(samples: np.ndarray, run: Runner, windows: EncoderWindows) -> np.ndarray:
    """Rows [M, F] of a whole clip, chunk by chunk as `windows` defines (what a stream gives too).

    samples: float [S] at 16 kHz; run: encoder on float32 samples [s] -> rows [(s - rf) // hop + 1, F].
    """
    x = _mono_float32(samples)
    padded = np.pad(x, (0, max(0, windows.receptive_field - x.shape[0])))
    m = windows.n_rows(x.shape[0])
    return np.concatenate([_chunk(run, padded, 0, windows, a, m) for a in range(0, m, windows.chunk_rows)])


class WindowedStreamer:
    """Incremental `windowed_features`: chunk a is computed as soon as its whole span arrived.

    Keeps only the samples from the next chunk's span start (left_rows + a few rows): bounded memory.
    """

    def __init__(self, run: Runner, windows: EncoderWindows, dim: int) -> None:
        self._run, self._w, self._dim = run, windows, int(dim)
        self._buf = np.zeros(0, dtype=np.float32)
        self._start = 0  # global sample index of _buf[0]
        self._next = 0  # next chunk's first row
        self._n_samples = 0
        self._flushed = False

    @property
    def n_samples(self) -> int:
        """Samples fed so far."""
        return self._n_samples

    def feed(self, chunk: np.ndarray) -> np.ndarray:
        """Add samples float [s]; return the newly complete rows [K, F] (K may be 0)."""
        if self._flushed:
            raise RuntimeError("WindowedStreamer: feed() after flush(); make a new streamer per clip")
        x = _mono_float32(chunk)
        self._buf = np.concatenate([self._buf, x])
        self._n_samples += x.shape[0]
        out = []
        while self._w.span(self._next)[1] <= self._n_samples:
            out.append(self._emit(None))
        return self._rows(out)

    def flush(self) -> np.ndarray:
        """End of clip: the remaining rows (their spans are cut at the clip's end)."""
        if self._flushed:
            raise RuntimeError("WindowedStreamer: flush() called twice")
        self._flushed = True
        pad = max(0, self._w.receptive_field - self._n_samples)
        self._buf = np.concatenate([self._buf, np.zeros(pad, dtype=np.float32)])
        m = self._w.n_rows(self._n_samples)
        out = []
        while self._next < m:
            out.append(self._emit(m))
        return self._rows(out)

    def _emit(self, m: int | None) -> np.ndarray:
        rows = _chunk(self._run, self._buf, self._start, self._w, self._next, m)
        self._next += self._w.chunk_rows
        keep = self._w.span(self._next)[0]  # the next span starts here: older samples are never read again
        self._buf = self._buf[keep - self._start :].copy()
        self._start = keep
        return rows

    def _rows(self, out: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(out) if out else np.zeros((0, self._dim), dtype=np.float32)


class HubertEncoder(AudioEncoder):
    """HuBERT's last hidden state [M, dim] at 50 Hz, run in `EncoderWindows`.

    run: float32 samples [s] -> rows; at playback `onnx_runner` of the bundle's encoder file, in
    training the torch model (embedtalk_sdk/audio/hubert.py). Both include the input normalisation.
    model: the manifest's "model" entry ({"file", "sha256", "bytes", "in_bundle"}), or None in training.
    """

    name = "hubert"

    def __init__(self, run: Runner, dim: int, windows: EncoderWindows = EncoderWindows(),
                 model: Mapping[str, Any] | None = None) -> None:
        self._run, self.dim, self.windows = run, int(dim), windows
        self.rate = SAMPLE_RATE / windows.hop
        self.model = dict(model) if model is not None else None

    def features(self, samples: np.ndarray) -> np.ndarray:
        return windowed_features(samples, self._run, self.windows)

    def streamer(self) -> WindowedStreamer:
        return WindowedStreamer(self._run, self.windows, self.dim)

    def block(self) -> dict[str, Any]:
        out = {**super().block(), "sample_rate": SAMPLE_RATE, **self.windows.to_dict()}
        if self.model is not None:
            out["model"] = dict(self.model)
        return out

    @classmethod
    def from_block(cls, block: Mapping[str, Any], bundle: Bundle, encoder_file: Path | None) -> "HubertEncoder":
        try:
            windows = EncoderWindows.from_dict(block)
        except ValueError as e:
            raise BundleError(f"bundle {bundle.path}: audio block: {e}") from None
        model = block.get("model")
        if not isinstance(model, dict) or not {"file", "sha256", "bytes", "in_bundle"} <= model.keys():
            raise BundleError(f"bundle {bundle.path}: audio.model must give file, sha256, bytes and in_bundle")
        path = _encoder_path(bundle, model, encoder_file)
        enc = cls(onnx_runner(path), int(block["feature_dim"]), windows, model)
        if float(block.get("rate", enc.rate)) != enc.rate:
            raise BundleError(f"bundle {bundle.path}: audio rate {block['rate']} != {SAMPLE_RATE} / hop {windows.hop}")
        return enc


class FixedPieceStreamer:
    """Feeds a streamer in fixed pieces of `piece` samples aligned to the clip's start, whatever
    chunks arrive: its computation (array shapes included) is then the same in every chunking,
    so a whole clip and a stream give the same rows bit for bit."""

    def __init__(self, inner: FeatureStreamer, piece: int) -> None:
        self._inner, self._piece = inner, int(piece)
        self._pending = np.zeros(0, dtype=np.float32)
        self._n_samples = 0

    @property
    def n_samples(self) -> int:
        """Samples fed so far."""
        return self._n_samples

    def feed(self, chunk: np.ndarray) -> np.ndarray:
        """Add samples float [s]; return the newly complete rows."""
        x = _mono_float32(chunk)
        self._n_samples += x.shape[0]
        self._pending = np.concatenate([self._pending, x])
        n = self._pending.shape[0] // self._piece * self._piece
        rows = [self._inner.feed(self._pending[a : a + self._piece]) for a in range(0, n, self._piece)]
        self._pending = self._pending[n:]
        return np.concatenate(rows) if rows else self._inner.feed(self._pending[:0])

    def flush(self) -> np.ndarray:
        """End of clip: the remaining rows."""
        rows = self._inner.feed(self._pending)
        self._pending = self._pending[:0]
        return np.concatenate([rows, self._inner.flush()])


class ConcatStreamer:
    """Rows of several streamers fed the same samples, side by side: row k is out once every part
    has made it (the slowest part sets the latency)."""

    def __init__(self, parts: list[FeatureStreamer], dims: list[int]) -> None:
        self._parts, self._dims = parts, [int(d) for d in dims]
        self._queued = [np.zeros((0, d), np.float32) for d in self._dims]

    @property
    def n_samples(self) -> int:
        """Samples fed so far."""
        return self._parts[0].n_samples

    def feed(self, chunk: np.ndarray) -> np.ndarray:
        """Add samples float [s]; return the newly complete rows [K, sum(dims)]."""
        return self._collect([p.feed(chunk) for p in self._parts])

    def flush(self) -> np.ndarray:
        """End of clip: the remaining rows (every part then has the same count)."""
        out = self._collect([p.flush() for p in self._parts])
        if any(q.shape[0] for q in self._queued):
            raise RuntimeError(f"ConcatStreamer: parts ended with different row counts ({self._queued[0].shape[0]} left)")
        return out

    def _collect(self, new: list[np.ndarray]) -> np.ndarray:
        self._queued = [np.concatenate([q, np.asarray(r, np.float32).reshape(-1, d)])
                        for q, r, d in zip(self._queued, new, self._dims)]
        k = min(q.shape[0] for q in self._queued)
        out = np.concatenate([q[:k] for q in self._queued], axis=1)
        self._queued = [q[k:] for q in self._queued]
        return out


class PhoneticEncoder(AudioEncoder):
    """Phone posteriors [M, 42] at 50 Hz of the CMU US-English acoustic model (runtime/audio/phonetic.py),
    followed by the clip's log-mel rows [M, n_mels] when `mel` is given (the default in training:
    measured better on real speech than either alone; train/design.md).

    score: the GMM scorer (float32 [2, 39] -> [2, 42]); at playback `onnx_scorer` of the bundle's
    scorer file, in training the same graph built from pocketsphinx's model files.
    scorer_sha256: the scorer graph's sha256 (training records it; export rebuilds and checks it).
    model: the manifest's "model" entry ({"file", "sha256", "bytes", "in_bundle"}), None in training.
    mel: the appended log-mel rows' MelSpec (its hop must be the rows' 320), or None for none.
    """

    name = "phonetic"

    def __init__(self, score: Scorer, spec: SphinxSpec = SphinxSpec(), scorer_sha256: str = "",
                 model: Mapping[str, Any] | None = None, mel: MelSpec | None = None) -> None:
        if mel is not None and (mel.hop != spec.row_hop or mel.sample_rate != spec.sample_rate):
            raise ValueError(f"PhoneticEncoder: log-mel rows must be at the posteriors' rate: {mel}")
        self._score, self.spec, self.scorer_sha256, self.mel = score, spec, scorer_sha256, mel
        self.rate = spec.sample_rate / spec.row_hop
        self.dim = N_PHONES + (mel.n_mels if mel is not None else 0)
        self.model = dict(model) if model is not None else None

    def features(self, samples: np.ndarray) -> np.ndarray:
        # The streamer over the whole clip: `speak` and `stream` run the very same steps.
        streamer = self.streamer()
        return np.concatenate([streamer.feed(_mono_float32(samples)), streamer.flush()])

    def streamer(self) -> FeatureStreamer:
        phones = PhoneticStreamer(self.spec, self._score)
        if self.mel is None:
            return phones
        mel = FixedPieceStreamer(MelStreamer(self.mel), self.mel.hop)
        return ConcatStreamer([phones, mel], [N_PHONES, self.mel.n_mels])

    def block(self) -> dict[str, Any]:
        out = {**super().block(), "sphinx": self.spec.to_dict(), "scorer_sha256": self.scorer_sha256,
               "input_dim": FEATURE_DIM}
        if self.mel is not None:
            out["mel"] = self.mel.to_dict()
        if self.model is not None:
            out["model"] = dict(self.model)
        return out

    @classmethod
    def from_block(cls, block: Mapping[str, Any], bundle: Bundle, encoder_file: Path | None) -> "PhoneticEncoder":
        try:
            spec = SphinxSpec.from_dict(block["sphinx"])
            mel = MelSpec.from_dict(block["mel"]) if "mel" in block else None
        except (KeyError, TypeError, ValueError) as e:
            raise BundleError(f"bundle {bundle.path}: audio block's sphinx front end or log-mel rows: {e}") from None
        model = block.get("model")
        if not isinstance(model, dict) or not {"file", "sha256", "bytes", "in_bundle"} <= model.keys():
            raise BundleError(f"bundle {bundle.path}: audio.model must give file, sha256, bytes and in_bundle")
        if mel is not None and (mel.hop != spec.row_hop or mel.sample_rate != spec.sample_rate):
            raise BundleError(f"bundle {bundle.path}: audio block's log-mel rows are not at the posteriors' rate")
        enc = cls(onnx_scorer(_encoder_path(bundle, model, encoder_file)), spec, str(block.get("scorer_sha256", "")),
                  model, mel)  # fmt: skip
        if int(block["feature_dim"]) != enc.dim or float(block.get("rate", enc.rate)) != enc.rate:
            raise BundleError(f"bundle {bundle.path}: audio block is inconsistent: feature_dim {block['feature_dim']}, "
                              f"rate {block.get('rate')} (the phonetic encoder gives {enc.dim} at {enc.rate:g} Hz)")
        return enc


def shared_file_name(encoder: str, sha256: str) -> str:
    """The name of an encoder file shared beside bundles: content-addressed, so avatars share one."""
    return f"{encoder}-{sha256[:16]}.onnx"


def _encoder_path(bundle: Bundle, model: Mapping[str, Any], encoder_file: Path | None) -> Path:
    """The verified encoder file: `encoder_file` if the app gives one, else the bundle's own copy
    (in_bundle) or the recorded bare name in the bundle's folder; sha256 checked against the manifest."""
    name = str(model["file"])
    if not _FILE_NAME.match(name):
        raise BundleError(f"bundle {bundle.path}: audio.model.file {name!r} must be a bare .onnx file name")
    if encoder_file is None and model["in_bundle"]:
        listed = bundle.manifest["files"].get(name)
        if listed is None or listed["sha256"] != model["sha256"]:
            raise BundleError(f"bundle {bundle.path}: audio encoder {name} is not the bundle file the manifest lists")
        return bundle.path_of(name)  # Bundle.open verified its sha256
    path = Path(encoder_file) if encoder_file is not None else bundle.path.resolve().parent / name
    if not path.is_file():
        raise BundleError(
            f"bundle {bundle.path} needs its audio encoder {name} (sha256 {model['sha256'][:16]}...): put it "
            f"beside the bundle in {path.parent}, or pass Avatar.load(..., encoder_file=PATH)"
        )
    size = path.stat().st_size
    if size != int(model["bytes"]) or sha256_of(_file_chunks(path)) != model["sha256"]:
        raise BundleError(
            f"{path} is not the audio encoder of bundle {bundle.path} (corrupt or another model: "
            f"sha256/size differ from the manifest's {name}); re-export or copy the matching file"
        )
    return path


def _file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            yield block


def _onnx_session(data: bytes, where: str, inputs: list[str], outputs: list[str], what: str,
                  threads: int | None = None) -> Any:
    """An onnxruntime CPU session of a self-contained ONNX model (`where` names it in errors) whose
    tensors are named as given; threads: intra-op threads (None: onnxruntime's default)."""
    import onnxruntime as ort

    # Checked first: a model with external tensor data would read files beside it.
    data = check_self_contained(data, where)
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for unreadable models
        raise BundleError(f"{where}: not a loadable ONNX {what}: {e}") from None
    names = [i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()]
    if names != (inputs, outputs):
        raise BundleError(f"{where}: {what} takes {inputs} and gives {outputs}, this one has {names}")
    return session


def onnx_runner(path: Path) -> Runner:
    """An onnxruntime session of an encoder ONNX (input "samples" [1, S] -> output "features" [1, M, F])."""
    session = _onnx_session(Path(path).read_bytes(), str(path), ["samples"], ["features"], "audio encoder")

    def run(samples: np.ndarray) -> np.ndarray:
        return session.run(["features"], {"samples": samples[None]})[0][0]

    return run


def onnx_scorer(path: Path | bytes) -> Scorer:
    """The phonetic encoder's scorer from its ONNX file, or its bytes in training (the graph built in
    memory): "features" float32 [T, 39] -> "posteriors" [T, 42] (embedtalk_sdk/audio/phonetic_model.py
    builds it)."""
    if isinstance(path, bytes):
        data, where = path, "the phonetic scorer graph"
    else:
        data, where = Path(path).read_bytes(), str(path)
    # One thread: two frames per call, where threads cost more than they give.
    session = _onnx_session(data, where, ["features"], ["posteriors"], "phonetic scorer", threads=1)

    def score(features: np.ndarray) -> np.ndarray:
        return session.run(["posteriors"], {"features": features})[0]

    return score


def _mono_float32(samples: np.ndarray) -> np.ndarray:
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"expected mono samples [S], got shape {x.shape}")
    return x


ENCODERS: dict[str, type[AudioEncoder]] = {
    cls.name: cls for cls in (MelEncoder, PhoneticEncoder, HubertEncoder, FeaturesEncoder)
}


def encoder_from_manifest(bundle: Bundle, encoder_file: str | Path | None = None) -> AudioEncoder:
    """The encoder a bundle's audio block names, ready to compute features.

    encoder_file: path of a shared encoder file (a bundle exported with it beside the avatars);
    None looks inside the bundle, then beside it. Raises BundleError naming the problem.
    """
    block = bundle.manifest.get("audio")
    if not isinstance(block, dict) or not {"encoder", "feature_dim"} <= block.keys():
        raise BundleError(f"bundle {bundle.path}: manifest lacks audio.encoder / audio.feature_dim")
    cls = ENCODERS.get(block["encoder"])
    if cls is None:
        raise BundleError(
            f"bundle {bundle.path} uses audio encoder {block['encoder']!r}; this runtime knows "
            f"{', '.join(ENCODERS)}: upgrade embedtalk-sdk"
        )
    return cls.from_block(block, bundle, None if encoder_file is None else Path(encoder_file))
