"""The HTTP/WebRTC server: aiohttp routes over sessions, renderers and admission.

    GET  /                         the web page (static/index.html; no CDN, works offline)
    GET  /avatars                  [{id, width, height, fps, backend, capacity, ...}]
    POST /sessions                 {"avatar": id, "sdp": offer, "type": "offer"} -> {"session_id", "sdp", "type"}
    POST /sessions/{id}/audio      body: an audio file (wav, flac, mp3, ...) -> the avatar says it
    POST /sessions/{id}/speak      {"text": "..."} -> offline TTS -> the avatar says it
    POST /sessions/{id}/interrupt  drop queued speech; the mouth closes from the next frame
    DELETE /sessions/{id}          close
    GET  /sessions/{id}/ws         WebSocket: binary = 16 kHz mono int16 PCM (live), text =
                                   {"type": "interrupt"}; the server sends events as JSON
    GET  /metrics                  sessions, frames_sent, dropped_frames, latency_ms_p50/p99, per_session

Errors are JSON {"error": "..."} with 400 (bad request or audio), 404 (unknown avatar or session),
413 (upload too large or too long) and 503 (server full).
"""
from __future__ import annotations

import asyncio
import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from embedtalk_sdk.runtime.audio.encoders import SAMPLE_RATE
from embedtalk_sdk.runtime.audio.io import AudioError, AudioTooLong, load_audio, prepare_audio
from embedtalk_sdk.serve.avatars import Admission, AvatarRegistry, UnknownAvatar
from embedtalk_sdk.serve.media import SessionMedia, consume_microphone
from embedtalk_sdk.serve.metrics import ServerMetrics
from embedtalk_sdk.serve.renderer import AvatarRenderer
from embedtalk_sdk.serve.session import Session, SessionError
from embedtalk_sdk.serve.tts import TTS, TTSError

log = logging.getLogger("embedtalk_sdk.serve")

STATIC = Path(__file__).with_name("static")


@dataclass
class Limits:
    """What one request may bring."""

    max_upload_bytes: int = 10 * 1024 * 1024
    max_upload_s: float = 60.0
    max_text_chars: int = 2000
    max_ws_message_bytes: int = 64 * 1024      # 2 s of 16 kHz int16 per message
    connect_timeout_s: float = 30.0            # a session whose peer never connects is closed


class LiveSession:
    """A session with its peer connection, media and WebSocket clients."""

    def __init__(self, session: Session, media: SessionMedia | None, pc: RTCPeerConnection | None,
                 renderer: AvatarRenderer) -> None:
        self.session, self.media, self.pc, self.renderer = session, media, pc, renderer
        self.sockets: set[web.WebSocketResponse] = set()
        self.tasks: set[asyncio.Task] = set()

    def push(self, pcm: np.ndarray, name: str) -> None:
        self.session.push(pcm, name)
        self.renderer.notify()


class Server:
    """Sessions over the avatars of `registry`. Use `app()` for the aiohttp application; tests and
    benchmarks may also open sessions in process with `open_session(avatar_id, sink)`."""

    def __init__(self, registry: AvatarRegistry, max_sessions: int | None = None, tts: TTS | None = None,
                 limits: Limits = Limits(), utilisation: float = 0.8, lookahead_rows: int | None = None) -> None:
        """max_sessions: None = admission by measured frame time (avatars.Admission).
        lookahead_rows: None = every frame waits for its whole audio window (frames as `speak`'s);
        fewer rows trade fidelity for latency, 20 ms a row (session.StreamState)."""
        self.registry, self.lookahead_rows = registry, lookahead_rows
        self.admission = Admission(registry, max_sessions, utilisation)
        self.tts, self.limits = tts, limits
        self.metrics = ServerMetrics()
        self.renderers = {e.id: AvatarRenderer(e.avatar, e.id) for e in registry.entries()}
        self.sessions: dict[str, LiveSession] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------ sessions

    def _admit(self, avatar: Any):
        entry = self.registry.get(avatar)
        reason = self.admission.check(entry, [self.registry.get(s.session.avatar_id) for s in self.sessions.values()])
        if reason:
            self.metrics.refused += 1
            raise ServerFull(reason)
        return entry

    def open_session(self, avatar: str, sink: Any, start: bool = True) -> LiveSession:
        """A session whose frames and sound go to `sink` (see `Session`), admitted like any other."""
        entry = self._admit(avatar)
        loop = self._loop

        def on_event(event: dict) -> None:
            if loop is not None and not loop.is_closed():
                loop.call_soon_threadsafe(self._broadcast, event)

        session = Session(entry.id, entry.avatar, sink, on_event=on_event, lookahead_rows=self.lookahead_rows)
        live = LiveSession(session, sink if isinstance(sink, SessionMedia) else None, None, self.renderers[entry.id])
        self.sessions[session.id] = live
        live.renderer.add(session)
        if start:
            session.start()
        return live

    async def create_webrtc_session(self, avatar: Any, offer: RTCSessionDescription) -> tuple[LiveSession, Any]:
        entry = self._admit(avatar)
        loop = asyncio.get_running_loop()
        self._loop = loop
        media = SessionMedia(loop, entry.avatar.fps, None)  # metrics set below
        live = self.open_session(entry.id, media, start=False)
        media.video_track.metrics = media.audio_track.metrics = live.session.metrics
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        live.pc = pc

        @pc.on("track")
        def on_track(track) -> None:
            if track.kind == "audio":
                task = asyncio.ensure_future(consume_microphone(track, live.push))
                live.tasks.add(task)

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            state = pc.connectionState
            log.info("session %s: connection %s", live.session.id, state)
            if state == "connected":
                live.session.start()
                live.renderer.notify()
            elif state in ("failed", "closed"):
                await self.close_session(live.session.id)

        try:
            try:
                await pc.setRemoteDescription(offer)
            except (ValueError, KeyError, IndexError) as e:
                raise web.HTTPBadRequest(text=_err(f"the SDP offer cannot be read: {e}"),
                                         content_type="application/json") from None
            kinds = {t.kind for t in pc.getTransceivers()}
            if "video" not in kinds:
                raise web.HTTPBadRequest(text=_err("the offer has no video: add a recvonly video transceiver"),
                                         content_type="application/json")
            pc.addTrack(media.video_track)
            if "audio" in kinds:
                pc.addTrack(media.audio_track)
            answer = await pc.createAnswer()
            await pc.setLocalDescription(answer)
        except Exception:
            await self.close_session(live.session.id)
            raise
        live.tasks.add(asyncio.ensure_future(self._connect_watchdog(live)))
        return live, pc.localDescription

    async def _connect_watchdog(self, live: LiveSession) -> None:
        await asyncio.sleep(self.limits.connect_timeout_s)
        if not live.session.started and live.session.id in self.sessions:
            log.info("session %s: no connection after %.0f s, closed", live.session.id, self.limits.connect_timeout_s)
            await self.close_session(live.session.id)

    async def close_session(self, sid: str) -> bool:
        """Close a session and free everything it holds. False if there was no such session."""
        live = self.sessions.pop(sid, None)
        if live is None:
            return False
        live.session.close()
        live.renderer.remove(live.session)
        self.metrics.closed(live.session.metrics)
        if live.media is not None:
            live.media.stop()
        current = asyncio.current_task()
        for task in live.tasks:
            if task is not current:
                task.cancel()
        for ws in list(live.sockets):
            await ws.close()
        if live.pc is not None:
            await live.pc.close()
        return True

    def _broadcast(self, event: dict) -> None:
        live = self.sessions.get(event.get("session", ""))
        if live is None:
            return
        for ws in list(live.sockets):
            if not ws.closed:
                asyncio.ensure_future(ws.send_json(event))

    def session(self, sid: str) -> LiveSession:
        live = self.sessions.get(sid)
        if live is None:
            raise web.HTTPNotFound(text=_err(f"no session {sid[:80]!r} (closed, or never opened)"),
                                   content_type="application/json")
        return live

    def metrics_report(self) -> dict:
        per = {sid: s.session.info() for sid, s in self.sessions.items()}
        report = self.metrics.report(per, [s.session.metrics for s in self.sessions.values()])
        report["capacity"] = {e.id: self.admission.capacity(e) for e in self.registry.entries()}
        return report

    async def shutdown(self) -> None:
        for sid in list(self.sessions):
            await self.close_session(sid)
        for r in self.renderers.values():
            r.stop()

    # ------------------------------------------------------------ audio inputs

    async def decode_upload(self, data: bytes) -> np.ndarray:
        """An uploaded file -> 16 kHz mono float32, by `speak`'s rules, within the limits."""
        lim = self.limits
        if len(data) == 0:
            raise AudioError("the upload is empty")
        if len(data) > lim.max_upload_bytes:
            raise UploadTooLarge(f"the upload is {len(data) / 1e6:.1f} MB; the limit is "
                                 f"{lim.max_upload_bytes / 1e6:.1f} MB")

        def decode() -> np.ndarray:
            with tempfile.TemporaryDirectory(prefix="embedtalk-upload-") as tmp:
                path = Path(tmp) / "upload"
                path.write_bytes(data)
                try:  # the duration is checked while decoding: a small file cannot expand into hours
                    return load_audio(path, SAMPLE_RATE, max_seconds=lim.max_upload_s)
                except AudioTooLong as e:
                    raise UploadTooLarge(str(e).replace(str(path), "the upload")) from None
                except AudioError as e:
                    raise AudioError(str(e).replace(str(path), "the upload")) from None

        samples = await asyncio.get_running_loop().run_in_executor(None, decode)
        if samples.shape[0] > lim.max_upload_s * SAMPLE_RATE:
            raise UploadTooLarge(f"the upload is {samples.shape[0] / SAMPLE_RATE:.1f} s of audio; the limit is "
                                 f"{lim.max_upload_s:g} s")
        if samples.shape[0] < SAMPLE_RATE // 50:
            raise AudioError(f"the upload is {samples.shape[0] / SAMPLE_RATE * 1000:.0f} ms of audio: too short")
        return samples

    async def synthesize(self, text: Any) -> np.ndarray:
        if self.tts is None:
            raise TTSError("this server has no text to speech (started with --tts none)")
        if not isinstance(text, str) or not text.strip():
            raise TTSError('give {"text": "..."}: a non-empty string')
        if len(text) > self.limits.max_text_chars:
            raise TTSError(f"the text is {len(text)} characters; the limit is {self.limits.max_text_chars}")
        samples, rate = await asyncio.get_running_loop().run_in_executor(None, self.tts.synthesize, text)
        return prepare_audio(np.asarray(samples), int(rate), sample_rate=SAMPLE_RATE, name=f"TTS ({self.tts.name})")

    # ------------------------------------------------------------ the aiohttp app

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.limits.max_upload_bytes + 1024 * 1024,
                              middlewares=[_json_errors])
        app.add_routes([
            web.get("/", self._index),
            web.get("/avatars", self._avatars),
            web.post("/sessions", self._create),
            web.post("/sessions/{sid}/audio", self._audio),
            web.post("/sessions/{sid}/speak", self._speak),
            web.post("/sessions/{sid}/interrupt", self._interrupt),
            web.delete("/sessions/{sid}", self._delete),
            web.get("/sessions/{sid}/ws", self._ws),
            web.get("/metrics", self._metrics),
        ])

        async def on_startup(app: web.Application) -> None:
            self._loop = asyncio.get_running_loop()

        async def on_shutdown(app: web.Application) -> None:
            await self.shutdown()

        app.on_startup.append(on_startup)
        app.on_shutdown.append(on_shutdown)
        return app

    async def _index(self, request: web.Request) -> web.Response:
        return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def _avatars(self, request: web.Request) -> web.Response:
        out = [dict(e.info(), capacity=self.admission.capacity(e)) for e in self.registry.entries()]
        return web.json_response({"avatars": out, "tts": self.tts is not None,
                                  "limits": {"max_upload_bytes": self.limits.max_upload_bytes,
                                             "max_upload_s": self.limits.max_upload_s}})

    async def _create(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        if body.get("type", "offer") != "offer" or not isinstance(body.get("sdp"), str):
            raise web.HTTPBadRequest(text=_err('give {"avatar": id, "sdp": "...", "type": "offer"}'),
                                     content_type="application/json")
        live, answer = await self.create_webrtc_session(body.get("avatar"), RTCSessionDescription(body["sdp"], "offer"))
        return web.json_response({"session_id": live.session.id, "avatar": live.session.avatar_id,
                                  "sdp": answer.sdp, "type": answer.type}, status=201)

    async def _audio(self, request: web.Request) -> web.Response:
        live = self.session(request.match_info["sid"])
        if request.content_length is not None and request.content_length > self.limits.max_upload_bytes:
            raise UploadTooLarge(f"the upload is {request.content_length / 1e6:.1f} MB; the limit is "
                                 f"{self.limits.max_upload_bytes / 1e6:.1f} MB")
        data = await _read_limited(request, self.limits.max_upload_bytes)
        samples = await self.decode_upload(data)
        queued = live.session.say(samples)
        live.renderer.notify()
        return web.json_response({"seconds": round(samples.shape[0] / SAMPLE_RATE, 3), "queued_s": round(queued, 3)})

    async def _speak(self, request: web.Request) -> web.Response:
        live = self.session(request.match_info["sid"])
        body = await _json_body(request)
        samples = await self.synthesize(body.get("text"))
        queued = live.session.say(samples)
        live.renderer.notify()
        return web.json_response({"seconds": round(samples.shape[0] / SAMPLE_RATE, 3), "queued_s": round(queued, 3)})

    async def _interrupt(self, request: web.Request) -> web.Response:
        live = self.session(request.match_info["sid"])
        live.session.interrupt()
        live.renderer.notify()
        return web.json_response({"interrupted": True})

    async def _delete(self, request: web.Request) -> web.Response:
        sid = request.match_info["sid"]
        self.session(sid)
        await self.close_session(sid)
        return web.json_response({"closed": sid})

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.json_response(self.metrics_report())

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        live = self.session(request.match_info["sid"])
        ws = web.WebSocketResponse(max_msg_size=self.limits.max_ws_message_bytes, heartbeat=20)
        await ws.prepare(request)
        live.sockets.add(ws)
        index = 0
        try:
            async for msg in ws:
                if msg.type == WSMsgType.BINARY:
                    try:
                        if len(msg.data) % 2:
                            raise AudioError(f"ws chunk {index}: {len(msg.data)} bytes is not whole int16 samples")
                        live.push(np.frombuffer(msg.data, dtype="<i2"), f"ws chunk {index}")
                    except (AudioError, SessionError) as e:
                        await ws.send_json({"type": "error", "error": str(e)})
                    index += 1
                elif msg.type == WSMsgType.TEXT:
                    try:
                        command = json.loads(msg.data)
                    except ValueError:
                        command = None
                    if isinstance(command, dict) and command.get("type") == "interrupt":
                        live.session.interrupt()
                        live.renderer.notify()
                    else:
                        await ws.send_json({"type": "error", "error": 'text messages: {"type": "interrupt"}'})
        finally:
            live.sockets.discard(ws)
        return ws


class ServerFull(Exception):
    """Admission refused: the message says why."""


class UploadTooLarge(ValueError):
    """An upload over the size or duration limit."""


def _err(message: str) -> str:
    return json.dumps({"error": message})


async def _json_body(request: web.Request) -> dict:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise web.HTTPBadRequest(text=_err("the body must be JSON"), content_type="application/json") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text=_err("the body must be a JSON object"), content_type="application/json")
    return body


async def _read_limited(request: web.Request, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in request.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > limit:
            raise UploadTooLarge(f"the upload is over the limit of {limit / 1e6:.1f} MB")
        chunks.append(chunk)
    return b"".join(chunks)


@web.middleware
async def _json_errors(request: web.Request, handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.content_type != "application/json":
            e.text = _err(e.reason if e.status != 413 else "the request is over the size limit")
            e.content_type = "application/json"
        raise
    except UnknownAvatar as e:
        return web.json_response({"error": str(e.args[0])}, status=404)
    except ServerFull as e:
        return web.json_response({"error": str(e)}, status=503)
    except UploadTooLarge as e:
        return web.json_response({"error": str(e)}, status=413)
    except (AudioError, TTSError, SessionError) as e:
        return web.json_response({"error": str(e)}, status=400)


def run(avatars: str, host: str = "127.0.0.1", port: int = 8000, max_sessions: int | None = None,
        backend: str = "auto", tts: str = "espeak", limits: Limits = Limits(), lookahead_rows: int | None = None,
        log_fn=print) -> None:
    """Load AVATARS, measure them, and serve until interrupted (the `embedtalk-sdk serve` command)."""
    from embedtalk_sdk.serve.media import restrict_ice_to_loopback
    from embedtalk_sdk.serve.tts import EspeakTTS

    if host in ("127.0.0.1", "localhost", "::1"):
        restrict_ice_to_loopback()
    registry = AvatarRegistry.load(avatars, backend=backend, log_fn=log_fn)
    engine = EspeakTTS() if tts == "espeak" else None
    server = Server(registry, max_sessions=max_sessions, tts=engine, limits=limits, lookahead_rows=lookahead_rows)
    for e in registry.entries():
        log_fn(f"avatar {e.id}: up to {server.admission.capacity(e)} sessions"
               + (" (--max-sessions)" if max_sessions is not None else " at its fps (measured)"))
    log_fn(f"serving {len(registry.ids)} avatar(s) at http://{host}:{port}/  (Ctrl-C stops)")
    web.run_app(server.app(), host=host, port=port, print=None, access_log=None)


class BackgroundServer:
    """A `Server` on its own event loop in a daemon thread (tests, benchmarks, embedding in an app).

        with BackgroundServer(server, port=0) as bg:   # port 0: any free port
            print(bg.url)
    """

    def __init__(self, server: Server, host: str = "127.0.0.1", port: int = 0) -> None:
        import threading

        self.server, self.host, self.port = server, host, int(port)
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="embedtalk-serve", daemon=True)
        self._runner: web.AppRunner | None = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._start())
        except BaseException as e:  # reported by __enter__
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_forever()

    async def _start(self) -> None:
        self._runner = web.AppRunner(self.server.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])  # the port chosen for port 0

    def call(self, coro, timeout: float = 30.0):
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def __enter__(self) -> "BackgroundServer":
        self._thread.start()
        self._ready.wait(60)
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc) -> None:
        if self._runner is not None:
            self.call(self._runner.cleanup(), timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
