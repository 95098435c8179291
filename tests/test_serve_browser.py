"""The real browser test: Debian's headless Chromium opens `/?autostart=1` with a fake microphone
playing a test sentence, over the page's own WebRTC code against the running server.

Checks: the page's <video> plays; /metrics counts >= 20 frames/s sent for that session; a
screenshot taken while the sentence plays shows the avatar (the video's area looks like the
avatar's own frame, not black or blank). Screenshots are kept in the test's tmp folder
(EMBEDTALK_SCREENSHOTS=folder keeps copies there). Chromium is driven over the DevTools protocol
on a WebSocket (aiohttp); nothing is downloaded.
"""
from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("aiortc")

from serve_helpers import http, wav_bytes  # noqa: E402

from embedtalk_sdk.runtime.audio.speech import synthesize_speech  # noqa: E402
from embedtalk_sdk.serve import AvatarRegistry, Server  # noqa: E402
from embedtalk_sdk.serve.app import BackgroundServer  # noqa: E402
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


def test_headless_chromium_autostart_with_fake_microphone(trained_avatar, tmp_path):
    browser = chromium()
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: .ci/run installs Debian's chromium before the tests")
        pytest.skip("needs Debian's chromium (apt-get install chromium)")
    restrict_ice_to_loopback()
    registry = AvatarRegistry.load(trained_avatar["bundle"], backend="onnxruntime", log_fn=lambda m: None)
    sentence = synthesize_speech(4.0, seed=11).samples
    mic = tmp_path / "sentence.wav"
    mic.write_bytes(wav_bytes(np.concatenate([sentence, np.zeros(8000, np.float32)]), 16000))
    shots = tmp_path / "shots"
    shots.mkdir()
    server = Server(registry, max_sessions=2, tts=EspeakTTS())
    with BackgroundServer(server) as bg:
        profile = tmp_path / "profile"
        proc = subprocess.Popen(
            [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--remote-debugging-port=0",
             "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
             f"--use-file-for-fake-audio-capture={mic}", "--autoplay-policy=no-user-gesture-required",
             "--allow-loopback-in-peer-connection", "--disable-features=WebRtcHideLocalIpsWithMdns",
             "--window-size=900,700", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            result = asyncio.run(_drive(bg.url, profile, shots))
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
    keep = os.environ.get("EMBEDTALK_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        for p in shots.iterdir():
            shutil.copy(p, Path(keep) / p.name)

    state, per = result["state"], result["metrics"]
    assert state["readyState"] >= 2 and not state["paused"] and state["t"] > 1.0, state
    assert (state["w"], state["h"]) == (registry.get(registry.ids[0]).avatar.width,) * 2, state
    assert per["fps"] >= 20, per
    assert per["speaking"] or result["spoke"], "the fake microphone's sentence never reached the avatar"
    _check_screenshot(result["shot"], state, registry.get(registry.ids[0]).avatar)
    c = result["controls"]
    assert c["tts"].startswith("saying") and "of speech" in c["tts"], c
    assert c["upload"] == "saying 2 s of audio", c
    assert c["after_interrupt"] != "error" and c["sessions_after_stop"] == 0, c


async def _drive(url: str, profile: Path, shots: Path) -> dict:
    import aiohttp

    port_file = profile / "DevToolsActivePort"
    for _ in range(300):
        if port_file.exists() and port_file.read_text().strip():
            break
        await asyncio.sleep(0.1)
    port = int(port_file.read_text().split()[0])
    async with aiohttp.ClientSession() as client:
        async with client.get(f"http://127.0.0.1:{port}/json/list") as r:
            targets = await r.json()
        page = next(t for t in targets if t["type"] == "page")
        async with client.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=64 * 1024 * 1024) as ws:
            cdp = Cdp(ws)
            await cdp.call("Page.enable")
            await cdp.call("Page.navigate", url=url + "/?autostart=1")
            state, deadline = None, time.monotonic() + 40
            while time.monotonic() < deadline:
                state = await cdp.eval(VIDEO_STATE)
                if state and state["readyState"] >= 2 and not state["paused"] and state["t"] > 1.0:
                    break
                await asyncio.sleep(0.25)
            assert state and state["session"], f"no session started: {state}"
            spoke, shot, metrics = False, None, None
            for i in range(20):  # while the sentence plays (the fake microphone loops it)
                _, m = await asyncio.get_running_loop().run_in_executor(None, http, "GET", url + "/metrics")
                per = m["per_session"].get(state["session"])
                if per is None:
                    break
                metrics = per
                spoke = spoke or per["speaking"]
                if per["speaking"] and shot is None and per["fps"] >= 20:
                    png = base64.b64decode((await cdp.call("Page.captureScreenshot", format="png"))["data"])
                    shot = shots / f"speaking_{i}.png"
                    shot.write_bytes(png)
                    state = await cdp.eval(VIDEO_STATE)
                if shot is not None and i >= 8:
                    break
                await asyncio.sleep(0.5)
            final = await cdp.eval(VIDEO_STATE)
            if shot is None:  # keep evidence for the failure message
                png = base64.b64decode((await cdp.call("Page.captureScreenshot", format="png"))["data"])
                (shots / "no_speech.png").write_bytes(png)
            assert shot is not None, f"never saw the session speaking at >= 20 fps: {metrics}, {final}"
            controls = await _use_the_controls(cdp, url, shots / "upload.wav")
            return {"state": final, "metrics": metrics, "spoke": spoke, "shot": shot, "controls": controls}


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


def _check_screenshot(path: Path, state: dict, avatar) -> None:
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
