"""Bad and hostile inputs against a real trained bundle and checkpoint, as a user or an attacker.

    python benchmarks/bad_inputs.py [-o OUT] [--work DIR]

Trains a tiny avatar (the synthetic speaker, 60 steps, as the tests do), then tries every case
below on its bundle, its checkpoint, audio, videos and the command line. Each case says what
should happen ("refuse": a clear error of the SDK's or the OS's kind naming the problem; "accept":
it works and the result is checked), and is scored:

- handled: refused as expected, or accepted with a correct result;
- crashed: an exception of another kind (KeyError, TypeError, MemoryError, a library's own, a CLI
  traceback), or a refusal of something that should have worked;
- silently wrong: accepted but the result is wrong, or accepted what should have been refused;
- hole: read a file the bundle does not list (a canary outside it);
- lost: a failure destroyed or emptied something that existed before.

Prints the table and the counts, writes OUT/bad_inputs.json. Needs the [train] extra (torch) for
the checkpoint cases; about 1-2 minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from stream_latency import tiny_mel_bundle  # noqa: E402

from embedtalk_sdk.runtime.audio.speech import synthesize_speech  # noqa: E402
from embedtalk_sdk.runtime.avatar import Avatar  # noqa: E402
from embedtalk_sdk.runtime.bundle import MANIFEST  # noqa: E402
from embedtalk_sdk.runtime.manifest import seal  # noqa: E402
from embedtalk_sdk.runtime.track import encode_track  # noqa: E402

RATE = 16000
REPO = Path(__file__).resolve().parents[1]
SDK_DIRS = tuple(str(REPO / d) for d in ("runtime", "export", "plugins", "embedtalk_sdk"))


@dataclass
class Case:
    group: str
    name: str
    expect: str  # "refuse" | "accept"
    run: Callable[[], Any]
    check: Callable[[Any], bool] | None = None  # for accepted results: is it right?
    hole: Callable[[], bool] | None = None  # True if a file outside the bundle was read
    lost: Callable[[], bool] | None = None  # True if something that existed is gone/damaged


def deliberate(e: BaseException) -> bool:
    """An error the SDK raised on purpose: a ValueError / OSError / RuntimeError thrown by the SDK's
    own code (not numpy's or a library's from deep inside), or the CLI's one-line error."""
    import traceback

    if not isinstance(e, (ValueError, OSError, RuntimeError)):
        return False
    frames = traceback.extract_tb(e.__traceback__)
    last = frames[-1].filename if frames else ""
    if last == __file__:
        return isinstance(e, ValueError)  # cli(): ValueError = one-line error, RuntimeError = traceback
    return last.startswith(SDK_DIRS)


def classify(case: Case) -> tuple[str, str]:
    """(outcome, what happened)."""
    result, error = None, None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = case.run()
    except Exception as e:  # noqa: BLE001 - this is what the suite looks for
        if not deliberate(e):
            return "crashed", f"{type(e).__name__}: {' '.join(str(e).split())[:120]}"
        error = e
    if case.lost is not None and case.lost():
        return "lost", f"{'refused' if error else 'accepted'}, but data was lost"
    if case.hole is not None and case.hole():
        return "hole", "read a file the bundle does not list"
    if error is not None:
        text = " ".join(str(error).split())[:140]
        return ("handled", f"refused: {text}") if case.expect == "refuse" else ("crashed", f"wrongly refused: {text}")
    if case.expect == "refuse":
        return "silently wrong", f"accepted: {_describe(result)}"
    if case.check is not None and not case.check(result):
        return "silently wrong", f"accepted, wrong result: {_describe(result)}"
    return "handled", f"accepted: {_describe(result)}"


def _describe(result: Any) -> str:
    if isinstance(result, np.ndarray):
        return f"array {result.dtype} {result.shape}"
    return str(result)[:80]


# ---------------------------------------------------------------------------------------- helpers


class Work:
    """The base bundle and checkpoint, and fresh copies to damage."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.bundle = tiny_mel_bundle(root / "base")
        self.ckpt = root / "base" / "run" / "ckpt.pt"
        self.data = root / "base" / "data"
        self.audio = synthesize_speech(1.2, seed=3).samples
        self.avatar = Avatar.load(self.bundle, backend="onnxruntime")
        self.reference = self.avatar.speak(self.audio, sample_rate=RATE)
        self._n = 0

    def fresh(self, suffix: str = ".etk") -> Path:
        self._n += 1
        dst = self.root / "cases" / f"{self._n:03d}{suffix}"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(self.bundle, dst)
        return dst

    def path(self, name: str) -> Path:
        self._n += 1
        p = self.root / "cases" / f"{self._n:03d}-{name}"
        p.parent.mkdir(parents=True, exist_ok=True)
        return p


def manifest_of(b: Path) -> dict:
    return json.loads((b / MANIFEST).read_text())


def write_manifest(b: Path, m: dict, reseal: bool = True) -> None:
    (b / MANIFEST).write_text(json.dumps(seal(m) if reseal else m, indent=1))


def edit_manifest(b: Path, fn: Callable[[dict], None], reseal: bool = True) -> Path:
    m = manifest_of(b)
    fn(m)
    write_manifest(b, m, reseal)
    return b


def replace_file(b: Path, rel: str, data: bytes, extra: Callable[[dict], None] | None = None) -> Path:
    """Put `data` at `rel` with a matching hash table entry and a valid digest: only deeper checks can see it."""
    import hashlib

    (b / rel).parent.mkdir(parents=True, exist_ok=True)
    (b / rel).write_bytes(data)
    m = manifest_of(b)
    m["files"][rel] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    if extra:
        extra(m)
    write_manifest(b, m)
    return b


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


def play(b: Path, audio: np.ndarray | None = None) -> np.ndarray:
    avatar = Avatar.load(b, backend="onnxruntime")
    return avatar.speak(synthesize_speech(0.4, seed=1).samples if audio is None else audio, sample_rate=RATE)


def wav(path: Path, x: np.ndarray, rate: int = RATE, subtype: str | None = None) -> Path:
    import soundfile as sf

    sf.write(path, x, rate, subtype=subtype)
    return path


# ---------------------------------------------------------------------------------------- cases


def bundle_cases(w: Work) -> list[Case]:
    cases: list[Case] = []

    def refuse(name: str, make: Callable[[], Path], **kw) -> None:
        cases.append(Case("bundle", name, "refuse", lambda: play(make()), **kw))

    def accept(name: str, make: Callable[[], Path], check=None) -> None:
        cases.append(Case("bundle", name, "accept", lambda: play(make()), check))

    ok_shape = lambda v: isinstance(v, np.ndarray) and v.shape[0] == 10  # noqa: E731
    refuse("no such path", lambda: w.root / "none.etk")
    refuse("empty folder", lambda: (w.path("empty.etk").mkdir() or w.root / "cases" / f"{w._n:03d}-empty.etk"))
    refuse("a text file", lambda: (lambda p: (p.write_text("hello"), p)[1])(w.path("a.etk")))
    refuse("empty file", lambda: (lambda p: (p.write_bytes(b""), p)[1])(w.path("b.zip")))
    refuse("empty zip", lambda: (lambda p: (zipfile.ZipFile(p, "w").close(), p)[1])(w.path("c.zip")))

    def zip_of(b: Path, extra: dict[str, bytes] | None = None) -> Path:
        p = b.with_suffix(".zip")
        with zipfile.ZipFile(p, "w") as zf:
            for f in sorted(b.rglob("*")):
                if f.is_file():
                    zf.write(f, f.relative_to(b).as_posix())
            for name, data in (extra or {}).items():
                zf.writestr(name, data)
        return p

    refuse("zip without manifest", lambda: (lambda b: ((b / MANIFEST).unlink(), zip_of(b))[1])(w.fresh()))
    accept("zip of a good bundle", lambda: zip_of(w.fresh()), ok_shape)
    canary = w.root / "evil-from-zip.txt"
    cases.append(Case("bundle", "zip with a ../ member (zip-slip)", "accept",
                      lambda: play(zip_of(w.fresh(), {"../../evil-from-zip.txt": b"x"})), ok_shape,
                      hole=lambda: canary.exists()))
    accept("an extra unlisted file", lambda: (lambda b: ((b / "notes.txt").write_text("x"), b)[1])(w.fresh()), ok_shape)
    refuse("manifest not JSON", lambda: (lambda b: ((b / MANIFEST).write_text("{nope"), b)[1])(w.fresh()))
    refuse("manifest is a JSON list", lambda: (lambda b: ((b / MANIFEST).write_text("[1]"), b)[1])(w.fresh()))
    refuse("manifest is {}", lambda: (lambda b: ((b / MANIFEST).write_text("{}"), b)[1])(w.fresh()))
    refuse("manifest not UTF-8", lambda: (lambda b: ((b / MANIFEST).write_bytes(b"\xff\xfe{"), b)[1])(w.fresh()))
    refuse("format name wrong", lambda: edit_manifest(w.fresh(), lambda m: m.update(format="other")))
    refuse("format_version 1", lambda: edit_manifest(w.fresh(), lambda m: m.update(format_version=1)))
    refuse("format_version 99", lambda: edit_manifest(w.fresh(), lambda m: m.update(format_version=99)))
    refuse("format_version '2'", lambda: edit_manifest(w.fresh(), lambda m: m.update(format_version="2")))
    refuse("format_version true", lambda: edit_manifest(w.fresh(), lambda m: m.update(format_version=True)))
    refuse("digest removed", lambda: edit_manifest(w.fresh(), lambda m: m.pop("manifest_sha256"), reseal=False))
    refuse("fps 25 -> 35, digest not updated", lambda: edit_manifest(w.fresh(), lambda m: m.update(fps=35.0), False))
    refuse("K digit changed, digest not updated",
           lambda: edit_manifest(w.fresh(), lambda m: m["K"][0].__setitem__(0, m["K"][0][0] - 100), False))
    refuse("NaN in the manifest", lambda: (lambda b: ((b / MANIFEST).write_text(
        (b / MANIFEST).read_text().replace('"fps": 25.0', '"fps": NaN')), b)[1])(w.fresh()))
    refuse("files table missing", lambda: edit_manifest(w.fresh(), lambda m: m.pop("files")))
    refuse("files entry without sha256", lambda: edit_manifest(w.fresh(), lambda m: m["files"]["means.npy"].pop("sha256")))
    refuse("listed file missing", lambda: (lambda b: ((b / "means.npy").unlink(), b)[1])(w.fresh()))

    def flip(b: Path, rel: str) -> Path:
        data = bytearray((b / rel).read_bytes())
        data[len(data) // 2] ^= 0x40
        (b / rel).write_bytes(bytes(data))
        return b

    refuse("flipped byte in means.npy", lambda: flip(w.fresh(), "means.npy"))
    refuse("flipped byte in deform.onnx", lambda: flip(w.fresh(), "deform.onnx"))
    refuse("flipped byte in torso_bg.mp4", lambda: flip(w.fresh(), "torso_bg.mp4"))
    refuse("truncated deform.onnx", lambda: (lambda b: ((b / "deform.onnx").write_bytes(
        (b / "deform.onnx").read_bytes()[:-10]), b)[1])(w.fresh()))
    for rel in ("../outside.npy", "/etc/passwd", "sub\\file.npy", "./means.npy"):
        refuse(f"files lists {rel!r}",
               lambda rel=rel: edit_manifest(w.fresh(), lambda m: m["files"].__setitem__(rel, {"sha256": "0" * 64, "bytes": 1})))
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (10**12, 3)})
    refuse("npy header declares 1e12 Gaussians", lambda: replace_file(w.fresh(), "means.npy", header.getvalue() + b"\0" * 64))
    refuse("npy of Python objects (pickle)", lambda: replace_file(w.fresh(), "means.npy", npy_bytes(np.array([object()] * 3))))
    refuse("means.npy [N, 2]", lambda: (lambda b: replace_file(b, "means.npy", npy_bytes(np.load(b / "means.npy")[:, :2])))(w.fresh()))
    refuse("means.npy with NaN", lambda: (lambda b: replace_file(b, "means.npy", npy_bytes(
        np.where(np.arange(len(np.load(b / "means.npy")))[:, None] == 3, np.nan, np.load(b / "means.npy")).astype(np.float32))))(w.fresh()))
    refuse("colors.npy int64", lambda: (lambda b: replace_file(b, "colors.npy", npy_bytes(
        np.zeros(np.load(b / "colors.npy").shape, np.int64))))(w.fresh()))
    refuse("viewmats.npy [K, 3, 4]", lambda: (lambda b: replace_file(b, "viewmats.npy", npy_bytes(np.load(b / "viewmats.npy")[:, :3])))(w.fresh()))
    refuse("viewmats.npy with Inf", lambda: (lambda b: replace_file(b, "viewmats.npy", npy_bytes(
        np.full(np.load(b / "viewmats.npy").shape, np.inf, np.float32))))(w.fresh()))
    refuse("deform.onnx is garbage", lambda: replace_file(w.fresh(), "deform.onnx", os.urandom(5000)))
    refuse("deform.onnx is empty", lambda: replace_file(w.fresh(), "deform.onnx", b""))
    secret = w.root / "cwd" / "secret.bin"

    def external(location: str) -> Path:
        import onnx

        b = w.fresh()
        model = onnx.load_from_string((b / "deform.onnx").read_bytes())
        table = next(t for t in model.graph.initializer if t.name == "gaussian_table")
        from onnx import numpy_helper

        data = numpy_helper.to_array(table).tobytes()
        secret.parent.mkdir(exist_ok=True)
        secret.write_bytes(data)
        table.ClearField("raw_data")
        table.data_location = onnx.TensorProto.EXTERNAL
        for k, v in (("location", location), ("offset", "0"), ("length", str(len(data)))):
            table.external_data.append(onnx.StringStringEntryProto(key=k, value=v))
        return replace_file(b, "deform.onnx", model.SerializeToString())

    def in_cwd(fn: Callable[[], Any]) -> Any:
        secret.parent.mkdir(exist_ok=True)
        old = os.getcwd()
        os.chdir(secret.parent)
        try:
            return fn()
        finally:
            os.chdir(old)

    cases.append(Case("bundle", "deform.onnx with external data in $CWD/secret.bin", "refuse",
                      lambda: in_cwd(lambda: play(external("secret.bin")))))
    cases.append(Case("bundle", "deform.onnx with external data at an absolute path", "refuse",
                      lambda: play(external(str(secret)))))

    def renamed_input() -> Path:
        import onnx

        b = w.fresh()
        model = onnx.load_from_string((b / "deform.onnx").read_bytes())
        model.graph.input[1].name = "au_values"
        for node in model.graph.node:
            node.input[:] = ["au_values" if i == "aus" else i for i in node.input]
        return replace_file(b, "deform.onnx", model.SerializeToString())

    refuse("deform.onnx with a renamed input", renamed_input)

    def other_model() -> Path:  # a valid graph for fewer Gaussians than the manifest says
        import onnx

        b = w.fresh()
        model = onnx.load_from_string((b / "deform.onnx").read_bytes())
        from onnx import numpy_helper

        table = next(t for t in model.graph.initializer if t.name == "gaussian_table")
        half = numpy_helper.to_array(table)[:10]
        table.CopyFrom(numpy_helper.from_array(half, "gaussian_table"))
        return replace_file(b, "deform.onnx", model.SerializeToString())

    refuse("deform.onnx for other Gaussians", other_model)
    g = lambda **kw: lambda: edit_manifest(w.fresh(), lambda m: m["gaussians"].update(**kw))  # noqa: E731
    refuse("gaussians.count one too many", lambda: edit_manifest(w.fresh(), lambda m: m["gaussians"].update(count=m["gaussians"]["count"] + 1)))
    refuse("gaussians.count 1e12", g(count=10**12))
    refuse("gaussians.count 0", g(count=0))
    refuse("gaussians.count '300'", g(count="300"))
    top = lambda **kw: lambda: edit_manifest(w.fresh(), lambda m: m.update(**kw))  # noqa: E731
    for name, kw in [("fps 0", {"fps": 0}), ("fps -25", {"fps": -25}), ("fps 1e9", {"fps": 1e9}), ("fps '25'", {"fps": "25"}),
                     ("width 0", {"width": 0}), ("width 1e6", {"width": 10**6}), ("height 'x'", {"height": "x"}),
                     ("height 64.5", {"height": 64.5}), ("K 2x3", {"K": [[1, 0, 1], [0, 1, 1]]}),
                     ("K fx negative", {"K": [[-50, 0, 32], [0, 50, 32], [0, 0, 1]]}),
                     ("K principal point outside", {"K": [[50, 0, 900], [0, 50, 32], [0, 0, 1]]}),
                     ("engines not a list", {"engines": {"x": 1}}), ("audio block missing", {"audio": None}),
                     ("aus block a string", {"aus": "AU01"})]:
        refuse(f"manifest {name}", top(**kw))
    a = lambda **kw: lambda: edit_manifest(w.fresh(), lambda m: m["aus"].update(**kw))  # noqa: E731
    refuse("aus.neutral 5 entries", a(neutral=[0.1] * 5))
    refuse("aus.neutral 99", a(neutral=[99.0] * 6))
    refuse("aus.blink_peak -1", a(blink_peak=-1))
    refuse("aus without blink rate or period", lambda: edit_manifest(w.fresh(), lambda m: [m["aus"].pop(k, None) for k in ("blink_rate_hz", "blink_period_s")]))
    refuse("aus.names reordered", a(names=["AU45", "AU04", "AU05", "AU06", "AU07", "AU01"]))
    au = lambda **kw: lambda: edit_manifest(w.fresh(), lambda m: m["audio"].update(**kw))  # noqa: E731
    refuse("audio.encoder 'wav2vec'", au(encoder="wav2vec"))
    refuse("audio.window 0", au(window=0))
    refuse("audio.feature_dim 16 (graph has 32)", au(feature_dim=16))
    refuse("audio.n_mels 0", au(n_mels=0))
    refuse("audio.hop -1", au(hop=-1))
    t = lambda fn: lambda: edit_manifest(w.fresh(), fn)  # noqa: E731
    refuse("tracks.frames 0", t(lambda m: m["tracks"].update(frames=0)))
    refuse("tracks.frames != viewmats rows", t(lambda m: m["tracks"].update(frames=m["tracks"]["frames"] + 1)))
    refuse("tracks.torso missing", t(lambda m: m["tracks"].pop("torso")))
    refuse("tracks.torso codec 'vp9'", t(lambda m: m["tracks"]["torso"].update(codec="vp9")))
    refuse("tracks.torso file '../x.mp4'", t(lambda m: m["tracks"]["torso"].update(file="../x.mp4")))
    refuse("tracks.torso file unlisted", t(lambda m: m["tracks"]["torso"].update(file="other.mp4")))
    refuse("tracks.torso_frames + 1", t(lambda m: m["tracks"].update(torso_frames=m["tracks"]["torso_frames"] + 1)))
    refuse("torso_bg.mp4 is garbage", lambda: replace_file(w.fresh(), "torso_bg.mp4", os.urandom(4000)))
    refuse("torso_bg.mp4 truncated", lambda: (lambda b: replace_file(b, "torso_bg.mp4", (b / "torso_bg.mp4").read_bytes()[:300]))(w.fresh()))
    refuse("torso_bg.mp4 at another size", lambda: (lambda b: replace_file(b, "torso_bg.mp4", encode_track(
        np.zeros((manifest_of(b)["tracks"]["torso_frames"], 32, 48, 3), np.uint8))))(w.fresh()))
    return cases


def audio_cases(w: Work) -> list[Case]:
    cases: list[Case] = []
    av_ = w.avatar
    x = w.audio
    n_ref = len(w.reference)
    same = lambda v: isinstance(v, np.ndarray) and np.array_equal(v, w.reference)  # noqa: E731
    count = lambda n: (lambda v: isinstance(v, np.ndarray) and v.shape[0] == n)  # noqa: E731

    def refuse(name: str, fn: Callable[[], Any], **kw) -> None:
        cases.append(Case("audio", name, "refuse", fn, **kw))

    def accept(name: str, fn: Callable[[], Any], check=None) -> None:
        cases.append(Case("audio", name, "accept", fn, check))

    speak_file = lambda p: (lambda: av_.speak(p() if callable(p) else p))  # noqa: E731
    refuse("missing file", speak_file(w.root / "none.wav"))
    refuse("a folder", speak_file(w.root))
    refuse("empty file", speak_file(lambda: (lambda p: (p.write_bytes(b""), p)[1])(w.path("e.wav"))))
    refuse("text file named .wav", speak_file(lambda: (lambda p: (p.write_text("RIFF? no"), p)[1])(w.path("t.wav"))))
    refuse("wav header only", speak_file(lambda: (lambda p: (p.write_bytes(wav(w.path("h0.wav"), x).read_bytes()[:44]), p)[1])(w.path("h.wav"))))
    refuse("truncated wav (half the data)", speak_file(lambda: (lambda src, p: (p.write_bytes(src.read_bytes()[: src.stat().st_size // 2]), p)[1])(
        wav(w.path("full.wav"), x, subtype="PCM_16"), w.path("half.wav"))))
    refuse("wav of 0 frames", speak_file(lambda: wav(w.path("z.wav"), np.zeros(0, np.float32))))
    refuse("10 ms wav", speak_file(lambda: wav(w.path("ten.wav"), x[:160])))
    refuse("float wav with NaN", speak_file(lambda: wav(w.path("nan.wav"), np.where(np.arange(len(x)) == 500, np.nan, x).astype(np.float32), subtype="FLOAT")))
    refuse("float wav with Inf", speak_file(lambda: wav(w.path("inf.wav"), np.where(np.arange(len(x)) == 500, np.inf, x).astype(np.float32), subtype="FLOAT")))
    from embedtalk_sdk.runtime.audio.io import prepare_audio  # resampling as speak does it

    for rate in (8000, 22050, 44100, 48000):
        accept(f"{rate} Hz wav (resampled)", speak_file(lambda rate=rate: wav(w.path(f"r{rate}.wav"), prepare_audio(x, RATE, rate), rate)), count(n_ref))
    accept("stereo wav (downmixed)", speak_file(lambda: wav(w.path("st.wav"), np.stack([x, x], 1))), count(n_ref))
    accept("6-channel wav", speak_file(lambda: wav(w.path("six.wav"), np.repeat(x[:, None], 6, 1))), count(n_ref))
    accept("24-bit wav", speak_file(lambda: wav(w.path("p24.wav"), x, subtype="PCM_24")), count(n_ref))
    accept("flac", speak_file(lambda: wav(w.path("a.flac"), x)), count(n_ref))

    def mp4_with_audio(with_audio: bool) -> Path:
        from embedtalk_sdk.runtime.video import write_mp4

        p = w.path("v.mp4")
        write_mp4(p, [np.zeros((32, 32, 3), np.uint8)] * 30, audio=x if with_audio else None)
        return p

    accept("mp4 with an AAC track", speak_file(lambda: mp4_with_audio(True)), lambda v: abs(v.shape[0] - n_ref) <= 2)
    refuse("mp4 without audio", speak_file(lambda: mp4_with_audio(False)))
    arr = lambda a, rate=RATE: (lambda: av_.speak(a, sample_rate=rate))  # noqa: E731
    accept("int16 array", arr((x * 32767).astype(np.int16)), count(n_ref))
    accept("int32 array", arr((x * 2**31 * 0.99).astype(np.int32)), count(n_ref))
    accept("uint8 array", arr(((x + 1) * 127.5).astype(np.uint8)), count(n_ref))
    accept("float64 array", arr(x.astype(np.float64)), lambda v: np.abs(v.astype(int) - w.reference).max() <= 1)
    accept("[S, 2] array (downmixed)", arr(np.stack([x, x], 1)), same)
    accept("loud floats (peak 3)", arr(x * 3), count(n_ref))
    refuse("array without sample_rate", lambda: av_.speak(x))
    refuse("file with sample_rate", lambda: av_.speak(wav(w.path("sr.wav"), x), sample_rate=RATE))
    refuse("sample_rate 0", arr(x, 0))
    refuse("sample_rate -16000", arr(x, -16000))
    refuse("sample_rate 16000.5", arr(x, 16000.5))
    refuse("3-D array", arr(x.reshape(1, -1, 1)))
    refuse("empty array", arr(np.zeros(0, np.float32)))
    refuse("NaN array", arr(np.full(16000, np.nan, np.float32)))
    refuse("Inf array", arr(np.where(np.arange(len(x)) == 9, np.inf, x)))
    refuse("complex array", arr(x.astype(np.complex64)))
    refuse("bool array", arr(x > 0))
    refuse("string array", arr(np.array(["a", "b"])))
    refuse("None audio without features", lambda: av_.speak(None))
    chunks = [x[i:i + 320] for i in range(0, len(x), 320)]
    stream = lambda cs, **kw: (lambda: np.stack(list(av_.stream(cs, **kw))))  # noqa: E731
    accept("stream of 20 ms chunks", stream(chunks), same)
    accept("stream with empty chunks between", stream([c for ch in chunks for c in (ch, x[:0])]), same)
    pcm = (x * 32767).astype(np.int16)
    accept("stream of int16 chunks == speak of them", stream([pcm[i:i + 320] for i in range(0, len(pcm), 320)]),
           lambda v: np.array_equal(v, av_.speak(pcm, sample_rate=RATE)))
    accept("stream of loud floats == speak", stream([c * 3 for c in chunks]),
           lambda v: np.array_equal(v, av_.speak(x * 3, sample_rate=RATE)))
    refuse("stream chunk with NaN", stream(chunks[:5] + [np.full(320, np.nan, np.float32)] + chunks[5:]))
    refuse("stream chunk with Inf", stream(chunks[:5] + [np.full(320, np.inf, np.float32)] + chunks[5:]))
    refuse("stream int32 chunk", stream([c.astype(np.int32) for c in chunks]))
    refuse("stream 2-D chunk", stream([np.stack([c, c], 1) for c in chunks]))
    refuse("stream at 8 kHz", stream(chunks, sample_rate=8000))
    accept("stream of nothing", lambda: list(av_.stream([])), lambda v: v == [])
    feats = av_.audio_features(x, RATE)
    refuse("features of the wrong width", lambda: av_.speak(None, features=feats[:, :5]))
    refuse("features with NaN", lambda: av_.speak(None, features=np.where(feats > 0, np.nan, feats)))
    # T = round(M * fps / rate), ties up (docs/interfaces.md): 61 rows of a 1.2 s clip -> 31 frames
    accept("features instead of audio", lambda: av_.speak(None, features=feats),
           lambda v: v.shape[0] == (2 * len(feats) * int(av_.fps) + 50) // 100)
    refuse("aus [T, 5]", lambda: av_.speak(x, sample_rate=RATE, aus=np.zeros((n_ref, 5))))
    refuse("aus with too few rows", lambda: av_.speak(x, sample_rate=RATE, aus=np.zeros((3, 6))))
    refuse("aus with NaN", lambda: av_.speak(x, sample_rate=RATE, aus=np.full(6, np.nan)))
    refuse("out= in a missing folder", lambda: av_.speak(x, sample_rate=RATE, out=w.root / "no" / "x.mp4"))
    refuse("out= is a folder", lambda: av_.speak(x, sample_rate=RATE, out=w.root))
    keep = w.path("keep.mp4")

    def overwrite_with_bad_audio() -> Any:
        keep.write_bytes(b"the user's earlier video")
        return av_.speak(np.full(16000, np.nan, np.float32), sample_rate=RATE, out=keep)

    refuse("failing speak over an existing mp4", overwrite_with_bad_audio,
           lost=lambda: keep.read_bytes() != b"the user's earlier video")

    def two_clips() -> Any:
        first = av_.frames(x, sample_rate=RATE)
        next(first)
        try:
            return av_.speak(x, sample_rate=RATE)
        finally:
            first.close()

    refuse("a second clip while one renders", two_clips)

    def two_threads() -> Any:
        errors: list[BaseException] = []
        out: list[np.ndarray] = []
        gate = threading.Event()

        def other() -> None:
            gate.wait()
            try:
                out.append(av_.speak(x, sample_rate=RATE))
            except RuntimeError as e:
                errors.append(e)

        th = threading.Thread(target=other)
        th.start()
        frames = av_.frames(x, sample_rate=RATE)
        got = [next(frames)]
        gate.set()
        th.join()
        got += list(frames)
        if errors:
            raise errors[0]
        return np.stack(got)

    refuse("one Avatar from two threads", two_threads)
    return cases


def checkpoint_cases(w: Work) -> list[Case]:
    import torch

    from embedtalk_sdk.export.exporter import export_bundle

    cases: list[Case] = []

    def export(p: Path) -> Path:
        return export_bundle(p, w.path("out.etk"), w.data, log=lambda m: None)

    def ckpt_edit(fn: Callable[[dict], None]) -> Callable[[], Path]:
        def make() -> Path:
            payload = torch.load(w.ckpt, weights_only=True)
            fn(payload)
            p = w.path("c.pt")
            torch.save(payload, p)
            return export(p)

        return make

    def raw(data: bytes) -> Callable[[], Path]:
        return lambda: export((lambda p: (p.write_bytes(data), p)[1])(w.path("r.pt")))

    refuse = lambda name, fn, **kw: cases.append(Case("checkpoint", name, "refuse", fn, **kw))  # noqa: E731
    refuse("missing checkpoint", lambda: export(w.root / "none.pt"))
    refuse("empty file", raw(b""))
    refuse("random bytes", raw(os.urandom(3000)))
    refuse("truncated", raw(w.ckpt.read_bytes()[: w.ckpt.stat().st_size // 2]))

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(w.root / "pwned"),))

    def pickled() -> Path:
        p = w.path("evil.pt")
        torch.save({"format": "embedtalk-checkpoint", "x": Evil()}, p)
        return export(p)

    refuse("pickle with __reduce__", pickled, hole=lambda: (w.root / "pwned").exists())
    refuse("a plain tensor", lambda: export((lambda p: (torch.save(torch.zeros(3), p), p)[1])(w.path("t.pt"))))
    refuse("wrong format name", ckpt_edit(lambda p: p.update(format="other")))
    refuse("version 99", ckpt_edit(lambda p: p.update(version=99)))
    refuse("means [N, 2]", ckpt_edit(lambda p: p["gaussians"].update(means=p["gaussians"]["means"][:, :2])))
    refuse("sh0 with 100 rows", ckpt_edit(lambda p: p["gaussians"].update(sh0=torch.zeros(100, 3))))
    refuse("NaN in log_scales", ckpt_edit(lambda p: p["gaussians"]["log_scales"].fill_(float("nan"))))
    refuse("no meta", ckpt_edit(lambda p: p.pop("meta")))
    refuse("no gaussians", ckpt_edit(lambda p: p.pop("gaussians")))
    refuse("meta without K", ckpt_edit(lambda p: p.update(meta=json.dumps({k: v for k, v in json.loads(p["meta"]).items() if k != "K"}))))
    refuse("network weight of another shape", ckpt_edit(lambda p: p["deform"].update(
        {next(k for k in p["deform"] if k.endswith("weight")): torch.zeros(2, 2)})))
    refuse("network config not JSON", ckpt_edit(lambda p: p.update(deform_config="{")))
    refuse("dataset folder gone", lambda: export_bundle(w.ckpt, w.path("o.etk"), w.root / "no-data", log=lambda m: None))
    folder = w.path("users-folder.etk")

    def over_user_folder() -> Path:
        folder.mkdir()
        (folder / "thesis.txt").write_text("years of work")
        return export_bundle(w.ckpt, folder, w.data, log=lambda m: None)

    refuse("export over a folder that is not a bundle", over_user_folder,
           lost=lambda: not (folder / "thesis.txt").is_file() or (folder / "thesis.txt").read_text() != "years of work")
    return cases


def video_cases(w: Work) -> list[Case]:
    from embedtalk_sdk.preprocess.preprocess import decode_video
    from embedtalk_sdk.runtime.video import write_mp4

    cases: list[Case] = []
    yy, xx = np.mgrid[0:48, 0:64]
    frames = [np.stack([(xx + 5 * k) % 256, yy * 3 % 256, np.full_like(xx, 90)], -1).astype(np.uint8) for k in range(50)]
    whole = w.path("whole.mp4")
    write_mp4(whole, frames, audio=w.audio)
    decode = lambda make: (lambda: decode_video(make(), w.path("ds"), 90, None))  # noqa: E731
    put = lambda data: (lambda: (lambda p: (p.write_bytes(data), p)[1])(w.path("v.mp4")))  # noqa: E731
    refuse = lambda name, fn: cases.append(Case("video", name, "refuse", fn))  # noqa: E731
    refuse("missing video", decode(lambda: w.root / "none.mp4"))
    refuse("empty video file", decode(put(b"")))
    refuse("random bytes", decode(put(os.urandom(20000))))
    refuse("mp4 cut at half (faststart)", decode(put(whole.read_bytes()[: whole.stat().st_size // 2])))
    refuse("mp4 header only", decode(put(whole.read_bytes()[:3000])))
    refuse("audio-only file", decode(lambda: wav(w.path("a.wav"), w.audio)))
    cases.append(Case("video", "a good 2 s mp4", "accept", decode(lambda: whole), lambda info: info.frames == 50))
    return cases


def cli_cases(w: Work) -> list[Case]:
    from typer.testing import CliRunner

    from embedtalk_sdk.cli import app

    good_wav = wav(w.path("hello.wav"), w.audio)

    def cli(*args: str) -> Callable[[], Any]:
        def run() -> Any:
            res = CliRunner().invoke(app, list(args))
            lines = res.output.strip().splitlines()
            if res.exit_code == 0:
                return "exit 0"
            if "Traceback" in res.output or not lines or not lines[-1].startswith("error:"):
                raise RuntimeError(f"CLI exit {res.exit_code} without a one-line error: {res.output[-200:]!r} {res.exception!r}")
            raise ValueError(lines[-1])

        return run

    cases = []
    for name, args in [
        ("speak: no such bundle", ("speak", str(w.root / "none.etk"), str(good_wav))),
        ("speak: not a wav", ("speak", str(w.bundle), str(w.bundle / MANIFEST))),
        ("speak: -o in a missing folder", ("speak", str(w.bundle), str(good_wav), "-o", str(w.root / "no" / "x.mp4"))),
        ("speak: -o is a folder", ("speak", str(w.bundle), str(good_wav), "-o", str(w.root))),
        ("speak: unknown backend", ("speak", str(w.bundle), str(good_wav), "--backend", "quantum")),
        ("export: junk checkpoint", ("export", str(good_wav), "-o", str(w.path("x.etk")))),
        ("export: no such checkpoint", ("export", str(w.root / "none.pt"), "-o", str(w.path("y.etk")))),
        ("bench: no such bundle", ("bench", str(w.root / "none.etk"))),
        ("eval: bundle without --data", ("eval", str(w.bundle))),
        ("eval: no such model", ("eval", str(w.root / "none.pt"))),
        ("train: no such dataset", ("train", str(w.root / "none"), "-o", str(w.path("run")))),
        ("train: a file as dataset", ("train", str(good_wav), "-o", str(w.path("run")))),
        ("preprocess: not a video", ("preprocess", str(good_wav), "-o", str(w.path("pp")))),
    ]:
        cases.append(Case("cli", name, "refuse", cli(*args)))
    return cases


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", "--out", type=Path, default=Path("bad_inputs_out"))
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    root = args.work or Path(tempfile.mkdtemp(prefix="embedtalk-bad-"))
    t0 = time.perf_counter()
    print(f"training the tiny avatar in {root} ...", flush=True)
    w = Work(root)
    cases = bundle_cases(w) + audio_cases(w) + checkpoint_cases(w) + video_cases(w) + cli_cases(w)
    rows = []
    for case in cases:
        outcome, detail = classify(case)
        rows.append({"group": case.group, "case": case.name, "expected": case.expect, "outcome": outcome, "what": detail})
    counts = {k: sum(r["outcome"] == k for r in rows) for k in ("handled", "crashed", "silently wrong", "hole", "lost")}
    width = max(len(r["case"]) for r in rows)
    print(f"\n{'group':<10} {'case':<{width}} {'expected':<8} {'outcome':<14} what happened")
    for r in rows:
        print(f"{r['group']:<10} {r['case']:<{width}} {r['expected']:<8} {r['outcome']:<14} {r['what']}")
    print(f"\ntried {len(rows)}: " + ", ".join(f"{v} {k}" for k, v in counts.items()) + f"  ({time.perf_counter() - t0:.0f} s)")
    (args.out / "bad_inputs.json").write_text(json.dumps({"counts": {"tried": len(rows), **counts}, "cases": rows}, indent=1))
    if args.work is None:
        shutil.rmtree(root, ignore_errors=True)
    sys.exit(0 if counts["handled"] == len(rows) else 1)


if __name__ == "__main__":
    main()
