"""The phonetic encoder's acoustic model: pocketsphinx's CMU US-English PTM model read from the
wheel, its context-independent phone scoring in numpy (the reference), and the same scoring as the
ONNX graph a bundle carries (runtime/audio/phonetic.py runs it).

Scoring, for each 100 Hz frame's features x = [c, d, dd] (three 13-d streams): each of the 42
context-independent phones has 3 states; a state's log-likelihood is the sum over the streams of
log sum_g w[state, stream, g] N(x_stream; mu[phone, stream, g], var[phone, stream, g]) (the phone's
128-Gaussian codebook per stream, the state's mixture weights); a phone's score is the log-sum of
its states; the posteriors are softmax(scores / temperature).

The graph stores the Gaussians' quadratic-form weights and the mixture weights in float16 (the
bundle stays small: ~0.7 MB instead of ~2 MB); `ScorerWeights` holds exactly those values, so the
reference and the graph compute the same function (within float32 rounding).
"""
from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embedtalk_sdk.runtime.audio.phonetic import FEATURE_DIM, N_PHONES, SphinxSpec

__all__ = ["PHONES", "AcousticModel", "ScorerWeights", "default_model_dir", "licence_notice",
           "reference_posteriors", "scorer_onnx", "scorer_sha256", "phonetic_scorer"]

# The model's context-independent phones, in the order of its mdef (and of the posteriors).
PHONES = ("+NSN+ +SPN+ AA AE AH AO AW AY B CH D DH EH ER EY F G HH IH IY JH K L M N NG OW OY P R S SH SIL "
          "T TH UH UW V W Y Z ZH").split()
_STATES = 3
_VARIANCE_FLOOR = 1e-4
_STREAM = FEATURE_DIM // 3
# sendump stores mixture weights as -log_b(w) with b = 1.0001 ** (1 << SENSCR_SHIFT = 10).
_SENDUMP_LOG_UNIT = 1024 * np.log(1.0001)


def default_model_dir() -> Path:
    """The en-us model folder inside the installed pocketsphinx wheel (pip install pocketsphinx)."""
    try:
        from pocketsphinx import get_model_path
    except ImportError:
        raise ImportError("the phonetic audio encoder reads the CMU US-English acoustic model from the "
                          "pocketsphinx wheel: pip install 'pocketsphinx==5.1.1' (or the project's [train] extra)") from None
    return Path(get_model_path()) / "en-us" / "en-us"


def licence_notice() -> str:
    """The notices the model's redistribution requires (CMU's licence and Alpha Cephei's)."""
    import pocketsphinx

    dist = Path(pocketsphinx.__file__).resolve().parent
    parts = ["The phonetic audio encoder of this avatar contains parameters of the CMU Sphinx US English "
             "acoustic model (en-us PTM), from the pocketsphinx 5.1.1 wheel, under these licences.\n"]
    readme = default_model_dir() / "README"
    if readme.is_file():
        parts.append(readme.read_text(errors="replace"))
    for licence in sorted(dist.parent.glob("pocketsphinx-*.dist-info/licenses/LICENSE")):
        parts.append(licence.read_text(errors="replace"))
    if len(parts) < 3:
        raise FileNotFoundError(f"{dist}: pocketsphinx's licence files are missing; reinstall pocketsphinx==5.1.1")
    return "\n\n".join(parts)


def _s3_body(path: Path) -> tuple[bytes, int, str]:
    """A sphinx s3 binary file: (bytes, offset of the data after the byte-order magic, byte order)."""
    data = path.read_bytes()
    try:
        off = data.index(b"endhdr\n") + len(b"endhdr\n")
    except ValueError:
        raise ValueError(f"{path}: not a sphinx s3 model file (no header end)") from None
    order = "<" if struct.unpack("<I", data[off : off + 4])[0] == 0x11223344 else ">"
    return data, off + 4, order


def _read_gauden(path: Path) -> np.ndarray:
    """means / variances -> float64 [n_codebooks, n_streams, n_density, veclen]."""
    data, off, bo = _s3_body(path)
    n_mgau, n_feat, n_density = struct.unpack(bo + "3i", data[off : off + 12])
    off += 12
    veclen = struct.unpack(bo + f"{n_feat}i", data[off : off + 4 * n_feat])
    off += 4 * n_feat
    total = struct.unpack(bo + "i", data[off : off + 4])[0]
    off += 4
    if len(set(veclen)) != 1 or total != n_mgau * n_feat * n_density * veclen[0]:
        raise ValueError(f"{path}: unexpected Gaussian layout {n_mgau}x{n_feat}x{n_density}x{veclen}")
    arr = np.frombuffer(data[off : off + 4 * total], dtype=bo + "f4").astype(np.float64)
    return arr.reshape(n_mgau, n_feat, n_density, veclen[0])


def _read_sendump_logs(path: Path, n_streams: int, n_density: int) -> np.ndarray:
    """Natural-log mixture weights [n_streams, n_density, n_senones] of a sendump."""
    data, off = path.read_bytes(), 0

    def int32() -> int:
        nonlocal off
        value = struct.unpack("<i", data[off : off + 4])[0]
        off += 4
        return value

    for _ in range(2):  # title and header strings
        n = int32()
        off += n
    while (n := int32()) != 0:
        off += n
    rows, cols = int32(), int32()
    if rows != n_density:
        raise ValueError(f"{path}: {rows} densities per senone, the codebooks have {n_density}")
    q = np.frombuffer(data[off : off + n_streams * rows * cols], dtype=np.uint8)
    return -q.reshape(n_streams, rows, cols).astype(np.float64) * _SENDUMP_LOG_UNIT


@dataclass(frozen=True)
class AcousticModel:
    """The CI part of the PTM model: means/variances [42, 3 streams, 128, 13], log mixture weights
    of the 126 CI senones [126, 3 streams, 128]."""

    means: np.ndarray
    variances: np.ndarray
    log_weights: np.ndarray

    @classmethod
    def load(cls, model_dir: str | Path | None = None) -> "AcousticModel":
        """Read the model files (default: the pocketsphinx wheel's en-us model)."""
        folder = Path(model_dir) if model_dir is not None else default_model_dir()
        for name in ("means", "variances", "sendump", "feat.params"):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder}: no {name}; the phonetic encoder needs pocketsphinx's en-us model")
        means = _read_gauden(folder / "means")
        variances = np.maximum(_read_gauden(folder / "variances"), _VARIANCE_FLOOR)
        if means.shape != (N_PHONES, 3, 128, _STREAM):
            raise ValueError(f"{folder}: codebooks {means.shape}, expected ({N_PHONES}, 3, 128, {_STREAM})")
        mixw = _read_sendump_logs(folder / "sendump", 3, 128)
        log_weights = np.transpose(mixw[:, :, : N_PHONES * _STATES], (2, 0, 1))
        return cls(means, variances, log_weights)


@dataclass(frozen=True)
class ScorerWeights:
    """What the graph stores, per stream f: `precision[f]` and `mean[f]` float16 [13, 42*128] (the
    codebook Gaussians' inverse variances and means), `bias[f]` float32 [42*128] (their log
    normalisers minus mu'P mu / 2, from the float16 values), `mix[f]` float16 [42, 128, 3]."""

    precision: tuple[np.ndarray, ...]
    mean: tuple[np.ndarray, ...]
    bias: tuple[np.ndarray, ...]
    mix: tuple[np.ndarray, ...]

    @classmethod
    def of(cls, model: AcousticModel) -> "ScorerWeights":
        precision, mean, bias, mix = [], [], [], []
        for f in range(3):
            prec = (1.0 / model.variances[:, f]).reshape(-1, _STREAM).T.astype(np.float16)  # <= 1e4: fits
            mu = model.means[:, f].reshape(-1, _STREAM).T.astype(np.float16)
            p64, m64 = prec.astype(np.float64), mu.astype(np.float64)
            const = 0.5 * np.log(p64 / (2 * np.pi)).sum(0) - 0.5 * (m64 * m64 * p64).sum(0)
            precision.append(prec)
            mean.append(mu)
            bias.append(const.astype(np.float32))
            weights = np.exp(model.log_weights[:, f]).reshape(N_PHONES, _STATES, 128).transpose(0, 2, 1)
            mix.append(weights.astype(np.float16))
        return cls(tuple(precision), tuple(mean), tuple(bias), tuple(mix))

    def quadratic(self, f: int) -> np.ndarray:
        """Stream f's [26, 42*128] weights of [x^2, x]: -P/2 and P mu (float64)."""
        p, m = self.precision[f].astype(np.float64), self.mean[f].astype(np.float64)
        return np.concatenate([-0.5 * p, p * m])


def reference_posteriors(features: np.ndarray, weights: ScorerWeights, temperature: float) -> np.ndarray:
    """The scoring in float64 numpy: features [T, 39] -> phone posteriors [T, 42]."""
    x = np.asarray(features, dtype=np.float64)
    senones = np.zeros((x.shape[0], N_PHONES, _STATES))
    for f in range(3):
        xs = x[:, f * _STREAM : (f + 1) * _STREAM]
        ll = np.concatenate([xs * xs, xs], axis=1) @ weights.quadratic(f) + weights.bias[f]
        ll = ll.reshape(-1, N_PHONES, 128)
        top = ll.max(axis=2, keepdims=True)
        mixed = np.einsum("tpg,pgs->tps", np.exp(ll - top), weights.mix[f].astype(np.float64))
        senones += np.log(np.maximum(mixed, 1e-30)) + top
    top = senones.max(axis=2, keepdims=True)
    phones = (np.log(np.exp(senones - top).sum(axis=2, keepdims=True)) + top)[..., 0] / temperature
    phones -= phones.max(axis=1, keepdims=True)
    post = np.exp(phones)
    return post / post.sum(axis=1, keepdims=True)


def scorer_onnx(weights: ScorerWeights, temperature: float) -> bytes:
    """The scoring as an ONNX graph (opset 18): "features" float32 [T, 39] -> "posteriors" [T, 42].

    Deterministic bytes for the same weights: training records their sha256, export checks it.
    """
    from onnx import TensorProto, helper, numpy_helper

    inits, nodes = [], []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(op: str, inputs: list[str], output: str, **attrs: object) -> str:
        nodes.append(helper.make_node(op, inputs, [output], **attrs))
        return output

    axis1 = const("axis1", np.array([1], np.int64))
    streams = []
    for f, (prec, mean, bias, mix) in enumerate(zip(weights.precision, weights.mean, weights.bias, weights.mix)):
        lo, hi = const(f"lo{f}", np.array([f * _STREAM], np.int64)), const(f"hi{f}", np.array([(f + 1) * _STREAM], np.int64))
        xs = node("Slice", ["features", lo, hi, axis1], f"x{f}")
        aug = node("Concat", [node("Mul", [xs, xs], f"xx{f}"), xs], f"aug{f}", axis=1)
        p32 = node("Cast", [const(f"precision{f}", prec)], f"p32_{f}", to=TensorProto.FLOAT)
        m32 = node("Cast", [const(f"mean{f}", mean)], f"m32_{f}", to=TensorProto.FLOAT)
        half = node("Mul", [p32, const(f"minus_half{f}", np.array(-0.5, np.float32))], f"half{f}")
        quad32 = node("Concat", [half, node("Mul", [p32, m32], f"pm{f}")], f"quad32_{f}", axis=0)
        ll = node("Add", [node("MatMul", [aug, quad32], f"mm{f}"), const(f"bias{f}", bias)], f"ll{f}")
        ll = node("Reshape", [ll, const(f"shape{f}", np.array([-1, N_PHONES, 128], np.int64))], f"llr{f}")
        top = node("ReduceMax", [ll, const(f"ax2_{f}", np.array([2], np.int64))], f"top{f}", keepdims=1)
        ex = node("Exp", [node("Sub", [ll, top], f"d{f}")], f"ex{f}")
        mix32 = node("Cast", [const(f"mix{f}", mix)], f"mix32_{f}", to=TensorProto.FLOAT)
        q = node("MatMul", [node("Transpose", [ex], f"et{f}", perm=[1, 0, 2]), mix32], f"q{f}")  # [42, T, 3]
        q = node("Max", [node("Transpose", [q], f"qt{f}", perm=[1, 0, 2]), const(f"tiny{f}", np.array(1e-30, np.float32))], f"qc{f}")
        streams.append(node("Add", [node("Log", [q], f"lq{f}"), top], f"sen{f}"))  # [T, 42, 3]
    senones = node("Sum", streams, "senones")
    phones = node("ReduceLogSumExp", [senones, const("ax2", np.array([2], np.int64))], "phones", keepdims=0)
    scaled = node("Div", [phones, const("temperature", np.array(temperature, np.float32))], "scaled")
    node("Softmax", [scaled], "posteriors", axis=1)
    graph = helper.make_graph(
        nodes, "phonetic_scorer",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["T", FEATURE_DIM])],
        [helper.make_tensor_value_info("posteriors", TensorProto.FLOAT, ["T", N_PHONES])], inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="embedtalk-sdk")
    model.ir_version = 8
    return model.SerializeToString()


def scorer_sha256(data: bytes) -> str:
    """The sha256 training records for the scorer graph."""
    return hashlib.sha256(data).hexdigest()



def phonetic_scorer(spec: SphinxSpec = SphinxSpec(), model_dir: str | Path | None = None) -> bytes:
    """The scorer graph of the installed (or given) en-us model at spec's temperature."""
    return scorer_onnx(ScorerWeights.of(AcousticModel.load(model_dir)), spec.temperature)
