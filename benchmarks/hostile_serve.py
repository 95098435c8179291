"""Hostile traffic against `embedtalk-sdk serve`, beside a live session (issue 23).

    python benchmarks/hostile_serve.py AVATAR.etk [-o hostile_serve.json]

Starts the real command (`python -m embedtalk_sdk.cli serve AVATAR --max-sessions 1`, a token in
EMBEDTALK_TOKEN) on 127.0.0.1 only, opens one live session as a browser would (an aiortc peer
receiving video and audio, fed speech over the session's WebSocket in real time), then sends the
hostile cases below, each with the status it must get: credentials missing, wrong or forged,
another client's session, path tricks on every id parameter, malformed and oversized SDP and
JSON, malformed headers and request lines, wrong content types and methods, oversized bodies,
WebSocket abuse (foreign Origin, subprotocols, odd, oversized and invalid frames, floods, too many
sockets), slowloris connections (silent, trickling headers, trickling bodies), a flood of requests
and 1 000 session-creation attempts. Bounded: ~1 700 requests, ~2 minutes, 127.0.0.1 only.

Measured: every case's result against its expected one (the table); the live session's fps as its
client receives it, per second, during the hostile phase; the server's RSS and open file
descriptors before the phase and after it (once slow connections were cut off); the server's log
lines during the phase, each of which must be one refusal line.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import random
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from embedtalk_sdk.runtime.audio.speech import synthesize_speech

HOST = "127.0.0.1"
PACE_S = 0.07          # between paced cases: ~14 requests/s, under the default 20/s per address


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def proc_stats(pid: int) -> tuple[float, int]:
    """(RSS in MB, open file descriptors) of a process."""
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024
    return round(rss, 1), len(os.listdir(f"/proc/{pid}/fd"))


class Log:
    """The server's output lines (stdout and stderr), with the time each arrived."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[tuple[float, str]] = []
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()

    def _read(self, proc) -> None:
        for line in iter(proc.stdout.readline, ""):
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def since(self, t: float) -> list[str]:
        return [line for when, line in self.lines if when >= t]


# ------------------------------------------------------------------ raw HTTP over a socket


async def raw_http(port: int, data: bytes, timeout: float = 10.0, then: bytes = b"") -> str:
    """Send bytes, read the answer: its status code as text, or "closed" / "timeout"."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), timeout)
    except OSError as e:
        return f"connect failed: {e}"
    try:
        writer.write(data)
        await writer.drain()
        if then:
            writer.write(then)
            await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
        if not line:
            return "closed"
        m = re.match(rb"HTTP/1\.[01] (\d{3})", line)
        return m.group(1).decode() if m else f"unparsed {line[:30]!r}"
    except asyncio.TimeoutError:
        return "timeout"
    except (ConnectionError, OSError):
        return "closed"
    finally:
        writer.close()


def request_bytes(method: str, path: str, headers: dict, body: bytes = b"", port: int = 0) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    if body and "Content-Length" not in headers and "Transfer-Encoding" not in headers:
        head += f"Content-Length: {len(body)}\r\n"
    return head.encode("latin-1") + b"Connection: close\r\n\r\n" + body


async def ws_raw(port: int, path: str, headers: dict, frame: bytes) -> str:
    """A WebSocket handshake by hand, then one raw frame: -> the close code the server sends."""
    key = base64.b64encode(os.urandom(16)).decode()
    hs = dict(headers, Upgrade="websocket", Connection="Upgrade", **{"Sec-WebSocket-Key": key,
                                                                     "Sec-WebSocket-Version": "13"})
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        head = f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hs.items())
        writer.write(head.encode() + b"\r\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        if b" 101 " not in answer.split(b"\r\n")[0]:
            return "handshake " + answer.split(b"\r\n")[0].decode()
        writer.write(frame)
        await writer.drain()
        while True:  # skip the server's event messages until its close frame
            first = await asyncio.wait_for(reader.readexactly(2), 10)
            n = first[1] & 0x7F
            if n == 126:
                n = int.from_bytes(await reader.readexactly(2), "big")
            elif n == 127:
                n = int.from_bytes(await reader.readexactly(8), "big")
            payload = await reader.readexactly(n)
            if first[0] & 0x0F == 0x8:
                return f"close {int.from_bytes(payload[:2], 'big')}" if len(payload) >= 2 else "close"
    except (asyncio.IncompleteReadError, ConnectionError):
        return "closed"
    except asyncio.TimeoutError:
        return "timeout"
    finally:
        writer.close()


# ------------------------------------------------------------------ the live session


class LiveClient:
    """The session that must keep its frame rate: an aiortc peer fed speech in real time."""

    def __init__(self, url: str, avatar: str, auth: dict) -> None:
        self.url, self.avatar, self.auth = url, avatar, auth
        self.frames: list[float] = []
        self.sid: str | None = None
        self.tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        import aiohttp
        from aiortc import RTCPeerConnection, RTCSessionDescription

        self.http = http = aiohttp.ClientSession()  # its own connections: the cases' are closed apart

        self.pc = pc = RTCPeerConnection()
        pc.addTransceiver("video", direction="recvonly")
        pc.addTransceiver("audio", direction="recvonly")

        @pc.on("track")
        def on_track(track) -> None:
            self.tasks.append(asyncio.ensure_future(self._pull(track)))

        await pc.setLocalDescription(await pc.createOffer())
        self.offer = pc.localDescription.sdp
        async with http.post(self.url + "/sessions", json={"avatar": self.avatar, "sdp": self.offer, "type": "offer"},
                             headers=self.auth) as r:
            answer = await r.json()
            if r.status != 201:
                raise RuntimeError(f"the live session was refused: {r.status} {answer}")
        self.sid = answer["session_id"]
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
        self.ws = await http.ws_connect(f"{self.url}/sessions/{self.sid}/ws", headers=self.auth)
        self.tasks.append(asyncio.ensure_future(self._feed()))

    async def _pull(self, track) -> None:
        while True:
            try:
                await track.recv()
            except Exception:
                return
            if track.kind == "video":
                self.frames.append(time.monotonic())

    async def _feed(self) -> None:
        speech = synthesize_speech(6.0, seed=21).samples
        pcm = (np.concatenate([speech, np.zeros(16000, np.float32)]) * 32767).astype("<i2")
        t0, k = time.monotonic(), 0
        while True:
            chunk = pcm[(k * 320) % (pcm.size - 320):][:320]
            await self.ws.send_bytes(chunk.tobytes())
            k += 1
            await asyncio.sleep(max(0.0, t0 + k * 0.02 - time.monotonic()))

    def fps_per_second(self, t0: float, t1: float) -> list[int]:
        """Frames received in each whole second of [t0, t1)."""
        frames = np.asarray(self.frames)
        return [int(((frames >= t0 + i) & (frames < t0 + i + 1)).sum()) for i in range(int(t1 - t0))]

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await self.ws.close()
        await self.pc.close()
        await self.http.close()


# ------------------------------------------------------------------ the cases


class Cases:
    """Runs cases and keeps the table: (group, case, expected, got, ok)."""

    def __init__(self, url: str, port: int, http, auth: dict, live: LiveClient, other_cookie: str) -> None:
        self.url, self.port, self.http, self.auth, self.live = url, port, http, auth, live
        self.other = {"Cookie": other_cookie}
        self.rows: list[dict] = []
        self.http_refusals = 0   # answers >= 400 the server should have logged (one line each)

    def record(self, group: str, case: str, expected, got, ok: bool | None = None, refusals: int = 0) -> None:
        exp = expected if isinstance(expected, (set, frozenset)) else {expected}
        ok = (got in exp or str(got) in {str(e) for e in exp}) if ok is None else ok
        self.rows.append({"group": group, "case": case, "expected": "/".join(sorted(map(str, exp))),
                          "got": str(got), "ok": bool(ok)})
        self.http_refusals += refusals

    async def req(self, method: str, path: str, headers: dict | None = None, body=None, json_body=None,
                  ctype: str | None = None) -> tuple[int, dict, str]:
        h = dict(headers or {})
        if ctype:
            h["Content-Type"] = ctype
        data = json.dumps(json_body).encode() if json_body is not None else body
        if json_body is not None and "Content-Type" not in h:
            h["Content-Type"] = "application/json"
        async with self.http.request(method, self.url + path, headers=h, data=data, allow_redirects=False) as r:
            text = await r.text(errors="replace")
            return r.status, dict(r.headers), text

    async def http_case(self, group: str, case: str, expected, method: str, path: str, **kw) -> None:
        try:
            status, _, _ = await self.req(method, path, **kw)
        except Exception as e:  # a refused connection is a result too
            status = f"error {type(e).__name__}"
        self.record(group, case, expected, status, refusals=int(isinstance(status, int) and status >= 400))
        await asyncio.sleep(PACE_S)

    async def raw_case(self, group: str, case: str, expected, data: bytes, then: bytes = b"") -> None:
        got = await raw_http(self.port, data, then=then)
        self.record(group, case, expected, got, refusals=int(got.isdigit() and int(got) >= 400))
        await asyncio.sleep(PACE_S)


async def run_cases(c: Cases, token: str) -> dict:
    sid, port = c.live.sid, c.port
    bearer = c.auth
    session_routes = [("POST", "/sessions/{}/audio", b"RIFF", "audio/wav"),
                      ("POST", "/sessions/{}/speak", b'{"text": "hi"}', "application/json"),
                      ("POST", "/sessions/{}/interrupt", None, None),
                      ("DELETE", "/sessions/{}", None, None),
                      ("GET", "/sessions/{}/ws", None, None)]
    plain_routes = [("GET", "/", None, None), ("GET", "/static/app.js", None, None), ("GET", "/avatars", None, None),
                    ("GET", "/metrics", None, None),
                    ("POST", "/sessions", b'{"avatar": "x", "sdp": "v=0"}', "application/json")]
    routes = plain_routes + [(m, p.format(sid), b, t) for m, p, b, t in session_routes]

    # access: nothing, a wrong token, a forged cookie, another scheme, the token where it is not taken
    wrong = {"Authorization": "Bearer " + token[:-1] + ("A" if token[-1] != "A" else "B")}
    forged = {"Cookie": "embedtalk_client=" + c.other["Cookie"].split("=", 1)[1].rsplit(".", 1)[0] + "." + "f" * 64}
    for m, p, b, t in routes:
        await c.http_case("access", f"no token: {m} {p.replace(sid, '{live}')}", 401, m, p, body=b, ctype=t)
        await c.http_case("access", f"wrong token: {m} {p.replace(sid, '{live}')}", 401, m, p, body=b, ctype=t,
                          headers=wrong)
    for m, p, b, t in routes[:4]:
        await c.http_case("access", f"forged cookie: {m} {p}", 401, m, p, body=b, ctype=t, headers=forged)
    await c.http_case("access", "Basic scheme with the token", 401, "GET", "/avatars",
                      headers={"Authorization": "Basic " + base64.b64encode(f"u:{token}".encode()).decode()})
    await c.http_case("access", "token in the query of an API route", 401, "GET", f"/avatars?token={token}")

    # another client (its own valid cookie) on the live session: as if it did not exist
    for m, p, b, t in session_routes:
        await c.http_case("ownership", f"another client: {m} {p.format('{live}')}", 404, m, p.format(sid), body=b,
                          ctype=t, headers=c.other)

    # path tricks on every id parameter (session ids in paths, the avatar id in the body, static names)
    tricks = ["..", "..%2F..%2Fetc%2Fpasswd", "%2e%2e%2fmetrics", sid + "%00", sid[:-1], sid + "x", "A" * 3000,
              "%C3%9Fession", "'%20OR%201=1--", "%25", sid.upper() if sid.upper() != sid else sid.lower()]
    for m, p, b, t in session_routes:
        for trick in tricks:
            # ".." resolves to another route in the client (never to a session): 404, or 405 for DELETE /
            exp = {404, 405} if trick == ".." else {404}
            await c.http_case("path tricks", f"{m} {p.format(trick[:24])}", exp, m, p.format(trick), body=b, ctype=t,
                              headers=bearer)
    for bad in ["../outside/secret", "/etc/passwd", "avatar.etk/../../x", 7, None, ["avatar"], {"$ne": 1}, "A" * 5000,
                "AVATAR", "avatar\u0000"]:
        await c.http_case("path tricks", f"avatar id {json.dumps(bad)[:28]}", 404, "POST", "/sessions", headers=bearer,
                          json_body={"avatar": bad, "sdp": c.live.offer, "type": "offer"})
    for name in ["..%2Fapp.py", "app.js%00", "login.html", "index.html", "%2e%2e%2f__init__.py"]:
        await c.http_case("path tricks", f"static {name}", 404, "GET", f"/static/{name}", headers=bearer)
    for path in ["/static/../app.py", "/sessions/../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd"]:
        await c.raw_case("path tricks", f"raw {path}", 404, request_bytes("GET", path, bearer, port=port))

    # SDP: malformed, oversized, wrong shapes
    offer = c.live.offer
    sdps = {"empty": "", "v=0 only": "v=0", "no video": offer.replace("m=video", "m=vidio"),
            "binary junk": os.urandom(600).decode("latin-1"), "broken m= line": "v=0\r\nm=video x y z\r\n",
            "broken rtpmap": "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96\r\n",
            "broken candidate": offer.replace("a=mid:0", "a=mid:0\r\na=candidate:1 1 udp x y z typ host", 1),
            "broken fingerprint": re.sub(r"a=fingerprint:\S+ \S+", "a=fingerprint:sha-256", offer),
            "ssrc-group without ids": "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=ssrc-group:FID\r\n"}
    for name, sdp in sdps.items():
        # an offer aiortc's parser reads gets as far as admission: the server is full (503)
        expected = {400, 503} if name == "ssrc-group without ids" else 400
        await c.http_case("SDP", f"offer: {name}", expected, "POST", "/sessions", headers=bearer,
                          json_body={"avatar": c.live.avatar, "sdp": sdp, "type": "offer"})
    big = offer + "a=x-junk:" + "A" * 70_000 + "\r\n"
    await c.http_case("SDP", "offer of 70 KB", 413, "POST", "/sessions", headers=bearer,
                      json_body={"avatar": c.live.avatar, "sdp": big, "type": "offer"})
    await c.http_case("SDP", "sdp a number", 400, "POST", "/sessions", headers=bearer,
                      json_body={"avatar": c.live.avatar, "sdp": 12, "type": "offer"})
    await c.http_case("SDP", "type answer", 400, "POST", "/sessions", headers=bearer,
                      json_body={"avatar": c.live.avatar, "sdp": offer, "type": "answer"})

    # JSON
    js = "application/json"
    bodies = {"not JSON": b"{avatar: tiny", "a JSON array": b"[1, 2]", "nested 60 000 deep": b"[" * 60_000,
              "a 60 000-digit number": b"1" * 60_000, "UTF-8 BOM": b"\xef\xbb\xbf{}", "invalid UTF-8": b'{"a": "\xff\xfe"}',
              "truncated": b'{"avatar": "av', "empty": b""}
    for name, body in bodies.items():
        await c.http_case("JSON", f"/sessions: {name}", 400, "POST", "/sessions", headers=bearer, body=body, ctype=js)
    for name, body in {"text a list": {"text": ["hi"]}, "text NaN": b'{"text": NaN}', "2001 characters": {"text": "a" * 2001},
                       "blank text": {"text": "   "}}.items():
        kw = {"json_body": body} if isinstance(body, dict) else {"body": body, "ctype": js}
        await c.http_case("JSON", f"/speak: {name}", 400, "POST", f"/sessions/{sid}/speak", headers=bearer, **kw)

    # headers and request lines (aiohttp's parser refuses these before any route)
    hb = "".join(f"X-H{i}: {i}\r\n" for i in range(200))
    raws = {
        "200 headers": (f"GET /health HTTP/1.1\r\nHost: {HOST}\r\n{hb}\r\n".encode(), {"400", "431"}),
        "a 10 KB header": (f"GET /health HTTP/1.1\r\nHost: {HOST}\r\nX-Big: {'a' * 10_000}\r\n\r\n".encode(), {"400", "431"}),
        "a 10 KB request line": (f"GET /{'a' * 10_000} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode(), {"400", "414"}),
        "NUL in a header": (f"GET /health HTTP/1.1\r\nHost: {HOST}\r\nX-A: a\x00b\r\n\r\n".encode(), "400"),
        "space in a header name": (f"GET /health HTTP/1.1\r\nHost: {HOST}\r\nBad Name: x\r\n\r\n".encode(), "400"),
        "two Content-Lengths": (f"POST /sessions HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n"
                                "hello!!".encode(), "400"),
        "Content-Length and chunked": (f"POST /sessions HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 4\r\n"
                                       "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n".encode(), "400"),
        "bad chunk size": (f"POST /sessions/{sid}/audio HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {token}\r\n"
                           "Content-Type: audio/wav\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n".encode(),
                           {"400", "closed"}),
        "negative Content-Length": (f"POST /sessions HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: -5\r\n\r\n".encode(), "400"),
        "NUL in the method": (f"G\x00T /health HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode(), "400"),
        "HTTP/2 preface": (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", {"400", "505"}),
        "a TLS ClientHello": (bytes.fromhex("16030100a5010000a10303") + os.urandom(160), {"400", "closed"}),
        "HTTP/1.0 without Host": (f"GET /avatars HTTP/1.0\r\nAuthorization: Bearer {token}\r\n\r\n".encode(), "421"),
        "a foreign Host (DNS rebinding)": (f"GET /avatars HTTP/1.1\r\nHost: evil.example:{port}\r\n"
                                           f"Authorization: Bearer {token}\r\n\r\n".encode(), "421"),
        "absolute URI to another host": (f"GET http://evil.example/avatars HTTP/1.1\r\nHost: {HOST}\r\n"
                                         f"Authorization: Bearer {token}\r\n\r\n".encode(), {"421", "400"}),
        "bare LF line ends": (f"GET /health HTTP/1.1\nHost: {HOST}\n\n".encode(), {"400", "200"}),
    }
    for name, (data, expected) in raws.items():
        await c.raw_case("headers", name, expected, data)
    for origin in ["https://evil.example", "null", f"http://{HOST}:{port}.evil.example"]:
        await c.http_case("headers", f"Origin {origin[:30]} on interrupt", 403, "POST", f"/sessions/{sid}/interrupt",
                          headers=dict(bearer, Origin=origin))

    # content types and methods
    for path, ctype in [("/sessions", "text/plain"), ("/sessions", "application/x-www-form-urlencoded"),
                        ("/sessions", "multipart/form-data; boundary=x"), (f"/sessions/{sid}/speak", "text/plain"),
                        (f"/sessions/{sid}/audio", "application/x-www-form-urlencoded"),
                        (f"/sessions/{sid}/audio", "multipart/form-data; boundary=x"),
                        (f"/sessions/{sid}/audio", "text/plain"), (f"/sessions/{sid}/audio", "application/json"),
                        ("/login", "application/json")]:
        await c.http_case("content type", f"{path.replace(sid, '{live}')} as {ctype.split(';')[0]}", 415, "POST", path,
                          headers=bearer, body=b'{"text": "hi"}', ctype=ctype)
    for m, p in [("PUT", "/sessions"), ("PATCH", "/avatars"), ("TRACE", "/"), ("OPTIONS", "/metrics"),
                 ("DELETE", "/avatars"), ("POST", "/health")]:
        await c.http_case("method", f"{m} {p}", 405, m, p, headers=bearer)

    # oversized bodies
    await c.raw_case("oversized", "audio: Content-Length 11 MB", 413, request_bytes(
        "POST", f"/sessions/{sid}/audio", dict(bearer, **{"Content-Type": "audio/wav", "Content-Length": str(11 << 20)}),
        port=port), then=b"RIFF" + b"\0" * 1000)
    chunk = b"\0" * (1 << 20)
    chunked = b"".join(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n" for _ in range(11)) + b"0\r\n\r\n"
    await c.raw_case("oversized", "audio: 11 MB chunked, no length", 413, request_bytes(
        "POST", f"/sessions/{sid}/audio", dict(bearer, **{"Content-Type": "audio/wav", "Transfer-Encoding": "chunked"}),
        port=port), then=chunked)
    await c.http_case("oversized", "speak: 100 KB of JSON", 413, "POST", f"/sessions/{sid}/speak", headers=bearer,
                      json_body={"text": "a" * 100_000})
    await c.http_case("oversized", "login form: 10 KB", 413, "POST", "/login",
                      body=b"token=" + b"a" * 10_000, ctype="application/x-www-form-urlencoded")

    # WebSocket
    import aiohttp

    ws_url = f"{c.url}/sessions/{sid}/ws"

    async def ws_handshake(headers: dict, **kw) -> str:
        try:
            ws = await c.http.ws_connect(ws_url, headers=headers, **kw)
        except aiohttp.WSServerHandshakeError as e:
            return str(e.status)
        await ws.close()
        return "101"

    for name, headers, expected in [("foreign Origin", dict(bearer, Origin="https://evil.example"), "403"),
                                    ("Origin null", dict(bearer, Origin="null"), "403"),
                                    ("no token", {}, "401"), ("another client", c.other, "404"),
                                    ("a subprotocol", dict(bearer, **{"Sec-WebSocket-Protocol": "chat"}), "400")]:
        got = await ws_handshake(headers)
        c.record("WebSocket", f"handshake: {name}", expected, got, refusals=int(got != "101"))
        await asyncio.sleep(PACE_S)

    async def ws_messages(send, expect_close: bool) -> str:
        ws = await c.http.ws_connect(ws_url, headers=bearer, max_msg_size=0)
        try:
            await send(ws)
            while True:
                msg = await ws.receive(timeout=10)
                if msg.type == aiohttp.WSMsgType.TEXT:
                    event = json.loads(msg.data)
                    if event.get("type") == "error" and not expect_close:
                        return "error event"
                elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                    return f"close {ws.close_code}"
                elif msg.type == aiohttp.WSMsgType.ERROR:
                    return f"close {ws.close_code}"
        except asyncio.TimeoutError:
            return "timeout"
        finally:
            await ws.close()

    c.record("WebSocket", "odd-length binary (not whole int16)", "error event",
             await ws_messages(lambda ws: ws.send_bytes(b"\x01\x02\x03"), False))
    c.record("WebSocket", "text that is not a command", "error event",
             await ws_messages(lambda ws: ws.send_str("rm -rf /"), False))
    c.record("WebSocket", "a 100 KB message", "close 1009",
             await ws_messages(lambda ws: ws.send_bytes(b"\0" * 100_000), True))

    async def flood(ws) -> None:
        for _ in range(1000):
            await ws.send_bytes(b"\0" * 640)

    c.record("WebSocket", "1 000 messages at once", "close 1008", await ws_messages(flood, True), refusals=1)
    auth_lines = "".join(f"{k}: {v}\r\n" for k, v in bearer.items()).strip()
    name_value = dict(line.split(": ", 1) for line in auth_lines.split("\r\n"))
    c.record("WebSocket", "a frame with RSV1 set", "close 1002",
             await ws_raw(port, f"/sessions/{sid}/ws", name_value, b"\xc2\x80" + os.urandom(4)))
    c.record("WebSocket", "an unmasked client frame", {"close 1002", "closed"},
             await ws_raw(port, f"/sessions/{sid}/ws", name_value, b"\x82\x02ab"))
    c.record("WebSocket", "an unknown opcode", "close 1002",
             await ws_raw(port, f"/sessions/{sid}/ws", name_value, b"\x83\x80" + os.urandom(4)))
    extra = []
    for _ in range(3):  # the live client holds one: 4 in all is the limit
        extra.append(await c.http.ws_connect(ws_url, headers=bearer))
    got = await ws_handshake(bearer)
    c.record("WebSocket", "a 5th socket on one session", "429", got, refusals=int(got != "101"))
    for ws in extra:
        await ws.close()
    return {}


async def slowloris(port: int, kind: str, token: str) -> tuple[str, float]:
    """One slow connection: -> (what the server did, after how many seconds)."""
    t0 = time.monotonic()
    try:
        reader, writer = await asyncio.open_connection(HOST, port)
    except OSError as e:
        return f"connect failed {e}", 0.0
    try:
        if kind == "silent":
            data = await asyncio.wait_for(reader.read(100), 60)
            return ("closed" if not data else data[:12].decode()), time.monotonic() - t0
        if kind == "headers":
            head = f"GET /avatars HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {token}\r\n".encode()
            for b in head + b"X-Slow: " + b"a" * 200:
                writer.write(bytes([b]))
                await writer.drain()
                try:
                    data = await asyncio.wait_for(reader.read(100), 0.5)
                except asyncio.TimeoutError:
                    continue
                return ("closed" if not data else data[:12].decode()), time.monotonic() - t0
            return "still open", time.monotonic() - t0
        # a body that trickles: complete headers, then a byte every 0.5 s
        writer.write(f"POST /sessions HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {token}\r\n"
                     "Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n".encode())
        await writer.drain()
        for _ in range(200):
            writer.write(b" ")
            await writer.drain()
            try:
                data = await asyncio.wait_for(reader.read(100), 0.5)
            except asyncio.TimeoutError:
                continue
            return ("closed" if not data else data[9:12].decode()), time.monotonic() - t0
        return "still open", time.monotonic() - t0
    except (ConnectionError, OSError):
        return "closed", time.monotonic() - t0
    finally:
        writer.close()


async def floods(c: Cases) -> None:
    """1 000 session-creation attempts with a real offer, then a burst of 300 plain requests."""
    sem = asyncio.Semaphore(8)
    offer = {"avatar": c.live.avatar, "sdp": c.live.offer, "type": "offer"}

    async def one(method: str, path: str, **kw) -> tuple[int, str | None]:
        async with sem:
            status, headers, _ = await c.req(method, path, headers=c.auth, **kw)
            return status, headers.get("Retry-After")

    await asyncio.sleep(3.0)  # the request bucket refills from the cases before
    results = await asyncio.gather(*[one("POST", "/sessions", json_body=offer) for _ in range(1000)])
    statuses = [s for s, _ in results]
    counts = {str(s): statuses.count(s) for s in sorted(set(statuses))}
    retry_ok = all(ra is not None and int(ra) >= 1 for s, ra in results if s == 429)
    c.record("floods", "1 000 session creations (a real offer; the live one fills --max-sessions 1)",
             "503/429", json.dumps(counts), ok=set(counts) <= {"503", "429"} and counts.get("429", 0) >= 990 and retry_ok,
             refusals=len(statuses))
    await asyncio.sleep(3.0)
    t0 = time.monotonic()
    results = await asyncio.gather(*[one("GET", "/avatars") for _ in range(300)])
    allowed = 40 + 20 * (time.monotonic() - t0) + 1  # the default burst, and 20/s refilled meanwhile
    statuses = [s for s, _ in results]
    counts = {str(s): statuses.count(s) for s in sorted(set(statuses))}
    c.record("floods", "300 requests at once", "<= burst + 20/s, then 429", json.dumps(counts),
             ok=set(counts) <= {"200", "429"} and counts.get("200", 0) <= allowed, refusals=statuses.count(429))


async def main_async(args, port: int, token: str, proc: subprocess.Popen, log: Log) -> dict:
    import aiohttp

    url = f"http://{HOST}:{port}"
    auth = {"Authorization": f"Bearer {token}"}
    connector = aiohttp.TCPConnector(limit=32)
    async with aiohttp.ClientSession(connector=connector) as http:
        deadline = time.monotonic() + 900  # loading and measuring the avatar: minutes on a busy machine
        while True:
            try:
                async with http.get(url + "/health") as r:
                    if r.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the server did not start:\n" + "\n".join(line for _, line in log.lines))
            await asyncio.sleep(0.5)
        async with http.get(url + "/avatars", headers=auth) as r:
            avatar = (await r.json())["avatars"][0]["id"]
        async with http.get(f"{url}/?token={token}", allow_redirects=False) as r:  # a second browser's cookie
            other = r.headers["Set-Cookie"].split(";")[0]
        http.cookie_jar.clear()  # the benchmark's own requests carry only what each case says
        live = LiveClient(url, avatar, auth)
        await live.start()
        await asyncio.sleep(args.warmup)
        t_warm = time.monotonic()
        await asyncio.sleep(5.0)
        baseline = live.fps_per_second(t_warm, time.monotonic())
        rss0, fds0 = proc_stats(proc.pid)
        stats = [(rss0, fds0)]  # the server's (RSS, fds) at the start and after each round
        failed: list[dict] = []
        for round_ in range(args.rounds):
            if round_:  # the per-client buckets refill (sessions per minute) before the same cases again
                await asyncio.sleep(61.0)
                http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=32))
            t0 = time.monotonic()
            slow = [asyncio.ensure_future(slowloris(port, kind, token))
                    for kind in ["silent"] * 20 + ["headers"] * 20 + ["body"] * 5]
            c = Cases(url, port, http, auth, live, other)
            http.cookie_jar.clear()
            await run_cases(c, token)
            await floods(c)
            slow_results = await asyncio.gather(*slow)
            t1 = time.monotonic()
            for kind, group in (("silent", slow_results[:20]), ("headers", slow_results[20:40]), ("body", slow_results[40:])):
                worst = max(t for _, t in group)
                what = sorted({w for w, _ in group})
                if kind == "body":
                    ok = what == ["408"] and worst < 40
                    c.record("slowloris", "5 bodies trickling 2 bytes/s", "408 within 30 s", f"{what} after <= {worst:.1f} s",
                             ok=ok, refusals=len(group))
                else:
                    ok = what == ["closed"] and worst < 13
                    name = "20 connections sending nothing" if kind == "silent" else "20 connections trickling headers"
                    c.record("slowloris", name, "closed within 10 s", f"{what} after <= {worst:.1f} s", ok=ok)
            during = live.fps_per_second(t0, t1)
            await asyncio.sleep(2.0)
            async with http.get(url + "/metrics", headers=auth) as r:
                metrics = await r.json()
            await http.connector.close()  # and the server closes what is left idle after its header timeout (10 s)
            t_after = time.monotonic()
            await asyncio.sleep(12.0)
            after = live.fps_per_second(t_after, time.monotonic())
            stats.append(proc_stats(proc.pid))
            failed += [dict(r, round=round_ + 1) for r in c.rows if not r["ok"]]
            if round_:
                await http.close()
        lines = log.since(t0)
        await live.stop()
    refusal_lines = [line for line in lines if " refused " in line]
    other_lines = [line for line in lines if " refused " not in line]
    mine = metrics["per_session"].get(live.sid, {})
    return {"cases": c.rows, "n_cases": len(c.rows), "n_requests_in_floods": 1300,
            "failed": failed, "rounds": args.rounds,
            "live_fps_baseline_per_s": baseline, "live_fps_during_per_s": during, "live_fps_after_per_s": after,
            "live_fps_min_during": min(during) if during else None,
            "live_fps_mean_during": round(float(np.mean(during)), 2) if during else None,
            "server_live_session": {k: mine.get(k) for k in ("frames_sent", "dropped_frames", "latency_ms_p50")},
            "hostile_phase_s": round(t1 - t0, 1),
            "rss_mb": [r for r, _ in stats], "open_fds": [f for _, f in stats],
            "log_lines_during": len(lines), "refusal_lines": len(refusal_lines),
            "refusals_expected": c.http_refusals, "other_log_lines": other_lines[:20],
            "token_in_log": any(token in line for _, line in log.lines)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("avatar", type=Path)
    ap.add_argument("-o", "--out", type=Path, default=Path("hostile_serve.json"))
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds of the live session before measuring")
    ap.add_argument("--rounds", type=int, default=1, help="hostile phases one after another (a minute apart): "
                    "RSS after each tells growth per round from a one-time warm-up")
    args = ap.parse_args()
    token = base64.urlsafe_b64encode(os.urandom(24)).decode().rstrip("=")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "embedtalk_sdk.cli", "serve", str(args.avatar), "--host", HOST, "--port", str(port),
         "--max-sessions", "1", "--backend", "onnxruntime"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ, EMBEDTALK_TOKEN=token))
    log = Log(proc)
    try:
        report = asyncio.run(main_async(args, port, token, proc, log))
    finally:
        proc.terminate()
        proc.wait(20)
    report.update(machine=f"{platform.node()} {os.cpu_count()} cores, load average {os.getloadavg()}",
                  avatar=str(args.avatar), date=time.strftime("%Y-%m-%d %H:%M"))
    args.out.write_text(json.dumps(report, indent=1))
    print(f"{'group':12s} {'case':58s} {'expected':18s} {'got':34s} ok")
    for r in report["cases"]:
        print(f"{r['group']:12s} {r['case'][:58]:58s} {r['expected'][:18]:18s} {r['got'][:34]:34s} {'yes' if r['ok'] else 'NO'}")
    print(f"\n{report['n_cases']} cases (the floods: 1 300 requests) x {report['rounds']} round(s), "
          f"{len(report['failed'])} not as expected; "
          f"hostile phase {report['hostile_phase_s']} s")
    print(f"live session fps received per second: before {report['live_fps_baseline_per_s']}, during: min "
          f"{report['live_fps_min_during']}, mean {report['live_fps_mean_during']}, after "
          f"{report['live_fps_after_per_s']}")
    print(f"server RSS at the start and after each round {report['rss_mb']} MB; open fds {report['open_fds']}")
    print(f"server log during the phase: {report['log_lines_during']} lines, {report['refusal_lines']} refusal lines "
          f"for {report['refusals_expected']} refusals; other lines: {report['other_log_lines']}; token in the log: "
          f"{report['token_in_log']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    random.seed(0)
    main()
