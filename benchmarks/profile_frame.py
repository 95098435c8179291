"""Where a frame's time goes, per stage, on the CPU backend: `embedtalk-sdk bench --profile`'s table
(runtime/bench.py:profile_backend) plus what `serve` adds per frame: the WebRTC video encode
(VP8 through aiortc's encoder, as the server sends it; H.264 through PyAV's libx264 for
comparison) and the Opus encode of the frame's 40 ms of sound. Needs the serve extra for VP8/Opus.

    python benchmarks/profile_frame.py A.etk [B.etk ...] [--frames 200] [-o profile.json]

Wall ms are this process's; on a busy machine read the CPU ms (all threads' CPU time per frame).
Left out: RTP packetisation + SRTP and the network (aiortc's sender; small next to the encode)."""
from __future__ import annotations

import argparse
import fractions
import json
import time
from pathlib import Path

import numpy as np

from embedtalk_sdk.runtime.avatar import Avatar
from embedtalk_sdk.runtime.audio.speech import synthesize_speech
from embedtalk_sdk.runtime.bench import format_profile, profile_backend


def _timed(fn, items: list) -> tuple[float, float]:
    """(wall ms, CPU ms) per item of fn(item)."""
    w, c = time.perf_counter(), time.process_time()
    for item in items:
        fn(item)
    n = len(items)
    return (time.perf_counter() - w) * 1e3 / n, (time.process_time() - c) * 1e3 / n


def encode_costs(bundle: str | Path, n_frames: int = 100) -> dict:
    """ms per frame of the serve path's encoders on this avatar's own frames."""
    import av

    avatar = Avatar.load(bundle, backend="onnxruntime")
    audio = synthesize_speech(n_frames / avatar.fps + 0.1, seed=3).samples
    frames = list(avatar.frames(audio, sample_rate=16000))[:n_frames]
    out: dict[str, list[float]] = {}
    try:
        from aiortc.codecs import get_encoder
        from aiortc.rtcrtpparameters import RTCRtpCodecParameters
    except ImportError:
        get_encoder = None
    if get_encoder is not None:
        vp8 = get_encoder(RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000))
        first = [True]

        def send_vp8(item: tuple[int, np.ndarray]) -> None:
            n, frame = item
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
            vf.pts, vf.time_base = int(round(n * 90000 / avatar.fps)), fractions.Fraction(1, 90000)
            vp8.encode(vf, first[0])
            first[0] = False

        send_vp8((0, frames[0]))  # the encoder opens on its first frame
        out["video encode VP8 (aiortc)"] = list(_timed(send_vp8, list(enumerate(frames))[1:]))
        opus = get_encoder(RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2))
        per_frame = int(round(16000 / avatar.fps))
        chunks = [audio[i * per_frame:(i + 1) * per_frame] for i in range(len(frames))]

        def send_opus(item: tuple[int, np.ndarray]) -> None:
            n, chunk = item
            pcm = np.clip(np.round(chunk * 32767), -32768, 32767).astype(np.int16)
            af = av.AudioFrame.from_ndarray(pcm[None], format="s16", layout="mono")
            af.sample_rate, af.pts, af.time_base = 16000, n * per_frame, fractions.Fraction(1, 16000)
            opus.encode(af)

        out["audio encode Opus (aiortc)"] = list(_timed(send_opus, list(enumerate(chunks))))
    ctx = av.CodecContext.create("libx264", "w")
    ctx.width, ctx.height, ctx.pix_fmt = avatar.width, avatar.height, "yuv420p"
    ctx.time_base = fractions.Fraction(1, int(round(avatar.fps)))
    ctx.options = {"preset": "ultrafast", "tune": "zerolatency", "threads": "1"}

    def send_h264(item: tuple[int, np.ndarray]) -> None:
        n, frame = item
        vf = av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(format="yuv420p")
        vf.pts = n
        ctx.encode(vf)

    out["video encode H.264 (PyAV libx264 ultrafast zerolatency, 1 thread)"] = list(
        _timed(send_h264, list(enumerate(frames))))
    return {k: {"wall_ms": round(v[0], 3), "cpu_ms": round(v[1], 3)} for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", nargs="+")
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("-o", "--out", type=Path)
    args = parser.parse_args()
    reports = []
    for bundle in args.bundles:
        report = profile_backend(bundle, n_frames=args.frames)
        report["serve_ms"] = encode_costs(bundle, min(args.frames, 100))
        reports.append(report)
        print(format_profile(report))
        for name, v in report["serve_ms"].items():
            print(f"| serve: {name} | {v['wall_ms']:.2f} | - | {v['cpu_ms']:.2f} |")
        print()
    if args.out:
        args.out.write_text(json.dumps(reports, indent=2))


if __name__ == "__main__":
    main()
