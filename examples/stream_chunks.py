"""Real-time use: feed 16 kHz PCM as it arrives (here: 20 ms chunks of a wav), get frames back.

    python examples/stream_chunks.py demo_out/avatar.etk demo_out/sentence.wav
"""
import sys
import time

from embedtalk_sdk import Avatar
from embedtalk_sdk.runtime.audio.io import load_audio

bundle, wav = sys.argv[1:3]
avatar = Avatar.load(bundle)
samples = load_audio(wav)  # any rate / channels -> 16 kHz mono float32
chunks = (samples[i : i + 320] for i in range(0, len(samples), 320))  # 20 ms, like a microphone

start = time.perf_counter()
for n, frame in enumerate(avatar.stream(chunks)):
    pass  # show `frame` (uint8 [H, W, 3]) in your app
elapsed = time.perf_counter() - start
print(f"{n + 1} frames in {elapsed:.2f} s ({(n + 1) / elapsed:.1f} fps; real time needs {avatar.fps})")
