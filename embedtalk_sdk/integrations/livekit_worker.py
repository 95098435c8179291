"""`embedtalk-sdk livekit-worker AVATARS`: an avatar worker on LiveKit's own dispatch.

The worker registers with the LiveKit server as an agent worker (agent name `embedtalk-avatar`,
explicit dispatch). An agent's `AvatarSession(avatar_id=..., worker=True)` asks LiveKit for one;
the server offers the job to a worker that reports room for it, the worker joins the room as the
avatar participant (publishing on behalf of the agent), receives the agent's speech over the
framework's data-stream transport and publishes the avatar's video and voice.

Load, which LiveKit dispatches on: every running session costs its avatar's frame time x fps of a
second of this machine (serve's `Admission` rule). The frame time is measured: at start-up (render
+ VP8/Opus encode, `measure_cost`), then from the avatar's render thread itself once it has rendered
frames (its render time per frame, the encode share kept from start-up). The load is the sum over
running sessions; at `utilisation` (0.8) the worker reports itself full and LiveKit sends the next job
to another machine, and a request that would pass it is rejected. All sessions of one avatar share
one render thread (`AvatarRenderer`): jobs run as threads of this process (the `thread` executor).
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from dataclasses import dataclass

from livekit import rtc
from livekit.agents import AgentServer, AutoSubscribe, JobContext, JobExecutorType, JobRequest
from livekit.agents.types import ATTRIBUTE_PUBLISH_ON_BEHALF
from livekit.agents.voice.avatar import AvatarRunner, DataStreamAudioReceiver

from embedtalk_sdk.serve.session import LOOKAHEAD_ROWS
from embedtalk_sdk.integrations.livekit_avatar import WORKER_AGENT_NAME, EmbedTalkVideoGenerator
from embedtalk_sdk.serve.avatars import Admission, AvatarEntry, AvatarRegistry, UnknownAvatar
from embedtalk_sdk.serve.renderer import AvatarRenderer

log = logging.getLogger("embedtalk_sdk.livekit")

MEASURED_FRAMES = 50   # frames an avatar's render thread must have rendered before its own timing is used


@dataclass
class JobMetadata:
    """What an agent's dispatch asks for (`livekit_avatar.dispatch_metadata`)."""

    avatar: str
    agent_identity: str
    avatar_identity: str

    @classmethod
    def parse(cls, text: str) -> "JobMetadata":
        try:
            d = json.loads(text or "")
            return cls(str(d["avatar"]), str(d["agent_identity"]), str(d["avatar_identity"]))
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"job metadata must be JSON with avatar, agent_identity, avatar_identity ({e})") from None


class AvatarWorker:
    """The avatars of one worker, their render threads, the sessions running on them and the load."""

    def __init__(self, registry: AvatarRegistry, *, utilisation: float = 0.8, max_sessions: int | None = None,
                 lookahead_rows: int | None = LOOKAHEAD_ROWS) -> None:
        self.registry = registry
        self.admission = Admission(registry, max_sessions=max_sessions, utilisation=utilisation)
        self.lookahead_rows = lookahead_rows
        self.renderers = {e.id: AvatarRenderer(e.avatar, e.id) for e in registry.entries()}
        self._running: dict[str, str] = {}   # job id -> avatar id
        self._lock = threading.Lock()        # jobs run in threads; load_fnc in an executor
        self.refused = 0

    # ------------------------------------------------------------------ load

    def frame_ms(self, entry: AvatarEntry) -> float:
        """This avatar's frame time: its render thread's measured render time per frame once it has
        rendered `MEASURED_FRAMES`, else the start-up measurement; plus the measured encode time."""
        r = self.renderers[entry.id]
        if r.frames_rendered >= MEASURED_FRAMES:
            return r.render_s / r.frames_rendered * 1000.0 + entry.encode_ms
        return entry.frame_ms

    def cost(self, entry: AvatarEntry) -> float:
        """The share of this machine one session of `entry` takes (frame time x fps)."""
        return self.frame_ms(entry) / 1000.0 * entry.avatar.fps

    @property
    def sessions(self) -> dict[str, str]:
        with self._lock:
            return dict(self._running)

    def load(self) -> float:
        """The worker's load for LiveKit, 0..1: the summed cost of the running sessions (with
        `max_sessions`: their count over it)."""
        running = list(self.sessions.values())
        if self.admission.max_sessions is not None:
            return min(1.0, len(running) / max(1, self.admission.max_sessions))
        return min(1.0, sum(self.cost(self.registry.get(a)) for a in running))

    @property
    def threshold(self) -> float:
        """The load at which the worker is full (LiveKit's load_threshold)."""
        return 1.0 if self.admission.max_sessions is not None else self.admission.utilisation

    def refusal(self, avatar_id: str) -> str | None:
        """None if one more session of `avatar_id` fits, else why not (serve's admission rule, with
        the measured frame times)."""
        try:
            entry = self.registry.get(avatar_id)
        except UnknownAvatar as e:
            return str(e)
        running = list(self.sessions.values())
        n = len(running)
        if self.admission.max_sessions is not None:
            return None if n < self.admission.max_sessions else \
                f"worker full: {n} of {self.admission.max_sessions} sessions (--max-sessions)"
        used = sum(self.cost(self.registry.get(a)) for a in running)
        if n and used + self.cost(entry) > self.admission.utilisation:
            return (f"worker full: {n} sessions use {used:.0%} of this machine, a {entry.id} session takes "
                    f"{self.cost(entry):.0%} ({self.frame_ms(entry):.1f} ms a frame at {entry.avatar.fps:g} fps), "
                    f"limit {self.admission.utilisation:.0%}")
        return None

    def opened(self, job_id: str, avatar_id: str) -> None:
        with self._lock:
            self._running[job_id] = avatar_id

    def closed(self, job_id: str) -> None:
        with self._lock:
            self._running.pop(job_id, None)

    # ------------------------------------------------------------------ LiveKit's callbacks

    async def on_request(self, req: JobRequest) -> None:
        """Accept a dispatch if its avatar is ours and fits; join as the avatar, on behalf of the agent."""
        try:
            meta = JobMetadata.parse(req.job.metadata)
        except ValueError as e:
            log.warning("job %s rejected: %s", req.id, e)
            await req.reject()
            return
        why = self.refusal(meta.avatar)
        if why is not None:
            self.refused += 1
            log.info("job %s rejected: %s", req.id, why)
            await req.reject()
            return
        await req.accept(identity=meta.avatar_identity, name=meta.avatar,
                         attributes={ATTRIBUTE_PUBLISH_ON_BEHALF: meta.agent_identity})

    async def entrypoint(self, ctx: JobContext) -> None:
        """One avatar session: the agent's audio in over data streams, the avatar's tracks out."""
        meta = JobMetadata.parse(ctx.job.metadata)
        entry = self.registry.get(meta.avatar)
        self.opened(ctx.job.id, entry.id)
        generator = EmbedTalkVideoGenerator(entry.avatar, renderer=self.renderers[entry.id], avatar_id=entry.id,
                                            lookahead_rows=self.lookahead_rows)
        runner: AvatarRunner | None = None
        try:
            await ctx.connect(auto_subscribe=AutoSubscribe.SUBSCRIBE_NONE)
            gone = asyncio.Event()

            def on_left(p: rtc.RemoteParticipant) -> None:
                if p.identity == meta.agent_identity:
                    gone.set()

            ctx.room.on("participant_disconnected", on_left)
            ctx.room.on("disconnected", lambda *_: gone.set())
            receiver = DataStreamAudioReceiver(ctx.room, sender_identity=meta.agent_identity)
            runner = AvatarRunner(ctx.room, audio_recv=receiver, video_gen=generator, options=generator.options)
            await runner.start()
            await gone.wait()
        finally:
            self.closed(ctx.job.id)
            if runner is not None:
                await runner.aclose()
            await generator.aclose()
            ctx.shutdown("the agent left")

    def stop(self) -> None:
        for r in self.renderers.values():
            r.stop()


def agent_server(worker: AvatarWorker, *, agent_name: str = WORKER_AGENT_NAME, url: str | None = None,
                 api_key: str | None = None, api_secret: str | None = None, port: int = 8081) -> AgentServer:
    """The LiveKit agent server of `worker`: thread executor, load from `worker.load`, explicit dispatch."""
    server = AgentServer(job_executor_type=JobExecutorType.THREAD, load_fnc=worker.load,
                         load_threshold=worker.threshold, ws_url=url, api_key=api_key, api_secret=api_secret,
                         port=port, num_idle_processes=0)
    server.rtc_session(worker.entrypoint, agent_name=agent_name, on_request=worker.on_request)
    return server


def run_worker(avatars: str | os.PathLike, *, url: str | None = None, api_key: str | None = None,
               api_secret: str | None = None, agent_name: str = WORKER_AGENT_NAME, backend: str = "auto",
               max_sessions: int | None = None, utilisation: float = 0.8,
               lookahead_rows: int | None = LOOKAHEAD_ROWS, port: int = 8081) -> None:
    """Load AVATARS, measure them, register with LiveKit and serve jobs until interrupted."""
    url = url or os.getenv("LIVEKIT_URL")
    api_key = api_key or os.getenv("LIVEKIT_API_KEY")
    api_secret = api_secret or os.getenv("LIVEKIT_API_SECRET")
    if not (url and api_key and api_secret):
        raise ValueError("livekit-worker needs the LiveKit server: --url/--api-key/--api-secret or "
                         "LIVEKIT_URL, LIVEKIT_API_KEY and LIVEKIT_API_SECRET")
    worker = AvatarWorker(AvatarRegistry.load(avatars, backend=backend), utilisation=utilisation,
                          max_sessions=max_sessions, lookahead_rows=lookahead_rows)
    for e in worker.registry.entries():
        log.info("avatar %s: %.1f ms a frame, a session takes %.0f%% of this machine (full at %.0f%%)",
                 e.id, e.frame_ms, 100 * worker.cost(e), 100 * worker.threshold)
    server = agent_server(worker, agent_name=agent_name, url=url, api_key=api_key, api_secret=api_secret, port=port)
    try:
        asyncio.run(server.run(devmode=False))
    except KeyboardInterrupt:
        pass
    finally:
        worker.stop()


__all__ = ["AvatarWorker", "JobMetadata", "agent_server", "run_worker"]
