"""A Pipecat bot with our avatar, fully offline: Pipecat's small WebRTC transport, no LLM, no STT.

It mouths back what it hears (your microphone's speech, cut into turns by a level gate, becomes the
avatar's speech and voice), or reads a typed text with eSpeak NG. Open http://127.0.0.1:7860/ in a
browser, or connect any WebRTC client: POST /api/offer {"sdp", "type"} -> the answer; on the data
channel, {"type": "say", "text": "..."} reads a text and {"type": "interrupt"} stops the avatar.

    pip install -e ".[pipecat,serve]"
    python examples/pipecat_bot.py AVATAR.etk [--port 7860] [--lookahead-rows 4]
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import time
from collections import deque
from pathlib import Path
from typing import Callable

import numpy as np
from aiohttp import web
from pipecat.frames.frames import (
    Frame,
    InputAudioRawFrame,
    InterruptionFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.runner import PipelineRunner
from pipecat.pipeline.task import PipelineParams, PipelineTask
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.transports.base_transport import TransportParams
from pipecat.transports.smallwebrtc.connection import SmallWebRTCConnection
from pipecat.transports.smallwebrtc.request_handler import SmallWebRTCRequest, SmallWebRTCRequestHandler
from pipecat.transports.smallwebrtc.transport import SmallWebRTCTransport

from embedtalk_sdk.integrations.live import LiveFrame
from embedtalk_sdk.integrations.pipecat_video import EmbedTalkVideoService
from embedtalk_sdk.runtime.avatar import Avatar
from embedtalk_sdk.serve.media import restrict_ice_to_loopback
from embedtalk_sdk.serve.tts import EspeakTTS

log = logging.getLogger("pipecat_bot")
PAGE = Path(__file__).with_name("pipecat_bot.html")

OPEN_DBFS = -40.0     # a 20 ms chunk above this level opens a turn
CLOSE_S = 0.4         # a turn ends after this long below it
PREROLL_S = 0.1       # audio kept from before the turn opened (the onset of the first word)


class Parrot(FrameProcessor):
    """The bot's "TTS": microphone turns become speech to mouth back; typed texts are read with eSpeak NG."""

    def __init__(self, tts: EspeakTTS | None = None) -> None:
        super().__init__()
        self.tts = tts
        self._open = False
        self._quiet_s = 0.0
        self._preroll: deque[InputAudioRawFrame] = deque()
        self._preroll_s = 0.0

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame):
            await self._hear(frame)
        else:
            await self.push_frame(frame, direction)

    async def _hear(self, frame: InputAudioRawFrame) -> None:
        pcm = np.frombuffer(frame.audio, dtype=np.int16).astype(np.float64) / 32768.0
        seconds = pcm.shape[0] / frame.sample_rate / frame.num_channels
        level = 10 * np.log10(np.mean(pcm ** 2) + 1e-12)
        loud = level > OPEN_DBFS
        if not self._open:
            self._preroll.append(frame)
            self._preroll_s += seconds
            while self._preroll_s > PREROLL_S + seconds and len(self._preroll) > 1:
                self._preroll_s -= self._seconds(self._preroll.popleft())
            if not loud:
                return
            self._open, self._quiet_s = True, 0.0
            await self.push_frame(TTSStartedFrame())
            while self._preroll:
                await self._speak(self._preroll.popleft())
            self._preroll_s = 0.0
            return
        await self._speak(frame)
        self._quiet_s = 0.0 if loud else self._quiet_s + seconds
        if self._quiet_s >= CLOSE_S:
            self._open = False
            await self.push_frame(TTSStoppedFrame())

    @staticmethod
    def _seconds(frame: InputAudioRawFrame) -> float:
        return len(frame.audio) / 2 / frame.num_channels / frame.sample_rate

    async def _speak(self, frame: InputAudioRawFrame) -> None:
        await self.push_frame(TTSAudioRawFrame(audio=frame.audio, sample_rate=frame.sample_rate,
                                               num_channels=frame.num_channels))

    async def say(self, text: str) -> None:
        """Read `text` with eSpeak NG (as a TTS service would hand it on)."""
        if self.tts is None:
            return
        samples, rate = await asyncio.to_thread(self.tts.synthesize, text)
        pcm = np.clip(np.round(np.asarray(samples) * 32767.0), -32768, 32767).astype(np.int16)
        await self.push_frame(TTSStartedFrame())
        step = rate // 50  # 20 ms chunks, as TTS services stream them
        for a in range(0, pcm.shape[0], step):
            await self.push_frame(TTSAudioRawFrame(audio=pcm[a:a + step].tobytes(), sample_rate=rate, num_channels=1))
        await self.push_frame(TTSStoppedFrame())

    async def interrupt(self) -> None:
        self._open = False
        await self.push_frame(InterruptionFrame())


class Bot:
    """One pipeline per WebRTC connection, all on one avatar (its render thread is shared)."""

    def __init__(self, avatar: Avatar, *, lookahead_rows: int | None = 4, tts: EspeakTTS | None = None,
                 on_frame: Callable[[LiveFrame], None] | None = None) -> None:
        self.avatar, self.lookahead_rows, self.tts, self.on_frame = avatar, lookahead_rows, tts, on_frame
        self.handler = SmallWebRTCRequestHandler()
        self.tasks: list[PipelineTask] = []
        self.parrots: list[Parrot] = []
        self._runs: set[asyncio.Task] = set()
        self.messages: list[tuple[float, str]] = []  # (monotonic time, type) of the data-channel messages acted on

    async def connected(self, connection: SmallWebRTCConnection) -> None:
        service = EmbedTalkVideoService(self.avatar, lookahead_rows=self.lookahead_rows, on_frame=self.on_frame)
        params = TransportParams(audio_in_enabled=True, audio_in_sample_rate=16000, audio_out_enabled=True,
                                 audio_out_sample_rate=16000, **service.transport_params)
        transport = SmallWebRTCTransport(webrtc_connection=connection, params=params)
        parrot = Parrot(self.tts)
        task = PipelineTask(Pipeline([transport.input(), parrot, service, transport.output()]),
                            params=PipelineParams(audio_in_sample_rate=16000, audio_out_sample_rate=16000))

        @transport.event_handler("on_app_message")
        async def on_message(transport, message, sender) -> None:
            if not isinstance(message, dict):
                return
            if message.get("type") == "say" and isinstance(message.get("text"), str):
                self.messages.append((time.monotonic(), "say"))
                await parrot.say(message["text"][:2000])
            elif message.get("type") == "interrupt":
                self.messages.append((time.monotonic(), "interrupt"))
                await parrot.interrupt()

        @transport.event_handler("on_client_disconnected")
        async def on_gone(transport, client) -> None:
            await task.cancel()

        self.tasks.append(task)
        self.parrots.append(parrot)
        run = asyncio.create_task(PipelineRunner(handle_sigint=False).run(task))
        self._runs.add(run)
        run.add_done_callback(self._runs.discard)

    def app(self) -> web.Application:
        app = web.Application()

        async def offer(request: web.Request) -> web.Response:
            body = await request.json()
            answer = await self.handler.handle_web_request(
                SmallWebRTCRequest(sdp=body["sdp"], type=body["type"], pc_id=body.get("pc_id")), self.connected)
            return web.json_response(answer)

        async def page(request: web.Request) -> web.Response:
            return web.FileResponse(PAGE)

        app.router.add_post("/api/offer", offer)
        app.router.add_get("/", page)
        app.on_shutdown.append(self._shutdown)
        return app

    async def _shutdown(self, app: web.Application) -> None:
        for task in self.tasks:
            await task.cancel()
        # the pipelines' ends stop the avatar's render threads: wait for them, so nothing renders
        # after shutdown (or at interpreter exit, inside onnxruntime)
        if self._runs:
            await asyncio.wait(set(self._runs), timeout=10.0)
        await self.handler.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("avatar", help="a bundle (.etk folder or .zip)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--lookahead-rows", type=int, default=4, help="as `embedtalk-sdk serve`'s (7: exact)")
    parser.add_argument("--backend", default="auto")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    restrict_ice_to_loopback()  # this bot serves 127.0.0.1: its media stays on the machine too
    bot = Bot(Avatar.load(args.avatar, backend=args.backend), lookahead_rows=args.lookahead_rows, tts=EspeakTTS())
    print(f"open http://127.0.0.1:{args.port}/")
    web.run_app(bot.app(), host="127.0.0.1", port=args.port)


if __name__ == "__main__":
    main()
