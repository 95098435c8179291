"""Shared by the server tests: a recording sink, an aiortc client, test speech as wav bytes."""
from __future__ import annotations

import asyncio
import io
import json
import time
import urllib.error
import urllib.request

import numpy as np
import soundfile as sf


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
