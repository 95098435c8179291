"""Peak memory of a 10-minute clip: speak(out=mp4), stream() and speak() to an array, each in its own process.

    python benchmarks/long_audio_memory.py [--bundle B.etk] [--minutes 10] [-o OUT.json]

Without --bundle, the tiny synthetic avatar of the tests is trained first (64x64). Reports the peak
RSS (VmHWM) of each process, the frames made and the wall time. speak(out=) and stream() keep a
batch of frames and the clip's audio and feature rows (16 kHz float32 audio: 38 MB for 10 min), so
their peak should not grow with the clip's frames; the array form holds every frame.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

CHILD = r"""
import sys, time
import numpy as np
import soundfile as sf
from embedtalk_sdk.runtime.avatar import Avatar
mode, bundle, wav, out = sys.argv[1:5]
avatar = Avatar.load(bundle, backend="onnxruntime")
t = time.perf_counter()
if mode == "speak-mp4":
    avatar.speak(wav, out=out); n = avatar.n_frames(sf.info(wav).frames)
elif mode == "stream":
    def chunks():
        with sf.SoundFile(wav) as f:
            while True:
                block = f.read(320, dtype="float32")
                if not len(block):
                    return
                yield block
    n = sum(1 for _ in avatar.stream(chunks()))
else:
    n = len(avatar.speak(wav))
# VmHWM, not getrusage: ru_maxrss survives fork + exec and would report the parent's peak.
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(n, time.perf_counter() - t, hwm / 1024)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("-o", "--out", type=Path)
    args = ap.parse_args()
    import soundfile as sf

    from embedtalk_sdk.runtime.audio.speech import synthesize_speech

    work = Path(tempfile.mkdtemp(prefix="embedtalk-long-"))
    bundle = args.bundle
    if bundle is None:
        from stream_latency import tiny_mel_bundle

        bundle = tiny_mel_bundle(work)
    wav = work / "long.wav"
    sf.write(wav, synthesize_speech(args.minutes * 60, seed=5).samples, 16000, subtype="PCM_16")
    rows = []
    for mode in ("speak-mp4", "stream", "speak-array"):
        res = subprocess.run([sys.executable, "-c", CHILD, mode, str(bundle), str(wav), str(work / "long.mp4")],
                             capture_output=True, text=True, check=True)
        frames, seconds, rss = res.stdout.split()
        rows.append({"mode": mode, "frames": int(frames), "seconds": round(float(seconds), 1), "max_rss_mb": round(float(rss), 1)})
        print(rows[-1], flush=True)
    report = {"bundle": str(bundle), "minutes": args.minutes, "results": rows}
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
