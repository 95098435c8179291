"""`serve` on a network: the token, client cookies and session ownership over every route, Origin
and Host checks, rate limits, read timeouts, HTTPS (self-signed and the redirect), ICE servers.

A real tiny avatar (conftest's trained_avatar), the real server on 127.0.0.1 (BackgroundServer),
real aiortc peers as clients; the server's log is captured and searched for the token."""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import socket
import ssl
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

pytest.importorskip("aiortc")

from serve_helpers import BackgroundServer, http, wav_bytes, webrtc_client  # noqa: E402

from embedtalk_sdk.runtime.audio.speech import synthesize_speech  # noqa: E402
from embedtalk_sdk.serve import AvatarRegistry, Limits, Server  # noqa: E402
from embedtalk_sdk.serve.access import COOKIE, LOOPBACK_NAMES, Access  # noqa: E402
from embedtalk_sdk.serve.app import Exposure  # noqa: E402
from embedtalk_sdk.serve.media import restrict_ice_to_loopback  # noqa: E402
from embedtalk_sdk.serve.tts import EspeakTTS  # noqa: E402

pytestmark = pytest.mark.timeout(600)  # loading + measuring the avatar: minutes on a busy 2-core machine

TOKEN = "t0ken-" + "Qx7vR2mK9pL4sW8n"   # what an operator would pass as --token
WRONG = "t0ken-" + "Qx7vR2mK9pL4sW8N"   # one character off


@pytest.fixture(scope="module")
def registry(trained_avatar) -> AvatarRegistry:
    return AvatarRegistry.load(trained_avatar["bundle"], backend="onnxruntime", log_fn=lambda m: None)


def avatar_id(registry: AvatarRegistry) -> str:
    return registry.ids[0]


def raw(method: str, url: str, headers: dict | None = None, body: bytes | None = None, context=None):
    """One request, redirects not followed -> (status, headers, body bytes)."""

    class Stay(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    handlers = [Stay()] + ([urllib.request.HTTPSHandler(context=context)] if context else [])
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.build_opener(*handlers).open(req, timeout=30) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def cookie_of(headers) -> str:
    value = headers["Set-Cookie"].split(";")[0]
    assert value.startswith(COOKIE + "=")
    return value


async def ws_status(url: str, headers: dict) -> int:
    """The status of a WebSocket handshake (101 when accepted)."""
    import aiohttp

    async with aiohttp.ClientSession() as client:
        try:
            ws = await client.ws_connect(url.replace("http", "ws", 1), headers=headers)
        except aiohttp.WSServerHandshakeError as e:
            return e.status
        await ws.close()
        return 101


def test_every_route_by_credentials(registry, caplog):
    """The table: every route and method x {no token, wrong token, forged cookie, another client,
    the right client}; the token is never in the log nor in a URL the server hands out."""
    caplog.set_level(logging.DEBUG)
    restrict_ice_to_loopback()
    limits = Limits(sessions_per_min=600, session_burst=50, requests_per_s=500, request_burst=500)
    server = Server(registry, max_sessions=4, tts=EspeakTTS(), limits=limits,
                    access=Access(TOKEN, hosts=LOOPBACK_NAMES))
    speech = synthesize_speech(1.0, seed=3).samples
    with BackgroundServer(server) as bg:
        url = bg.url
        # The page link: ?token= becomes an HttpOnly cookie and a redirect to the URL without it.
        status, headers, _ = raw("GET", f"{url}/?token={TOKEN}&autostart=1")
        assert status == 303 and headers["Location"] == "/?autostart=1", (status, dict(headers))
        assert "HttpOnly" in headers["Set-Cookie"] and "SameSite=Lax" in headers["Set-Cookie"]
        mine = cookie_of(headers)
        other = cookie_of(raw("GET", f"{url}/?token={TOKEN}")[1])  # a second browser: another client
        assert mine != other
        forged = mine.rsplit(".", 1)[0] + "." + "0" * 64
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        me = {"Cookie": mine}

        async def open_sessions():
            a = await webrtc_client(url, avatar_id(registry), headers=me)
            b = await webrtc_client(url, avatar_id(registry), headers={"Cookie": other})
            return a, b

        loop = asyncio.new_event_loop()
        (pc_a, sid, *_), (pc_b, sid_b, *_) = loop.run_until_complete(open_sessions())
        assert pc_a is not None and pc_b is not None, (sid, sid_b)
        assert len(sid) >= 22 and len(set(sid)) > 8  # >= 128 random bits, url-safe

        wav = wav_bytes(speech, 16000)
        bad_offer = json.dumps({"avatar": avatar_id(registry), "sdp": "v=0", "type": "offer"}).encode()
        routes = [  # (method, path, body, content type, what "works" means)
            ("GET", "/", None, None, 200),
            ("GET", "/static/app.js", None, None, 200),
            ("GET", "/static/app.css", None, None, 200),
            ("GET", "/avatars", None, None, 200),
            ("GET", "/metrics", None, None, 200),
            ("POST", "/sessions", bad_offer, "application/json", 400),
            ("POST", f"/sessions/{sid}/audio", wav, "audio/wav", 200),
            ("POST", f"/sessions/{sid}/speak", b'{"text": "Hello."}', "application/json", 200),
            ("POST", f"/sessions/{sid}/interrupt", None, None, 200),
            ("GET", f"/sessions/{sid}/ws", None, None, 101),
            ("DELETE", f"/sessions/{sid}", None, None, 200),  # last: it closes the session
        ]
        credentials = {"none": {}, "wrong token": {"Authorization": f"Bearer {WRONG}"},
                       "forged cookie": {"Cookie": forged}, "another client": {"Cookie": other}, "right": me}
        table = {}
        for method, path, body, ctype, works in routes:
            row = {}
            for who, creds in credentials.items():
                if who == "right" and method == "DELETE":
                    # the other client's session too: the right client cannot close it either
                    row["right, other's session"] = raw("DELETE", f"{url}/sessions/{sid_b}", me)[0]
                headers = dict(creds, **({"Content-Type": ctype} if ctype else {}))
                if path.endswith("/ws"):
                    row[who] = loop.run_until_complete(ws_status(url + path, headers))
                else:
                    status, got, text = raw(method, url + path, headers, body)
                    row[who] = status
                    for name in ("Content-Security-Policy", "X-Content-Type-Options", "Referrer-Policy"):
                        assert got[name], (method, path, name)
                    if who == "right" and path == "/metrics":
                        assert list(json.loads(text)["per_session"]) == [sid]  # only my session
            table[(method, path.replace(sid, "{mine}"))] = row
        status, _, _ = raw("GET", url + "/health")
        table[("GET", "/health")] = {"none": status}
        for pc in (pc_a, pc_b):
            loop.run_until_complete(pc.close())
        loop.close()
        sessions_left = list(server.sessions)

    print("\n".join(f"{m:6s} {p:28s} {row}" for (m, p), row in table.items()))
    for (method, path), row in table.items():
        if path == "/health":
            assert row == {"none": 200}
            continue
        works = next(w for m, p, _, _, w in routes if m == method and p.replace(sid, "{mine}") == path)
        assert row["none"] == 401 and row["wrong token"] == 401 and row["forged cookie"] == 401, (method, path, row)
        if "{mine}" in path:
            assert row["another client"] == 404, (method, path, row)  # not yours: as if it did not exist
        else:
            assert row["another client"] == works, (method, path, row)
        assert row["right"] == works, (method, path, row)
    assert table[("DELETE", "/sessions/{mine}")]["right, other's session"] == 404
    assert sid not in sessions_left
    log = caplog.text
    assert TOKEN not in log and WRONG not in log, "a token reached the log"
    assert forged.split("=", 1)[1] not in log and mine.split("=", 1)[1] not in log, "a cookie reached the log"
    refusals = [r for r in caplog.records if r.getMessage().startswith("refused ")]
    assert len(refusals) >= 3 * len(routes), "every refusal is a log line"
    assert all("\n" not in r.getMessage() and r.exc_info is None for r in refusals)


def test_origin_host_login_and_redirect(registry, caplog):
    caplog.set_level(logging.DEBUG)
    server = Server(registry, max_sessions=2, access=Access(TOKEN, hosts=LOOPBACK_NAMES),
                    limits=Limits(sessions_per_min=600, session_burst=50))
    with BackgroundServer(server) as bg:
        url, bearer = bg.url, {"Authorization": f"Bearer {TOKEN}"}

        async def scenario():
            pc, sid, *_ = await webrtc_client(url, avatar_id(registry), headers=bearer)
            own = f"http://127.0.0.1:{bg.port}"
            out = {"foreign": await ws_status(f"{url}/sessions/{sid}/ws", dict(bearer, Origin="https://evil.example")),
                   "null": await ws_status(f"{url}/sessions/{sid}/ws", dict(bearer, Origin="null")),
                   "same": await ws_status(f"{url}/sessions/{sid}/ws", dict(bearer, Origin=own))}
            await pc.close()
            return out

        ws = asyncio.run(scenario())
        assert ws == {"foreign": 403, "null": 403, "same": 101}, ws
        # A state-changing request from a foreign page is refused before anything else happens.
        status, body = http("POST", url + "/sessions", {"avatar": avatar_id(registry), "sdp": "v=0"},
                            headers=dict(bearer, Origin="https://evil.example"))
        assert status == 403 and "Origin" in body["error"]
        # DNS rebinding: a foreign name that resolves to 127.0.0.1 is not this loopback server.
        assert raw("GET", url + "/avatars", dict(bearer, Host=f"evil.example:{bg.port}"))[0] == 421
        absolute = send_raw(bg.port, f"GET http://evil.example/avatars HTTP/1.1\r\nHost: 127.0.0.1:{bg.port}\r\n"
                                     f"Authorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n".encode())
        assert absolute.startswith(b"HTTP/1.1 421"), absolute[:40]  # the target's host counts, not only Host
        # The login form posts the token (never in a URL).
        status, headers, _ = raw("POST", url + "/login", {"Content-Type": "application/x-www-form-urlencoded"},
                                 f"token={TOKEN}".encode())
        assert status == 303 and headers["Location"] == "/" and "HttpOnly" in headers["Set-Cookie"]
        status, _, page = raw("POST", url + "/login", {"Content-Type": "application/x-www-form-urlencoded"},
                              f"token={WRONG}".encode())
        assert status == 401 and b"not valid" in page and b"<form" in page
        status, _, body = raw("POST", url + "/login", {"Content-Type": "application/x-www-form-urlencoded"},
                              b"token=" + b"a" * 10_000)
        assert status == 413 and b"4 KiB" in body  # was a 500 (found by benchmarks/hostile_serve.py)
    assert TOKEN not in caplog.text and WRONG not in caplog.text

    # HTTP -> HTTPS: every path to the HTTPS port; a token sent in clear is dropped, not forwarded.
    from aiohttp import web

    from embedtalk_sdk.serve.tls import redirect_app

    async def redirect():
        runner = web.AppRunner(redirect_app(8443), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        loop = asyncio.get_running_loop()
        got = await loop.run_in_executor(None, raw, "GET", f"http://127.0.0.1:{port}/x/y?token={TOKEN}&autostart=1")
        await runner.cleanup()
        return got

    status, headers, _ = asyncio.run(redirect())
    assert status == 308 and headers["Location"] == "https://127.0.0.1:8443/x/y?autostart=1", dict(headers)


def test_rate_limits_answer_429_with_retry_after(registry, caplog):
    caplog.set_level(logging.WARNING)
    limits = Limits(sessions_per_min=1, session_burst=2, requests_per_s=0.1, request_burst=8)
    server = Server(registry, max_sessions=1, limits=limits)  # loopback, no token: limits apply all the same
    with BackgroundServer(server) as bg:
        body = {"avatar": avatar_id(registry), "sdp": asyncio.run(an_offer()), "type": "offer"}
        malformed = http("POST", bg.url + "/sessions", dict(body, sdp="v=0\r\nnot an offer"))
        creations = [http("POST", bg.url + "/sessions", body)[0] for _ in range(3)]
        # a malformed offer costs no creation; then: created, server full (1 session), over the limit
        assert malformed[0] == 400 and creations == [201, 503, 429], (malformed, creations)
        status, headers, _ = raw("POST", bg.url + "/sessions", {"Content-Type": "application/json"},
                                 json.dumps(body).encode())
        assert status == 429 and int(headers["Retry-After"]) >= 30  # one creation a minute
        statuses = [raw("GET", bg.url + "/health") for _ in range(5)]  # 5 requests so far; burst 8
        assert [s for s, _, _ in statuses] == [200, 200, 200, 429, 429], statuses
        assert 1 <= int(statuses[-1][1]["Retry-After"]) <= 10  # one request per 10 s comes back
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert sum(": 429 " in m for m in lines) == 4 and all(m.startswith("refused ") for m in lines), lines
    assert len(lines) == 6  # 400, 503, 4 x 429: one line each


async def an_offer() -> str:
    """A real browser-shaped offer (aiortc's), receiving video and audio."""
    from aiortc import RTCPeerConnection

    pc = RTCPeerConnection()
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


def test_rate_limiter_buckets():
    from embedtalk_sdk.serve.ratelimit import RateLimiter

    limiter = RateLimiter(rate=2.0, burst=3, max_clients=2)
    assert [limiter.take("a", now=0.0) for _ in range(4)] == [0.0, 0.0, 0.0, 0.5]  # the 4th waits for a token
    assert limiter.take("a", now=0.25) == pytest.approx(0.25)  # the refused take spent nothing
    assert limiter.take("a", now=0.5) == 0.0  # 2 per second came back
    assert RateLimiter.retry_after(0.25) == "1" and RateLimiter.retry_after(30.2) == "31"
    limiter.take("b", now=0.5)
    limiter.take("c", now=0.5)  # a third address: the least recently seen ("a", now empty) is forgotten
    assert len(limiter) == 2 and limiter.take("a", now=0.5) == 0.0


def send_raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def test_malformed_requests_are_one_log_line_each(registry, caplog):
    caplog.set_level(logging.DEBUG)
    server = Server(registry, max_sessions=1)
    malformed = [b"G\x00T / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",           # not HTTP: aiohttp's debug level
                 b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
                 b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Name: x\r\n\r\n",
                 b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(200)) + b"\r\n"]
    with BackgroundServer(server) as bg:
        answers = [send_raw(bg.port, data) for data in malformed]
    assert all(a.startswith((b"HTTP/1.1 400", b"HTTP/1.0 400", b"HTTP/1.1 431")) for a in answers), answers
    lines = [r for r in caplog.records if r.name.startswith(("embedtalk_sdk", "aiohttp")) and r.levelno >= logging.INFO]
    assert [r.getMessage().split(":")[0] for r in lines] == ["refused a malformed request from 127.0.0.1"] * 4, \
        [r.getMessage() for r in lines]
    assert all(r.exc_info is None for r in lines), "a traceback for a client's malformed request"


def test_slow_clients_are_cut_off(registry, caplog):
    """Slowloris: headers that never end, and a body that never comes, do not hold a connection."""
    caplog.set_level(logging.WARNING)
    server = Server(registry, max_sessions=1, limits=Limits(header_timeout_s=1.0, body_timeout_s=1.0))
    with BackgroundServer(server) as bg:
        def conn() -> socket.socket:
            return socket.create_connection(("127.0.0.1", bg.port), timeout=5)

        idle, partial, body = conn(), conn(), conn()
        partial.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        body.sendall(b"POST /sessions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"avatar\"")
        t0 = time.monotonic()
        partial.sendall(b"x")  # still trickling: no complete headers yet
        for s in (partial, idle):
            assert s.recv(100) == b"", "a connection without complete headers stays open"
        waited = time.monotonic() - t0
        answer = body.recv(1000)
        for s in (idle, partial, body):
            s.close()
    assert 0.5 < waited < 3.0, waited
    assert answer.startswith(b"HTTP/1.1 408"), answer[:60]
    assert any("408" in r.getMessage() for r in caplog.records)


def test_https_self_signed_and_ice_servers(registry, tmp_path):
    """--self-signed: the certificate names 127.0.0.1 and its fingerprint is the one printed;
    --ice-server reaches aiortc (it sends a STUN binding request to it) and the page."""
    from aioice import stun

    restrict_ice_to_loopback()
    cert = Exposure(self_signed=True).certificate("127.0.0.1")
    assert "127.0.0.1" in cert.names and "localhost" in cert.names
    stun_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stun_sock.bind(("127.0.0.1", 0))
    stun_sock.settimeout(10)
    ice = Exposure(ice_servers=(f"stun:127.0.0.1:{stun_sock.getsockname()[1]}",
                                "turn:alice:s3cret@127.0.0.1:9?transport=tcp")).check("127.0.0.1")
    server = Server(registry, max_sessions=1, ice_servers=ice[:1])
    seen = {}

    def stun_server() -> None:  # answers the binding request as a STUN server would
        data, addr = stun_sock.recvfrom(2048)
        request = stun.parse_message(data)
        seen["request"] = request.message_method == stun.Method.BINDING
        response = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.RESPONSE,
                                transaction_id=request.transaction_id)
        response.attributes["XOR-MAPPED-ADDRESS"] = addr
        stun_sock.sendto(bytes(response), addr)

    import threading

    responder = threading.Thread(target=stun_server, daemon=True)
    responder.start()
    with BackgroundServer(server, ssl_context=cert.context) as bg:
        assert bg.url.startswith("https://")
        der = ssl.get_server_certificate(("127.0.0.1", bg.port))
        digest = hashlib.sha256(ssl.PEM_cert_to_DER_cert(der)).hexdigest().upper()
        assert ":".join(digest[i:i + 2] for i in range(0, 64, 2)) == cert.fingerprint
        client = ssl.create_default_context()
        client.check_hostname, client.verify_mode = False, ssl.CERT_NONE  # as a browser told to trust it
        status, _, body = raw("GET", bg.url + "/avatars", context=client)
        assert status == 200 and json.loads(body)["ice_servers"] == [{"urls": f"stun:127.0.0.1:{stun_sock.getsockname()[1]}"}]
        status, headers, _ = raw("GET", bg.url + "/", context=client)
        assert status == 200 and "Secure" in headers["Set-Cookie"]  # the cookie stays on HTTPS

        async def offer():
            from aiortc import RTCPeerConnection

            pc = RTCPeerConnection()
            pc.addTransceiver("video", direction="recvonly")
            await pc.setLocalDescription(await pc.createOffer())
            loop = asyncio.get_running_loop()
            got = await loop.run_in_executor(None, lambda: raw(
                "POST", bg.url + "/sessions", {"Content-Type": "application/json"},
                json.dumps({"avatar": avatar_id(registry), "sdp": pc.localDescription.sdp, "type": "offer"}).encode(),
                client))
            await pc.close()
            return got

        status, _, answer = asyncio.run(offer())
        assert status == 201, answer
        responder.join(10)
    stun_sock.close()
    assert seen.get("request"), "aiortc never asked the --ice-server"
    assert ice[1] == {"urls": "turn:127.0.0.1:9?transport=tcp", "username": "alice", "credential": "s3cret"}


def test_cli_refuses_a_network_bind_without_a_token(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from embedtalk_sdk.cli import app

    monkeypatch.delenv("EMBEDTALK_TOKEN", raising=False)
    runner = CliRunner()
    result = runner.invoke(app, ["serve", str(tmp_path), "--host", "0.0.0.0"])
    assert result.exit_code == 2 and "without a token" in result.output and "--no-auth" in result.output
    result = runner.invoke(app, ["serve", str(tmp_path), "--host", "0.0.0.0", "--token", "short"])
    assert result.exit_code == 2 and "at least 16" in result.output and "short" not in result.output.split("error")[1]
    result = runner.invoke(app, ["serve", str(tmp_path), "--host", "0.0.0.0", "--no-auth"])  # allowed: on to the folder
    assert result.exit_code == 2 and "token" not in result.output
    result = runner.invoke(app, ["serve", str(tmp_path), "--http-redirect-port", "8080"])
    assert result.exit_code == 2 and "HTTPS" in result.output
    result = runner.invoke(app, ["serve", str(tmp_path), "--ice-server", "turn:turn.example.com:3478"])
    assert result.exit_code == 2 and "USER:SECRET" in result.output


def test_upload_refuses_form_content_types(registry):
    """What a foreign HTML form can post (urlencoded, multipart, text/plain) never reaches a decoder."""
    server = Server(registry, max_sessions=1, limits=Limits(sessions_per_min=600, session_burst=50))
    sink_owner = "anonymous"  # loopback without a token: requests without credentials are this client
    from serve_helpers import RecordingSink

    with BackgroundServer(server) as bg:
        live = bg.call(_open(server, sink_owner, RecordingSink()))
        wav = wav_bytes(np.zeros(16000, np.float32), 16000)
        got = {ct: http("POST", f"{bg.url}/sessions/{live.session.id}/audio", wav, content_type=ct)[0]
               for ct in ("application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "text/plain",
                          "application/json", "audio/wav", "application/octet-stream")}
        bg.call(server.close_session(live.session.id))
    assert got == {"application/x-www-form-urlencoded": 415, "multipart/form-data; boundary=x": 415,
                   "text/plain": 415, "application/json": 415, "audio/wav": 200, "application/octet-stream": 200}, got


async def _open(server: Server, owner: str, sink):
    return server.open_session(server.registry.ids[0], sink, start=True, owner=owner)


def test_cli_prints_library_lines_as_written(capsys):
    """A fingerprint holding ":CD:" came out with a disc emoji (CI, stop 27); markup-like text must survive too."""
    from embedtalk_sdk import cli

    line = "SHA-256 fingerprint 7F:83:1E:CD:43:91:05 [red]not markup[/red] :smile:"
    cli.say(line)
    cli.console.print("wrote 1E:CD:43")
    err = capsys.readouterr().err
    assert line in err and "wrote 1E:CD:43" in err, err
