"""The real browser test: Debian's headless Chromium opens `/?autostart=1` with a fake microphone
playing a test sentence, over the page's own WebRTC code against the running server.

Checks: the page's <video> plays; /metrics counts >= 20 frames/s sent for that session; a
screenshot taken while the sentence plays shows the avatar (the video's area looks like the
avatar's own frame, not black or blank). Screenshots are kept in the test's tmp folder
(EMBEDTALK_SCREENSHOTS=folder keeps copies there). Chromium is driven over the DevTools protocol
on a WebSocket (aiohttp); nothing is downloaded.

The second test runs the real `embedtalk-sdk serve --self-signed` with a token, as on a LAN: the
page without the token shows the login message and opens no session; the ?token= link loads it
over HTTPS (the certificate accepted by flag, as a user accepts it once), the token leaves the
address and the history, and the avatar talks as above; the token never reaches the server's output.
"""
from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import shutil
import re
import secrets
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("aiortc")

from serve_helpers import BackgroundServer, http, wav_bytes  # noqa: E402

from embedtalk_sdk.runtime.audio.speech import synthesize_speech  # noqa: E402
from embedtalk_sdk.serve import AvatarRegistry, Server  # noqa: E402
from embedtalk_sdk.serve.media import restrict_ice_to_loopback  # noqa: E402
from embedtalk_sdk.serve.tts import EspeakTTS  # noqa: E402

pytestmark = pytest.mark.timeout(300)


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Cdp:
    """A minimal DevTools-protocol client for one page target."""

    def __init__(self, ws) -> None:
        self.ws, self.next_id = ws, 0

    async def call(self, method: str, **params):
        self.next_id += 1
        my = self.next_id
        await self.ws.send_str(json.dumps({"id": my, "method": method, "params": params}))
        while True:
            msg = json.loads((await self.ws.receive(timeout=30)).data)
            if msg.get("id") == my:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    async def eval(self, expr: str):
        r = await self.call("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        return r["result"].get("value")


VIDEO_STATE = """(() => { const v = document.getElementById('video'); const r = v.getBoundingClientRect();
  return {readyState: v.readyState, paused: v.paused, t: v.currentTime, w: v.videoWidth, h: v.videoHeight,
          session: window.embedtalkSession || null, status: document.getElementById('status').textContent,
          rect: [r.left, r.top, r.width, r.height], dpr: window.devicePixelRatio}; })()"""


def need_chromium() -> str:
    browser = chromium()
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: .ci/run installs Debian's chromium before the tests")
        pytest.skip("needs Debian's chromium (apt-get install chromium)")
    return browser


def fake_microphone(tmp_path: Path) -> Path:
    """A wav of a test sentence and 0.5 s of silence, for chromium's fake microphone (it loops)."""
    sentence = synthesize_speech(4.0, seed=11).samples
    mic = tmp_path / "sentence.wav"
    mic.write_bytes(wav_bytes(np.concatenate([sentence, np.zeros(8000, np.float32)]), 16000))
    return mic


def launch(browser: str, profile: Path, mic: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--remote-debugging-port=0",
         "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
         f"--use-file-for-fake-audio-capture={mic}", "--autoplay-policy=no-user-gesture-required",
         "--allow-loopback-in-peer-connection", "--disable-features=WebRtcHideLocalIpsWithMdns",
         "--window-size=900,700", *extra, "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def keep_screenshots(shots: Path) -> None:
    keep = os.environ.get("EMBEDTALK_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        for p in shots.iterdir():
            shutil.copy(p, Path(keep) / p.name)


async def page_metrics(cdp: "Cdp") -> dict:
    """GET /metrics from inside the page: with its client cookie, so per_session has its session."""
    return await cdp.eval("fetch('/metrics').then((r) => r.json())")


def test_headless_chromium_autostart_with_fake_microphone(trained_avatar, tmp_path):
    browser = need_chromium()
    restrict_ice_to_loopback()
    registry = AvatarRegistry.load(trained_avatar["bundle"], backend="onnxruntime", log_fn=lambda m: None)
    mic = fake_microphone(tmp_path)
    shots = tmp_path / "shots"
    shots.mkdir()
    server = Server(registry, max_sessions=2, tts=EspeakTTS())
    with BackgroundServer(server) as bg:
        profile = tmp_path / "profile"
        proc = launch(browser, profile, mic)
        try:
            result = asyncio.run(_drive(bg.url, profile, shots))
        finally:
            stop(proc)
    keep_screenshots(shots)

    state, per = result["state"], result["metrics"]
    assert state["readyState"] >= 2 and not state["paused"] and state["t"] > 1.0, state
    assert (state["w"], state["h"]) == (registry.get(registry.ids[0]).avatar.width,) * 2, state
    assert per["fps"] >= 20, per
    assert per["speaking"] or result["spoke"], "the fake microphone's sentence never reached the avatar"
    check_screenshot(result["shot"], state, registry.get(registry.ids[0]).avatar)
    c = result["controls"]
    assert c["tts"].startswith("saying") and "of speech" in c["tts"], c
    assert c["upload"] == "saying 2 s of audio", c
    assert c["after_interrupt"] != "error" and c["sessions_after_stop"] == 0, c


class DevTools:
    """The page target of a chromium started by `launch`, over its DevTools WebSocket."""

    def __init__(self, profile: Path) -> None:
        self.profile = profile

    async def __aenter__(self) -> Cdp:
        import aiohttp

        port_file = self.profile / "DevToolsActivePort"
        for _ in range(300):
            if port_file.exists() and port_file.read_text().strip():
                break
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        self.client = aiohttp.ClientSession()
        async with self.client.get(f"http://127.0.0.1:{port}/json/list") as r:
            targets = await r.json()
        page = next(t for t in targets if t["type"] == "page")
        self.ws = await self.client.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=64 * 1024 * 1024)
        cdp = Cdp(self.ws)
        await cdp.call("Page.enable")
        return cdp

    async def __aexit__(self, *exc) -> None:
        await self.ws.close()
        await self.client.close()


async def wait_for_playing(cdp: Cdp, state_js: str, timeout: float = 40) -> dict | None:
    """Poll the page's video state (`state_js`) until it plays (data, not paused, past 1 s) or `timeout`
    passes; the last state."""
    state, deadline = None, time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = await cdp.eval(state_js)
        if state and state["readyState"] >= 2 and not state["paused"] and state["t"] > 1.0:
            break
        await asyncio.sleep(0.25)
    return state


async def screenshot(cdp: Cdp, path: Path) -> Path:
    """The page as a PNG at `path`."""
    path.write_bytes(base64.b64decode((await cdp.call("Page.captureScreenshot", format="png"))["data"]))
    return path


async def _talking(cdp: Cdp, shots: Path, prefix: str = "") -> dict:
    """Wait for the autostarted session's video, then watch it speak at >= 20 fps; a screenshot."""
    state = await wait_for_playing(cdp, VIDEO_STATE)
    assert state and state["session"], f"no session started: {state}"
    spoke, shot, metrics = False, None, None
    for i in range(20):  # while the sentence plays (the fake microphone loops it)
        per = (await page_metrics(cdp))["per_session"].get(state["session"])
        if per is None:
            break
        metrics = per
        spoke = spoke or per["speaking"]
        if per["speaking"] and shot is None and per["fps"] >= 20:
            shot = await screenshot(cdp, shots / f"{prefix}speaking_{i}.png")
            state = await cdp.eval(VIDEO_STATE)
        if shot is not None and i >= 8:
            break
        await asyncio.sleep(0.5)
    final = await cdp.eval(VIDEO_STATE)
    if shot is None:  # keep evidence for the failure message
        await screenshot(cdp, shots / f"{prefix}no_speech.png")
    assert shot is not None, f"never saw the session speaking at >= 20 fps: {metrics}, {final}"
    return {"state": final, "metrics": metrics, "spoke": spoke, "shot": shot}


async def _drive(url: str, profile: Path, shots: Path) -> dict:
    async with DevTools(profile) as cdp:
        await cdp.call("Page.navigate", url=url + "/?autostart=1")
        result = await _talking(cdp, shots)
        result["controls"] = await _use_the_controls(cdp, url, shots / "upload.wav")
        return result


async def _wait_status(cdp: Cdp, prefix: str, timeout: float = 20) -> str:
    end = time.monotonic() + timeout
    text = ""
    while time.monotonic() < end:
        text = await cdp.eval("document.getElementById('status').textContent")
        if text.startswith(prefix):
            return text
        await asyncio.sleep(0.2)
    raise AssertionError(f"the page's status never became {prefix!r}: {text!r}")


async def _use_the_controls(cdp: Cdp, url: str, wav: Path) -> dict:
    """The page's buttons: type a sentence (TTS), upload a wav, interrupt, stop (frees the session)."""
    out = {}
    await cdp.eval("document.getElementById('text').value = 'Hello, I am speaking from the page.'")
    await cdp.eval("document.getElementById('say').click()")
    out["tts"] = await _wait_status(cdp, "saying")
    wav.write_bytes(wav_bytes(synthesize_speech(2.0, seed=4).samples, 16000))
    doc = await cdp.call("DOM.getDocument")
    node = await cdp.call("DOM.querySelector", nodeId=doc["root"]["nodeId"], selector="#file")
    await cdp.call("DOM.setFileInputFiles", files=[str(wav)], nodeId=node["nodeId"])
    await cdp.eval("document.getElementById('status').textContent = ''")
    await cdp.eval("document.getElementById('upload').click()")
    out["upload"] = await _wait_status(cdp, "saying")
    await cdp.eval("document.getElementById('interrupt').click()")
    await asyncio.sleep(0.5)
    out["after_interrupt"] = await cdp.eval("document.getElementById('status').className")
    await cdp.eval("document.getElementById('stop').click()")
    loop = asyncio.get_running_loop()
    for _ in range(50):
        _, m = await loop.run_in_executor(None, http, "GET", url + "/metrics")
        if m["sessions"] == 0:
            break
        await asyncio.sleep(0.2)
    out["sessions_after_stop"] = m["sessions"]
    return out


def check_screenshot(path: Path, state: dict, avatar) -> None:
    from PIL import Image

    img = Image.open(path).convert("RGB")
    x, y, w, h = (v * state["dpr"] for v in state["rect"])
    crop = np.asarray(img.crop((int(x), int(y), int(x + w), int(y + h))).resize((avatar.width, avatar.height)),
                      dtype=np.float64)
    assert crop.std() > 10 and 15 < crop.mean() < 240, f"the video area is blank or black: {crop.mean(), crop.std()}"
    ref = avatar.speak(np.zeros(16000, np.float32), sample_rate=16000)[10].astype(np.float64)
    g1, g2 = crop.mean(axis=2).ravel(), ref.mean(axis=2).ravel()
    corr = float(np.corrcoef(g1, g2)[0, 1])
    assert corr > 0.8, f"the video area does not look like the avatar (correlation {corr:.2f} with its frame)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_headless_chromium_over_https_with_the_token_link(trained_avatar, tmp_path):
    browser = need_chromium()
    token = secrets.token_urlsafe(24)
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    mic = fake_microphone(tmp_path)
    shots = tmp_path / "shots"
    shots.mkdir()
    server = subprocess.Popen(  # the real command, the token from the environment as the docs say
        [sys.executable, "-m", "embedtalk_sdk.cli", "serve", str(trained_avatar["bundle"]), "--self-signed",
         "--port", str(port), "--max-sessions", "2", "--tts", "none", "--backend", "onnxruntime"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ, EMBEDTALK_TOKEN=token))
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(iter(server.stdout.readline, "")), daemon=True)
    reader.start()
    insecure = ssl.create_default_context()
    insecure.check_hostname, insecure.verify_mode = False, ssl.CERT_NONE
    bearer = {"Authorization": f"Bearer {token}"}
    try:
        for _ in range(240):
            if server.poll() is not None:
                break
            try:
                if https_get(url + "/health", insecure)[0] == 200:
                    break
            except OSError:
                time.sleep(0.25)
        assert server.poll() is None, "".join(output)
        served = ssl.get_server_certificate(("127.0.0.1", port))
        profile = tmp_path / "profile"
        proc = launch(browser, profile, mic, "--ignore-certificate-errors")
        try:
            result = asyncio.run(_drive_https(url, token, profile, shots, insecure, bearer))
        finally:
            stop(proc)
        sessions_after = json.loads(https_get(url + "/metrics", insecure, bearer)[1])["sessions"]
    finally:
        server.terminate()
        server.wait(20)
        reader.join(5)
    keep_screenshots(shots)
    log = "".join(output)
    digest = ssl.PEM_cert_to_DER_cert(served)
    import hashlib

    fingerprint = ":".join(f"{b:02X}" for b in hashlib.sha256(digest).digest())
    assert fingerprint in re.sub(r"\s+", "", log), f"the served certificate's fingerprint is not the printed one: {log}"
    assert token not in log and token not in re.sub(r"\s+", "", log), "the token reached the server's output"
    login = result["login"]
    assert "invitation" in login["text"] and not login["session"] and login["sessions_on_server"] == 0, login
    assert [r for r in log.splitlines() if "refused" in r], "the page without the token was not refused"
    state = result["state"]
    assert state["href"] == url + "/?autostart=1" and token not in " ".join(result["history"]), result
    assert result["document_cookie"] == "", "the client cookie must be HttpOnly (no script can read it)"
    assert state["readyState"] >= 2 and not state["paused"] and state["t"] > 1.0, state
    assert result["metrics"]["fps"] >= 20, result["metrics"]
    assert result["metrics"]["speaking"] or result["spoke"], "the fake microphone's sentence never reached the avatar"
    registry = AvatarRegistry.load(trained_avatar["bundle"], backend="onnxruntime", log_fn=lambda m: None)
    check_screenshot(result["shot"], state, registry.get(registry.ids[0]).avatar)
    assert sessions_after == 0, "closing the tab did not free the session"


def https_get(url: str, context, headers: dict | None = None) -> tuple[int, bytes]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10, context=context) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


async def _drive_https(url: str, token: str, profile: Path, shots: Path, insecure, bearer: dict) -> dict:
    loop = asyncio.get_running_loop()
    async with DevTools(profile) as cdp:
        # Without the token: the login message, no session.
        await cdp.call("Page.navigate", url=url + "/?autostart=1")
        login: dict = {}
        for _ in range(40):
            login = await cdp.eval("({text: (document.getElementById('login') || {}).textContent || '', "
                                   "session: window.embedtalkSession || null})")
            if login and login["text"]:
                break
            await asyncio.sleep(0.25)
        await screenshot(cdp, shots / "https_login.png")
        await asyncio.sleep(1.0)  # time for a session to appear, were the page to start one
        status, body = await loop.run_in_executor(None, https_get, url + "/metrics", insecure, bearer)
        login["sessions_on_server"] = json.loads(body)["sessions"]
        # The invitation link: the token becomes the cookie and leaves the address.
        await cdp.call("Page.navigate", url=f"{url}/?token={token}&autostart=1")
        result = await _talking(cdp, shots, prefix="https_")
        result["state"]["href"] = await cdp.eval("location.href")
        history = await cdp.call("Page.getNavigationHistory")
        result["history"] = [e["url"] for e in history["entries"]]
        result["document_cookie"] = await cdp.eval("document.cookie")
        result["login"] = login
        await cdp.eval("document.getElementById('stop').click()")
        for _ in range(50):
            if (await page_metrics(cdp))["sessions"] == 0:
                break
            await asyncio.sleep(0.2)
        return result
