"""Pipecat: our avatar as a frame processor, placed where Pipecat's own Simli/Tavus services go
(after the TTS, before the output transport).

    avatar = EmbedTalkVideoService(Avatar.load("alice.etk"))
    pipeline = Pipeline([transport.input(), stt, llm, tts, avatar, transport.output()])
    # transport params: video_out_enabled=True, video_out_is_live=True, video_out_framerate=25,
    # video_out_width/height = the avatar's (EmbedTalkVideoService.transport_params gives them)

Needs the `pipecat` extra. Design: design.md beside this file.
"""
from __future__ import annotations

from collections import deque
from typing import Any, Callable

import numpy as np
from pipecat.audio.utils import create_stream_resampler
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    InterruptionFrame,
    OutputImageRawFrame,
    StartFrame,
    TTSAudioRawFrame,
    TTSStoppedFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from embedtalk_sdk.integrations.live import SAMPLE_RATE, LiveAvatarStream, LiveFrame, mono_int16, to_int16
from embedtalk_sdk.runtime.avatar import Avatar
from embedtalk_sdk.serve.renderer import AvatarRenderer
from embedtalk_sdk.serve.session import LOOKAHEAD_ROWS


class EmbedTalkVideoService(FrameProcessor):
    """Takes the TTS audio (`TTSAudioRawFrame`s of any rate, resampled to 16 kHz with Pipecat's stream
    resampler) and emits, every 1/fps seconds, an `OutputImageRawFrame` (RGB) followed during speech by
    the `TTSAudioRawFrame` of the 40 ms it shows (16 kHz mono), so picture and sound leave in step.
    Between turns the avatar idles (closed mouth, blinks: images without audio). A `TTSStoppedFrame`
    is passed on when its turn has been played; an `InterruptionFrame` stops the speech at once (the
    next frame rendered is idle). A frame the renderer dropped is sent again as the previous picture.

    renderer / lookahead_rows: as `LiveAvatarStream`. on_frame: called with every `LiveFrame` before
    it is pushed (recording, metrics).
    """

    def __init__(self, avatar: Avatar, *, renderer: AvatarRenderer | None = None, avatar_id: str = "avatar",
                 lookahead_rows: int | None = LOOKAHEAD_ROWS, on_frame: Callable[[LiveFrame], None] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.avatar = avatar
        self._renderer, self._avatar_id, self._lookahead_rows = renderer, avatar_id, lookahead_rows
        self._on_frame = on_frame
        self.stream: LiveAvatarStream | None = None
        self._task = None
        self._resampler = create_stream_resampler()
        self._held_stops: deque[TTSStoppedFrame] = deque()  # passed on when their turn has been played

    @property
    def transport_params(self) -> dict:
        """The output transport's video parameters for this avatar."""
        a = self.avatar
        return {"video_out_enabled": True, "video_out_is_live": True, "video_out_width": a.width,
                "video_out_height": a.height, "video_out_framerate": int(round(a.fps))}

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, StartFrame):
            await self.push_frame(frame, direction)
            await self._start()
        elif isinstance(frame, (EndFrame, CancelFrame)):
            await self._stop()
            await self.push_frame(frame, direction)
        elif isinstance(frame, InterruptionFrame):
            if self.stream is not None:
                self.stream.interrupt()
            self._held_stops.clear()
            await self.push_frame(frame, direction)
        elif isinstance(frame, TTSAudioRawFrame) and direction == FrameDirection.DOWNSTREAM:
            await self._push_speech(frame)  # it goes on with our frames, in step with the pictures
        elif isinstance(frame, TTSStoppedFrame) and direction == FrameDirection.DOWNSTREAM and self.stream:
            self.stream.end_segment()
            self._held_stops.append(frame)
        else:
            await self.push_frame(frame, direction)

    async def _push_speech(self, frame: TTSAudioRawFrame) -> None:
        if self.stream is None:
            return
        pcm = mono_int16(np.frombuffer(frame.audio, dtype=np.int16), frame.num_channels)
        if frame.sample_rate != SAMPLE_RATE:
            pcm = np.frombuffer(await self._resampler.resample(pcm.tobytes(), frame.sample_rate, SAMPLE_RATE),
                                dtype=np.int16)
        self.stream.push(pcm)

    async def _start(self) -> None:
        if self.stream is not None:
            return
        self.stream = LiveAvatarStream(self.avatar, renderer=self._renderer, avatar_id=self._avatar_id,
                                       lookahead_rows=self._lookahead_rows)
        self.stream.start()
        self._task = self.create_task(self._pump(self.stream), name="embedtalk-frames")

    async def _stop(self) -> None:
        if self.stream is not None:
            await self.stream.aclose()
        if self._task is not None:
            await self.cancel_task(self._task)
            self._task = None

    async def _pump(self, stream: LiveAvatarStream) -> None:
        a, last = self.avatar, None
        async for f in stream.frames():
            if self._on_frame is not None:
                self._on_frame(f)
            if f.image is not None:
                last = f.image.tobytes()
            if last is not None:  # a dropped frame: the previous picture again (a new frame object)
                await self.push_frame(OutputImageRawFrame(image=last, size=(a.width, a.height), format="RGB"))
            if f.speech and not stream.cleared(f.segment):  # an interruption may come between
                await self.push_frame(TTSAudioRawFrame(audio=to_int16(f.audio).tobytes(), sample_rate=SAMPLE_RATE,
                                                       num_channels=1))
            if f.segment_end and self._held_stops:
                await self.push_frame(self._held_stops.popleft())

    async def cleanup(self) -> None:
        await super().cleanup()
        await self._stop()


__all__ = ["EmbedTalkVideoService"]
