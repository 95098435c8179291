"""Latency audio in -> frame out for serve's session, the LiveKit VideoGenerator and the Pipecat
service, on one bundle, same machine, same run.

Speech is pushed as a microphone or a streaming TTS would: 20 ms chunks in real time. For each frame
whose middle sample was pushed speech, latency = the time the frame leaves the component minus the
time that sample was pushed:
- serve: the session hands the frame to its sink (what `/metrics` reports, before the VP8 encode);
- livekit: the generator yields its `rtc.VideoFrame` (before LiveKit's `AvatarRunner` / encoder);
- pipecat: the service pushes its `OutputImageRawFrame` (inside a real Pipeline, before the transport).

    python benchmarks/bench_integrations.py AVATAR.etk [--seconds 8] [--lookahead-rows 4]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import time

import numpy as np

from embedtalk_sdk.runtime.audio.speech import synthesize_speech
from embedtalk_sdk.serve.avatars import AvatarRegistry
from embedtalk_sdk.serve.renderer import AvatarRenderer
from embedtalk_sdk.serve.session import Session


def pct(x: list[float]) -> dict:
    a = np.array(x) * 1000
    return {"frames": len(a), "p50_ms": round(float(np.percentile(a, 50)), 1), "p99_ms": round(float(np.percentile(a, 99)), 1)}


async def feed(push, speech: np.ndarray) -> None:
    t0 = time.monotonic()
    for i, a in enumerate(range(0, speech.shape[0], 320)):
        await asyncio.sleep(max(0.0, t0 + i * 0.02 - time.monotonic()))
        await push(speech[a:a + 320])


def bench_serve(avatar, speech, lookahead) -> dict:
    lat: list[float] = []

    class Sink:
        def video(self, n, frame, t_in):
            if frame is not None and t_in is not None:
                lat.append(time.monotonic() - t_in)

        def audio(self, n, samples):
            pass

    r = AvatarRenderer(avatar, "bench-serve")
    s = Session("a", avatar, Sink(), lookahead_rows=lookahead)
    s.start()
    r.add(s)

    async def push(x):
        s.push(x)
        r.notify()

    asyncio.run(feed(push, speech))
    time.sleep(0.5)
    s.close()
    r.stop()
    return pct(lat)


def bench_livekit(avatar, speech, lookahead) -> dict:
    from livekit import rtc
    from livekit.agents.voice.avatar import AudioSegmentEnd

    from embedtalk_sdk.integrations.livekit_avatar import EmbedTalkVideoGenerator

    lat: list[float] = []
    pending: list[float] = []
    gen = EmbedTalkVideoGenerator(avatar, lookahead_rows=lookahead,
                                  on_frame=lambda f: pending.append(f.t_in if f.speech else None))

    async def main():
        async def push(x):
            pcm = np.round(x * 32767).astype(np.int16)
            await gen.push_audio(rtc.AudioFrame(pcm.tobytes(), 16000, 1, pcm.shape[0]))

        async def consume():
            async for item in gen:
                if isinstance(item, rtc.VideoFrame) and pending:
                    t_in = pending.pop(0)
                    if t_in is not None:
                        lat.append(time.monotonic() - t_in)

        task = asyncio.create_task(consume())
        await feed(push, speech)
        await gen.push_audio(AudioSegmentEnd())
        await asyncio.sleep(0.5)
        await gen.aclose()
        await task

    asyncio.run(main())
    return pct(lat)


def bench_pipecat(avatar, speech, lookahead) -> dict:
    from pipecat.frames.frames import EndFrame, OutputImageRawFrame, TTSAudioRawFrame, TTSStartedFrame, TTSStoppedFrame
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.runner import PipelineRunner
    from pipecat.pipeline.task import PipelineTask
    from pipecat.processors.frame_processor import FrameProcessor

    from embedtalk_sdk.integrations.pipecat_video import EmbedTalkVideoService

    lat: list[float] = []
    pending: list[float | None] = []

    class Out(FrameProcessor):
        async def process_frame(self, frame, direction):
            await super().process_frame(frame, direction)
            if isinstance(frame, OutputImageRawFrame) and pending:
                t_in = pending.pop(0)
                if t_in is not None:
                    lat.append(time.monotonic() - t_in)
            await self.push_frame(frame, direction)

    service = EmbedTalkVideoService(avatar, lookahead_rows=lookahead,
                                    on_frame=lambda f: pending.append(f.t_in if f.speech else None))
    task = PipelineTask(Pipeline([service, Out()]))

    async def main():
        run = asyncio.create_task(PipelineRunner(handle_sigint=False).run(task))
        await asyncio.sleep(1.0)
        await task.queue_frame(TTSStartedFrame())

        async def push(x):
            pcm = np.round(x * 32767).astype(np.int16)
            await task.queue_frame(TTSAudioRawFrame(audio=pcm.tobytes(), sample_rate=16000, num_channels=1))

        await feed(push, speech)
        await task.queue_frame(TTSStoppedFrame())
        await asyncio.sleep(0.5)
        await task.queue_frame(EndFrame())
        await run

    asyncio.run(main())
    return pct(lat)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--lookahead-rows", type=int, default=4, help="7: the exact window")
    args = ap.parse_args()
    registry = AvatarRegistry.load(args.bundle, backend="onnxruntime", log_fn=print)
    avatar = registry.entries()[0].avatar
    speech = synthesize_speech(args.seconds, seed=3).samples
    out = {"lookahead_rows": args.lookahead_rows}
    for name, fn in (("serve", bench_serve), ("livekit", bench_livekit), ("pipecat", bench_pipecat)):
        out[name] = fn(avatar, speech, args.lookahead_rows)
        print(name, out[name], flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
