"""Shared by the server tests: the server in a thread, a recording sink, an aiortc client, test
speech as wav bytes."""
from __future__ import annotations

import asyncio
import io
import json
import threading
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING

import numpy as np
import soundfile as sf

if TYPE_CHECKING:
    from aiohttp import web

    from embedtalk_sdk.serve import Server


class BackgroundServer:
    """A `Server` on its own event loop in a daemon thread, so a test can call it from its own.

        with BackgroundServer(server, port=0) as bg:   # port 0: any free port
            http("GET", bg.url + "/health")
    """

    def __init__(self, server: Server, host: str = "127.0.0.1", port: int = 0, ssl_context=None) -> None:
        self.server, self.host, self.port, self.ssl_context = server, host, int(port), ssl_context
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="embedtalk-serve", daemon=True)
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.Server | None = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://{self.host}:{self.port}"

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
        # As the command's `run` starts. Imported here: test_pipecat uses this module without `serve`.
        from aiohttp import web

        from embedtalk_sdk.serve.app import listen

        self._runner = web.AppRunner(self.server.app(), **self.server.runner_options())
        await self._runner.setup()
        self._listener = await listen(self._runner.server, self.host, self.port, self.ssl_context,
                                     self.server.limits.header_timeout_s)
        self.port = int(self._listener.sockets[0].getsockname()[1])  # the port chosen for port 0

    async def _stop(self) -> None:
        self._listener.close()
        await self._runner.cleanup()

    def call(self, coro, timeout: float = 30.0):
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def __enter__(self) -> BackgroundServer:
        self._thread.start()
        self._ready.wait(60)
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc) -> None:
        if self._runner is not None:
            self.call(self._stop(), timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


class RecordingSink:
    """A session sink that keeps what the session hands on (the frames a WebRTC sender would get)."""

    def __init__(self) -> None:
        self.frames: list[tuple[int, np.ndarray | None, float]] = []   # (n, frame or None if dropped, time)
        self.sound: list[tuple[int, np.ndarray]] = []                 # (n, its 40 ms of audio)

    def video(self, n, frame, t_in) -> None:
        self.frames.append((n, None if frame is None else frame.copy(), time.monotonic()))

    def audio(self, n, samples) -> None:
        self.sound.append((n, samples.copy()))


def wav_bytes(samples: np.ndarray, rate: int = 16000, subtype: str = "PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format="WAV", subtype=subtype)
    return buf.getvalue()


def http(method: str, url: str, body: bytes | dict | None = None, timeout: float = 30.0,
         headers: dict | None = None, content_type: str | None = None) -> tuple[int, dict]:
    """One request -> (status, JSON body). `headers` are added (e.g. Authorization, Origin)."""
    data, sent = None, {}
    if isinstance(body, dict):
        data, sent = json.dumps(body).encode(), {"Content-Type": "application/json"}
    elif body is not None:
        data, sent = body, {"Content-Type": content_type or "application/octet-stream"}
    sent.update(headers or {})
    req = urllib.request.Request(url, data=data, method=method, headers=sent)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


async def webrtc_client(url: str, avatar: str, headers: dict | None = None):
    """An aiortc peer that receives the avatar: -> (pc, session_id, received video frames list).
    `headers`: the client's credentials (Authorization or Cookie), sent with the session request."""
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    received: list = []
    audio_received: list = []

    async def pull(track, into) -> None:
        while True:
            try:
                frame = await track.recv()
            except Exception:
                return
            into.append((time.monotonic(), frame))

    @pc.on("track")
    def on_track(track) -> None:
        asyncio.ensure_future(pull(track, received if track.kind == "video" else audio_received))

    await pc.setLocalDescription(await pc.createOffer())
    loop = asyncio.get_running_loop()
    status, answer = await loop.run_in_executor(
        None, lambda: http("POST", url + "/sessions", {"avatar": avatar, "sdp": pc.localDescription.sdp, "type": "offer"},
                           headers=headers))
    if status != 201:
        await pc.close()
        return None, (status, answer), received, audio_received
    await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
    return pc, answer["session_id"], received, audio_received
