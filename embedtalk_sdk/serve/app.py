"""The HTTP/WebRTC server: aiohttp routes over sessions, renderers and admission.

    GET  /health                   {"ok": true}: the one route that needs no token
    GET  /                         the web page (static/index.html, app.js, app.css; no CDN, works offline);
                                   /?token=T trades the token for a client cookie (303 to the URL without it)
    POST /login                    the login page's form (token=T) -> the cookie
    GET  /avatars                  [{id, width, height, fps, backend, capacity, ...}]
    POST /sessions                 {"avatar": id, "sdp": offer, "type": "offer"} -> {"session_id", "sdp", "type"}
    POST /sessions/{id}/audio      body: an audio file (wav, flac, mp3, ...) -> the avatar says it
    POST /sessions/{id}/speak      {"text": "..."} -> offline TTS -> the avatar says it
    POST /sessions/{id}/interrupt  drop queued speech; the mouth closes from the next frame
    DELETE /sessions/{id}          close
    GET  /sessions/{id}/ws         WebSocket: binary = 16 kHz mono int16 PCM (live), text =
                                   {"type": "interrupt"}; the server sends events as JSON
    GET  /metrics                  sessions, frames_sent, dropped_frames, latency_ms_p50/p99, per_session
                                   (the caller's own sessions)

Every route but /health needs the token (`Authorization: Bearer T`) or the client cookie when the
server has one (guard.py, access.py); a session answers only to the client that opened it.
Errors are JSON {"error": "..."} with 400 (bad request or audio), 401 (no or wrong token), 403
(foreign Origin), 404 (unknown avatar, or no such session of yours), 408 (body too slow), 413
(upload too large or too long), 415 (wrong content type), 429 (rate limit; Retry-After) and 503
(server full).
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
from embedtalk_sdk.runtime.errors import EmbedTalkError
from embedtalk_sdk.serve.access import LOOPBACK_NAMES, OPEN_CLIENT, Access, check_exposure, is_loopback
from embedtalk_sdk.serve.avatars import Admission, AvatarRegistry, UnknownAvatar
from embedtalk_sdk.serve.guard import CLIENT, Guard, OneLineLogger, printable, within
from embedtalk_sdk.serve.media import (SDP_ERRORS, SessionMedia, check_offer, consume_microphone, parse_ice_server,
                                       rtc_ice_servers)
from embedtalk_sdk.serve.metrics import ServerMetrics
from embedtalk_sdk.serve.ratelimit import RateLimiter
from embedtalk_sdk.serve.renderer import AvatarRenderer
from embedtalk_sdk.serve.session import LOOKAHEAD_ROWS, Session, SessionError
from embedtalk_sdk.serve.tts import TTS, TTSError

log = logging.getLogger("embedtalk_sdk.serve")

STATIC = Path(__file__).with_name("static")
STATIC_FILES = {"app.js": "text/javascript", "app.css": "text/css"}  # /static/{name}: this table, no paths
JSON_TYPES = ("application/json",)
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data", "text/plain")  # what a foreign form can post


@dataclass
class Limits:
    """What one request may bring."""

    max_upload_bytes: int = 10 * 1024 * 1024
    max_upload_s: float = 60.0
    max_text_chars: int = 2000
    max_ws_message_bytes: int = 64 * 1024      # 2 s of 16 kHz int16 per message
    max_json_bytes: int = 64 * 1024            # a JSON body (an SDP offer is 3-20 KB)
    connect_timeout_s: float = 30.0            # a session whose peer never connects is closed
    header_timeout_s: float = 10.0             # a connection sends its request headers (and TLS handshake) within
    body_timeout_s: float = 30.0               # ... and a request body within this
    requests_per_s: float = 20.0               # per peer address, bursts of request_burst (429 beyond)
    request_burst: int = 40
    sessions_per_min: float = 10.0             # session creations per peer address, bursts of session_burst
    session_burst: int = 5
    ws_messages_per_s: float = 100.0           # per WebSocket (a microphone sends 50), bursts of ws_message_burst
    ws_message_burst: int = 200
    max_sockets_per_session: int = 4


class LiveSession:
    """A session with its peer connection, media and WebSocket clients."""

    def __init__(self, session: Session, media: SessionMedia | None, pc: RTCPeerConnection | None,
                 renderer: AvatarRenderer, owner: str | None = None) -> None:
        self.session, self.media, self.pc, self.renderer = session, media, pc, renderer
        self.owner = owner  # the client id that opened it (access.Client.id); None: opened in process
        self.sockets: set[web.WebSocketResponse] = set()
        self.tasks: set[asyncio.Task] = set()

    def push(self, pcm: np.ndarray, name: str) -> None:
        self.session.push(pcm, name)
        self.renderer.notify()


class Server:
    """Sessions over the avatars of `registry`. Use `app()` for the aiohttp application; tests and
    benchmarks may also open sessions in process with `open_session(avatar_id, sink)`."""

    def __init__(self, registry: AvatarRegistry, max_sessions: int | None = None, tts: TTS | None = None,
                 limits: Limits = Limits(), utilisation: float = 0.8, lookahead_rows: int | None = None,
                 access: Access | None = None, ice_servers: list[dict] = ()) -> None:
        """max_sessions: None = admission by measured frame time (avatars.Admission).
        lookahead_rows: None = every frame waits for its whole audio window (frames as `speak`'s);
        fewer rows trade fidelity for latency, 20 ms a row (session.StreamState).
        access: who may use it (None: everyone, as `Access()`). ice_servers: `parse_ice_server`
        dicts, for aiortc and the page (none: host candidates only)."""
        self.registry, self.lookahead_rows = registry, lookahead_rows
        self.access = access if access is not None else Access()
        self.ice_servers = list(ice_servers)
        self.guard = Guard(self.access, limits.requests_per_s, limits.request_burst, limits.sessions_per_min,
                           limits.session_burst, limits.body_timeout_s)
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

    def open_session(self, avatar: str, sink: Any, start: bool = True, owner: str | None = None) -> LiveSession:
        """A session whose frames and sound go to `sink` (see `Session`), admitted like any other;
        `owner`: the client allowed to use it over HTTP (None: none, it is driven in process)."""
        entry = self._admit(avatar)
        loop = self._loop

        def on_event(event: dict) -> None:
            if loop is not None and not loop.is_closed():
                loop.call_soon_threadsafe(self._broadcast, event)

        session = Session(entry.id, entry.avatar, sink, on_event=on_event, lookahead_rows=self.lookahead_rows)
        live = LiveSession(session, sink if isinstance(sink, SessionMedia) else None, None, self.renderers[entry.id],
                           owner)
        self.sessions[session.id] = live
        live.renderer.add(session)
        if start:
            session.start()
        return live

    async def create_webrtc_session(self, avatar: Any, offer: RTCSessionDescription,
                                    owner: str = OPEN_CLIENT) -> tuple[LiveSession, Any]:
        entry = self._admit(avatar)
        loop = asyncio.get_running_loop()
        self._loop = loop
        media = SessionMedia(loop, entry.avatar.fps, None)  # metrics set below
        live = self.open_session(entry.id, media, start=False, owner=owner)
        media.video_track.metrics = media.audio_track.metrics = live.session.metrics
        pc = RTCPeerConnection(RTCConfiguration(iceServers=rtc_ice_servers(self.ice_servers)))
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
            except SDP_ERRORS as e:
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

    def session(self, sid: str, owner: str | None = None) -> LiveSession:
        """The live session `sid` of client `owner` (None: any). Another client's session is as
        unknown as a closed one (404): ids are not confirmed to anyone but their owner."""
        live = self.sessions.get(sid)
        if live is None or (owner is not None and live.owner != owner):
            raise web.HTTPNotFound(text=_err(f"no session {printable(sid, 60)!r} of yours (closed, or never opened)"),
                                   content_type="application/json")
        return live

    def metrics_report(self, owner: str | None = None) -> dict:
        """Totals over all sessions; `per_session` lists the sessions of `owner` (None: all)."""
        per = {sid: s.session.info() for sid, s in self.sessions.items() if owner is None or s.owner == owner}
        report = self.metrics.report(per, [s.session.metrics for s in self.sessions.values()])
        report["sessions"] = len(self.sessions)
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
        lim = self.limits
        app = web.Application(client_max_size=lim.max_upload_bytes + 1024 * 1024, middlewares=[_json_errors])
        self.guard.install(app)
        app.add_routes([
            web.get("/health", self._health),
            web.get("/", self._index),
            web.get("/static/{name}", self._static),
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

    def runner_options(self) -> dict:
        """aiohttp's server options: a connection that has not sent a request's headers within
        header_timeout_s of connecting (or of its last response) is closed; aiohttp's refusals of
        malformed requests are one log line each; no access log (a query may hold the token)."""
        return {"access_log": None, "keepalive_timeout": self.limits.header_timeout_s, "logger": OneLineLogger()}

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def _index(self, request: web.Request) -> web.Response:
        return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def _static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in STATIC_FILES:
            raise web.HTTPNotFound(text=_err("no such file"), content_type="application/json")
        return web.FileResponse(STATIC / name, headers={"Cache-Control": "no-cache", "Content-Type": STATIC_FILES[name]})

    async def _avatars(self, request: web.Request) -> web.Response:
        out = [dict(e.info(), capacity=self.admission.capacity(e)) for e in self.registry.entries()]
        return web.json_response({"avatars": out, "tts": self.tts is not None, "ice_servers": self.ice_servers,
                                  "limits": {"max_upload_bytes": self.limits.max_upload_bytes,
                                             "max_upload_s": self.limits.max_upload_s}})

    def _mine(self, request: web.Request) -> LiveSession:
        return self.session(request.match_info["sid"], request[CLIENT].id)

    async def _create(self, request: web.Request) -> web.Response:
        body = await _json_body(request, self.limits.body_timeout_s, self.limits.max_json_bytes)
        if body.get("type", "offer") != "offer" or not isinstance(body.get("sdp"), str):
            raise web.HTTPBadRequest(text=_err('give {"avatar": id, "sdp": "...", "type": "offer"}'),
                                     content_type="application/json")
        self.registry.get(body.get("avatar"))  # an unknown avatar (404) costs no creation
        try:
            check_offer(body["sdp"])  # nor does a malformed offer: checked before any peer connection
        except ValueError as e:
            raise web.HTTPBadRequest(text=_err(str(e)), content_type="application/json") from None
        wait = self.guard.creations.take(request.remote or "?")
        if wait:  # what is limited is the expensive part: a peer connection, its keys and ICE
            raise web.HTTPTooManyRequests(text=_err("too many sessions opened from this address"),
                                          content_type="application/json",
                                          headers={"Retry-After": RateLimiter.retry_after(wait)})
        live, answer = await self.create_webrtc_session(body.get("avatar"), RTCSessionDescription(body["sdp"], "offer"),
                                                        owner=request[CLIENT].id)
        return web.json_response({"session_id": live.session.id, "avatar": live.session.avatar_id,
                                  "sdp": answer.sdp, "type": answer.type}, status=201)

    async def _audio(self, request: web.Request) -> web.Response:
        live = self._mine(request)
        if request.content_type in FORM_TYPES + JSON_TYPES:
            raise web.HTTPUnsupportedMediaType(text=_err(f"an upload is an audio file, not {request.content_type}"),
                                               content_type="application/json")
        if request.content_length is not None and request.content_length > self.limits.max_upload_bytes:
            raise UploadTooLarge(f"the upload is {request.content_length / 1e6:.1f} MB; the limit is "
                                 f"{self.limits.max_upload_bytes / 1e6:.1f} MB")
        data = await within(_read_limited(request, self.limits.max_upload_bytes), self.limits.body_timeout_s)
        samples = await self.decode_upload(data)
        queued = live.session.say(samples)
        live.renderer.notify()
        return web.json_response({"seconds": round(samples.shape[0] / SAMPLE_RATE, 3), "queued_s": round(queued, 3)})

    async def _speak(self, request: web.Request) -> web.Response:
        live = self._mine(request)
        body = await _json_body(request, self.limits.body_timeout_s, self.limits.max_json_bytes)
        samples = await self.synthesize(body.get("text"))
        queued = live.session.say(samples)
        live.renderer.notify()
        return web.json_response({"seconds": round(samples.shape[0] / SAMPLE_RATE, 3), "queued_s": round(queued, 3)})

    async def _interrupt(self, request: web.Request) -> web.Response:
        live = self._mine(request)
        live.session.interrupt()
        live.renderer.notify()
        return web.json_response({"interrupted": True})

    async def _delete(self, request: web.Request) -> web.Response:
        live = self._mine(request)
        await self.close_session(live.session.id)
        return web.json_response({"closed": live.session.id})

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.json_response(self.metrics_report(request[CLIENT].id))

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        live = self._mine(request)
        if "Sec-WebSocket-Protocol" in request.headers:
            raise web.HTTPBadRequest(text=_err("this WebSocket speaks no subprotocol"), content_type="application/json")
        if len(live.sockets) >= self.limits.max_sockets_per_session:
            raise web.HTTPTooManyRequests(text=_err(f"a session has at most {self.limits.max_sockets_per_session} "
                                                    "WebSockets"), content_type="application/json",
                                          headers={"Retry-After": "5"})
        ws = web.WebSocketResponse(max_msg_size=self.limits.max_ws_message_bytes, heartbeat=20)
        await ws.prepare(request)
        live.sockets.add(ws)
        flood = RateLimiter(self.limits.ws_messages_per_s, self.limits.ws_message_burst, max_clients=1)
        index = 0
        try:
            async for msg in ws:
                if msg.type in (WSMsgType.BINARY, WSMsgType.TEXT) and flood.take("ws"):
                    self.guard.refused(request, 429, "WebSocket message flood: closed")
                    await ws.close(code=1008, message=b"too many messages")
                    break
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


class ServerFull(EmbedTalkError):
    """Admission refused: the message says why."""


class UploadTooLarge(EmbedTalkError, ValueError):
    """An upload over the size or duration limit."""


def _err(message: str) -> str:
    return json.dumps({"error": message})


async def _json_body(request: web.Request, timeout_s: float, max_bytes: int) -> dict:
    if request.content_type not in JSON_TYPES:
        raise web.HTTPUnsupportedMediaType(text=_err(f"the body must be application/json, not {request.content_type}"),
                                           content_type="application/json")
    if request.content_length is not None and request.content_length > max_bytes:
        raise UploadTooLarge(f"the body is {request.content_length} bytes; the limit is {max_bytes}")
    data = await within(_read_limited(request, max_bytes), timeout_s)
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: [[[[... nested past the stack
        raise web.HTTPBadRequest(text=_err("the body must be JSON"), content_type="application/json") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text=_err("the body must be a JSON object"), content_type="application/json")
    return body


async def _read_limited(request: web.Request, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in request.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > limit:
            raise UploadTooLarge(f"the body is over the limit of {limit / 1e6:.1f} MB" if limit >= 100_000
                                 else f"the body is over the limit of {limit} bytes")
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


@dataclass
class Exposure:
    """How `run` faces the network: access, TLS, ICE. The defaults are a loopback server without a
    token; `check` refuses a network bind without a token unless no_auth says so."""

    token: str | None = None
    no_auth: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    self_signed: bool = False
    http_redirect_port: int | None = None
    ice_servers: tuple[str, ...] = ()
    allow_origins: tuple[str, ...] = ()

    def check(self, host: str) -> list[dict]:
        """Refuse a contradiction or an open network bind (ValueError); -> the parsed ICE servers."""
        check_exposure(host, self.token, self.no_auth)
        if self.self_signed and (self.tls_cert or self.tls_key):
            raise ValueError("--self-signed makes its own certificate: leave out --tls-cert/--tls-key")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("--tls-cert and --tls-key go together")
        if self.http_redirect_port is not None and not (self.self_signed or self.tls_cert):
            raise ValueError("--http-redirect-port redirects to HTTPS: give --tls-cert/--tls-key or --self-signed")
        return [parse_ice_server(u) for u in self.ice_servers]

    def certificate(self, host: str):
        from embedtalk_sdk.serve.tls import load_certificate, self_signed

        if self.self_signed:
            return self_signed(host)
        return load_certificate(Path(self.tls_cert), Path(self.tls_key)) if self.tls_cert else None

    def access(self, host: str) -> Access:
        # A loopback server answers only to loopback names (a DNS-rebinding page is refused).
        hosts = tuple(LOOPBACK_NAMES) + (host,) if is_loopback(host) else None
        return Access(self.token, hosts=hosts, origins=self.allow_origins)


async def listen(handler_factory, host: str, port: int, ssl_context=None, handshake_timeout_s: float = 10.0):
    """Listen on host:port with aiohttp's protocol factory (`AppRunner.server`); a TLS handshake
    must finish within handshake_timeout_s (asyncio's default is 60 s)."""
    loop = asyncio.get_running_loop()
    extra = {"ssl_handshake_timeout": handshake_timeout_s} if ssl_context is not None else {}
    return await loop.create_server(handler_factory, host, port, ssl=ssl_context, reuse_address=True, **extra)


def run(avatars: str, host: str = "127.0.0.1", port: int = 8000, max_sessions: int | None = None,
        backend: str = "auto", tts: str = "espeak", limits: Limits = Limits(),
        lookahead_rows: int | None = LOOKAHEAD_ROWS, log_fn=print, exposure: Exposure = Exposure()) -> None:
    """Load AVATARS, measure them, and serve until interrupted (the `embedtalk-sdk serve` command).
    Refuses (ValueError) an unsafe or contradictory `exposure` before loading anything."""
    from embedtalk_sdk.serve.media import restrict_ice_to_loopback
    from embedtalk_sdk.serve.tts import EspeakTTS

    ice_servers = exposure.check(host)
    cert = exposure.certificate(host)
    if is_loopback(host):
        restrict_ice_to_loopback()
    _log_to_stderr()
    registry = AvatarRegistry.load(avatars, backend=backend, log_fn=log_fn)
    engine = EspeakTTS() if tts == "espeak" else None
    server = Server(registry, max_sessions=max_sessions, tts=engine, limits=limits, lookahead_rows=lookahead_rows,
                    access=exposure.access(host), ice_servers=ice_servers)
    for e in registry.entries():
        log_fn(f"avatar {e.id}: up to {server.admission.capacity(e)} sessions"
               + (" (--max-sessions)" if max_sessions is not None else " at its fps (measured)"))
    scheme = "https" if cert else "http"
    shown = f"[{host}]" if ":" in host else host
    url = f"{scheme}://{shown}:{port}/"

    async def serve() -> None:
        runner = web.AppRunner(server.app(), **server.runner_options())
        await runner.setup()
        listeners = [await listen(runner.server, host, port, cert.context if cert else None, limits.header_timeout_s)]
        redirect = None
        if exposure.http_redirect_port is not None:
            from embedtalk_sdk.serve.tls import redirect_app

            redirect = web.AppRunner(redirect_app(port), access_log=None, keepalive_timeout=limits.header_timeout_s,
                                     logger=OneLineLogger())
            await redirect.setup()
            listeners.append(await listen(redirect.server, host, exposure.http_redirect_port))
        if cert:
            log_fn(f"TLS certificate{' (self-signed, made now)' if exposure.self_signed else ''} for "
                   f"{', '.join(cert.names)}; SHA-256 fingerprint {cert.fingerprint}")
        if exposure.token:
            log_fn(f"access: by token. Give people the link {url}?token=<the token> (the page trades it for a "
                   "cookie and drops it from the address); API clients send Authorization: Bearer <the token>")
        else:
            log_fn("access: open (no token): " + ("anyone who can reach the port can use it (--no-auth)"
                                                  if not is_loopback(host) else "loopback only"))
        if redirect is not None:
            log_fn(f"http://{shown}:{exposure.http_redirect_port}/ redirects to {url}")
        log_fn(f"serving {len(registry.ids)} avatar(s) at {url}  (Ctrl-C stops)")
        try:
            await asyncio.Event().wait()
        finally:
            for listener in listeners:
                listener.close()
            if redirect is not None:
                await redirect.cleanup()
            await runner.cleanup()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass


def _log_to_stderr() -> None:
    """The server's own lines (refusals, sessions) on stderr; other libraries' at warning level."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    log.setLevel(logging.INFO)
