"""LiveKit Agents: our avatar as a `VideoGenerator`, and an `AvatarSession` that runs it in the agent's
process or on an avatar worker (`embedtalk-sdk livekit-worker`, livekit_worker.py).

    from embedtalk_sdk.integrations.livekit_avatar import AvatarSession
    avatar = AvatarSession("alice.etk")                      # in-process: renders beside the agent
    avatar = AvatarSession(avatar_id="alice", worker=True)   # on a worker: LiveKit dispatches one
    await avatar.start(session, room=ctx.room)
    await session.start(agent=..., room=ctx.room)

Needs the `livekit` extra (livekit-agents 1.8). Design: design.md beside this file.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator
from typing import Callable

import numpy as np
from livekit import api, rtc
from livekit.agents import NOT_GIVEN, AgentSession, NotGivenOr, get_job_context
from livekit.agents.types import ATTRIBUTE_PUBLISH_ON_BEHALF
from livekit.agents.voice.avatar import (
    AudioSegmentEnd,
    AvatarOptions,
    AvatarRunner,
    DataStreamAudioOutput,
    QueueAudioOutput,
    VideoGenerator,
)
from livekit.agents.voice.avatar import AvatarSession as BaseAvatarSession

from embedtalk_sdk.integrations.live import SAMPLE_RATE, LiveAvatarStream, LiveFrame, mono_int16, to_int16
from embedtalk_sdk.runtime.avatar import Avatar
from embedtalk_sdk.serve.renderer import AvatarRenderer
from embedtalk_sdk.serve.session import LOOKAHEAD_ROWS

WORKER_AGENT_NAME = "embedtalk-avatar"   # the avatar worker's agent name (explicit dispatch)
RESAMPLER_QUALITY = rtc.AudioResamplerQuality.HIGH


class EmbedTalkVideoGenerator(VideoGenerator):
    """A `VideoGenerator` over an `Avatar`: `push_audio` takes the agent's speech as `rtc.AudioFrame`s
    of any rate, channel count and size (resampled to the avatar's 16 kHz by LiveKit's own soxr
    resampler, one per segment), or `AudioSegmentEnd`; iterating yields, every 1/fps seconds, an
    `rtc.VideoFrame` (RGB24) followed, during speech, by the `rtc.AudioFrame` of the 40 ms it shows
    (16 kHz mono), and `AudioSegmentEnd` after a segment's last frame. Without speech the frames are
    the idle avatar (closed mouth, blinks) and no audio is yielded (the runner counts yielded audio
    as played speech). A frame the renderer dropped (late) is sent again as the previous picture, so
    the video keeps the audio's clock. `clear_buffer()` interrupts.

    renderer / lookahead_rows / clock: as `LiveAvatarStream`. on_frame: called with every `LiveFrame`
    before its items are yielded (recording, metrics).
    """

    def __init__(self, avatar: Avatar, *, renderer: AvatarRenderer | None = None, avatar_id: str = "avatar",
                 lookahead_rows: int | None = LOOKAHEAD_ROWS, clock: Callable[[], float] | None = None,
                 on_frame: Callable[[LiveFrame], None] | None = None) -> None:
        self.stream = LiveAvatarStream(avatar, renderer=renderer, avatar_id=avatar_id,
                                       lookahead_rows=lookahead_rows, clock=clock)
        self.avatar, self._on_frame = avatar, on_frame
        self._resampler: rtc.AudioResampler | None = None
        self._rate: int | None = None

    @property
    def options(self) -> AvatarOptions:
        """The `AvatarRunner`'s options for this avatar (its size, fps, 16 kHz mono sound)."""
        a = self.avatar
        return AvatarOptions(video_width=a.width, video_height=a.height, video_fps=a.fps,
                             audio_sample_rate=SAMPLE_RATE, audio_channels=1)

    async def push_audio(self, frame: rtc.AudioFrame | AudioSegmentEnd) -> None:
        if isinstance(frame, AudioSegmentEnd):
            self._flush_resampler()
            self.stream.end_segment()
            return
        mono = mono_int16(np.frombuffer(frame.data, dtype=np.int16), frame.num_channels)
        if frame.sample_rate == SAMPLE_RATE:
            self.stream.push(mono)
            return
        if self._rate != frame.sample_rate:
            self._flush_resampler()
            self._resampler = rtc.AudioResampler(frame.sample_rate, SAMPLE_RATE, num_channels=1,
                                                 quality=RESAMPLER_QUALITY)
            self._rate = frame.sample_rate
        assert self._resampler is not None
        for out in self._resampler.push(bytearray(mono.tobytes())):
            self.stream.push(np.frombuffer(out.data, dtype=np.int16))

    def _flush_resampler(self) -> None:
        if self._resampler is not None:
            for out in self._resampler.flush():
                self.stream.push(np.frombuffer(out.data, dtype=np.int16))
        self._resampler, self._rate = None, None

    def clear_buffer(self) -> None:
        self._resampler, self._rate = None, None  # its buffered samples belong to the dropped speech
        self.stream.interrupt()

    def __aiter__(self) -> AsyncIterator[rtc.VideoFrame | rtc.AudioFrame | AudioSegmentEnd]:
        return self._frames()

    async def _frames(self) -> AsyncIterator[rtc.VideoFrame | rtc.AudioFrame | AudioSegmentEnd]:
        a, last = self.avatar, None
        async for f in self.stream.frames():
            if self._on_frame is not None:
                self._on_frame(f)
            if f.image is not None:
                last = rtc.VideoFrame(a.width, a.height, rtc.VideoBufferType.RGB24, f.image.tobytes())
            if last is not None:
                yield last
            if f.speech and not self.stream.cleared(f.segment):  # clear_buffer() may come between
                pcm = to_int16(f.audio)
                yield rtc.AudioFrame(pcm.tobytes(), SAMPLE_RATE, 1, pcm.shape[0])
            if f.segment_end:
                yield AudioSegmentEnd()

    async def aclose(self) -> None:
        await self.stream.aclose()


class AvatarSession(BaseAvatarSession):
    """Our avatar in a LiveKit agent.

    In-process (`AvatarSession(avatar)`, an `Avatar` or a bundle path): the agent's TTS audio goes
    to an `EmbedTalkVideoGenerator` through the framework's `QueueAudioOutput`, and an `AvatarRunner`
    publishes the avatar's video and voice as the agent's own tracks.

    Remote worker (`AvatarSession(avatar_id="alice", worker=True)`): LiveKit dispatches an avatar
    worker (`embedtalk-sdk livekit-worker AVATARS`, agent name `agent_name`) into the room; the
    agent's audio goes to it over the framework's data-stream transport (`DataStreamAudioOutput`) and
    the worker publishes on behalf of the agent. Workers report their load, so LiveKit picks one
    with room for the session.
    """

    def __init__(self, avatar: Avatar | str | os.PathLike | None = None, *, avatar_id: str | None = None,
                 worker: bool = False, agent_name: str = WORKER_AGENT_NAME,
                 avatar_participant_identity: str | None = None, lookahead_rows: int | None = LOOKAHEAD_ROWS,
                 backend: str = "auto") -> None:
        super().__init__()
        if worker:
            if avatar is not None or not avatar_id:
                raise ValueError("a worker session names its avatar by id (avatar_id=...), not by a bundle here")
        elif avatar is None:
            raise ValueError("an in-process session needs the avatar (an Avatar or a bundle path)")
        self._avatar = avatar if isinstance(avatar, Avatar) or avatar is None else Avatar.load(avatar, backend=backend)
        self._avatar_id, self._worker, self._agent_name = avatar_id, worker, agent_name
        self._identity = avatar_participant_identity
        self._lookahead_rows = lookahead_rows
        self.generator: EmbedTalkVideoGenerator | None = None
        self.runner: AvatarRunner | None = None

    @property
    def avatar_identity(self) -> str:
        if not self._worker and self._room is not None:
            return self._room.local_participant.identity  # in-process: the agent publishes the avatar
        return self._identity or ""

    @property
    def provider(self) -> str:
        return "embedtalk"

    async def start(self, agent_session: AgentSession, room: rtc.Room, *,
                    livekit_url: NotGivenOr[str] = NOT_GIVEN, livekit_api_key: NotGivenOr[str] = NOT_GIVEN,
                    livekit_api_secret: NotGivenOr[str] = NOT_GIVEN) -> None:
        if self._worker:
            agent_identity = room.local_participant.identity
            self._identity = self._identity or f"{WORKER_AGENT_NAME}-{agent_identity}"
        await super().start(agent_session, room)
        if not self._worker:
            assert self._avatar is not None
            self.generator = EmbedTalkVideoGenerator(self._avatar, avatar_id=self._avatar_id or "avatar",
                                                     lookahead_rows=self._lookahead_rows)
            audio = QueueAudioOutput(sample_rate=SAMPLE_RATE)
            self.runner = AvatarRunner(room, audio_recv=audio, video_gen=self.generator,
                                       options=self.generator.options)
            await self.runner.start()
            agent_session.output.replace_audio_tail(audio)
            return
        await dispatch_avatar_worker(room.name, avatar_id=str(self._avatar_id), agent_identity=agent_identity,
                                     avatar_identity=self._identity, agent_name=self._agent_name,
                                     url=livekit_url or os.getenv("LIVEKIT_URL"),
                                     api_key=livekit_api_key or os.getenv("LIVEKIT_API_KEY"),
                                     api_secret=livekit_api_secret or os.getenv("LIVEKIT_API_SECRET"))
        agent_session.output.replace_audio_tail(
            DataStreamAudioOutput(room, destination_identity=self._identity, sample_rate=SAMPLE_RATE,
                                  wait_remote_track=rtc.TrackKind.KIND_VIDEO))

    async def aclose(self) -> None:
        if self.runner is not None:
            await self.runner.aclose()
            self.runner = None
        if self.generator is not None:
            await self.generator.aclose()
            self.generator = None
        await super().aclose()


def dispatch_metadata(*, avatar_id: str, agent_identity: str, avatar_identity: str) -> str:
    """The job metadata an avatar worker reads (livekit_worker.py): which avatar, whose audio, as whom."""
    return json.dumps({"avatar": avatar_id, "agent_identity": agent_identity, "avatar_identity": avatar_identity,
                       "requested_at": time.time()})


async def dispatch_avatar_worker(room: str, *, avatar_id: str, agent_identity: str, avatar_identity: str,
                                 agent_name: str = WORKER_AGENT_NAME, url: str | None = None,
                                 api_key: str | None = None, api_secret: str | None = None) -> None:
    """Ask LiveKit to dispatch an avatar worker into `room` (explicit dispatch by agent name): the
    server offers the job to a worker whose reported load leaves room for it."""
    request = api.CreateAgentDispatchRequest(
        agent_name=agent_name, room=room,
        metadata=dispatch_metadata(avatar_id=avatar_id, agent_identity=agent_identity,
                                   avatar_identity=avatar_identity))
    job = get_job_context(required=False)
    if job is not None:
        await job.api.agent_dispatch.create_dispatch(request)
        return
    if not (url and api_key and api_secret):
        raise RuntimeError("dispatching an avatar worker needs LIVEKIT_URL, LIVEKIT_API_KEY and LIVEKIT_API_SECRET "
                           "(or a job context)")
    async with api.LiveKitAPI(url, api_key, api_secret) as lkapi:
        await lkapi.agent_dispatch.create_dispatch(request)


__all__ = ["ATTRIBUTE_PUBLISH_ON_BEHALF", "AvatarSession", "EmbedTalkVideoGenerator", "WORKER_AGENT_NAME",
           "dispatch_avatar_worker", "dispatch_metadata"]
