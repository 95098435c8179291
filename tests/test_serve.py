"""`embedtalk-sdk serve`: sessions, idle life, interrupt, WebRTC end to end, refusals, admission.

A real tiny avatar (conftest's trained_avatar: synth -> 60 training steps -> export), the real
renderer thread, aiohttp on 127.0.0.1 and an aiortc peer as the client."""
from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("aiortc")

from serve_helpers import BackgroundServer, RecordingSink, http, wav_bytes, webrtc_client  # noqa: E402

from embedtalk_sdk.runtime.audio.speech import synthesize_speech  # noqa: E402
from embedtalk_sdk.serve import AvatarRegistry, Limits, Server  # noqa: E402
from embedtalk_sdk.serve.tts import EspeakTTS  # noqa: E402

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def avatars(trained_avatar, tmp_path_factory) -> Path:
    """A folder of bundles (one: tiny.etk), and beside it, outside, another bundle."""
    root = tmp_path_factory.mktemp("serve")
    shutil.copytree(trained_avatar["bundle"], root / "avatars" / "tiny.etk")
    shutil.copytree(trained_avatar["bundle"], root / "outside" / "secret.etk")
    return root / "avatars"


@pytest.fixture(scope="module")
def registry(avatars) -> AvatarRegistry:
    return AvatarRegistry.load(avatars, backend="onnxruntime", log_fn=lambda m: None)


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return synthesize_speech(3.0, seed=5).samples


def wait_for(cond, timeout: float, step: float = 0.02) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(step)
    return cond()


def test_session_frames_are_speaks_frames(registry, speech):
    # A clip queued before the timeline starts: the session's frames are speak()'s frames of the
    # clip followed by silence, bit for bit (its own stream state over the shared model).
    server = Server(registry)
    sink = RecordingSink()
    live = server.open_session("tiny", sink, start=False)
    live.session.say(speech[:16000])
    live.session.start()
    assert wait_for(lambda: len(sink.frames) >= 45, 10)
    server.sessions.pop(live.session.id).session.close()
    avatar = registry.get("tiny").avatar
    ref = avatar.speak(np.concatenate([speech[:16000], np.zeros(32000, np.float32)]), sample_rate=16000)
    frames = [(n, f) for n, f, _ in sink.frames[:40]]
    assert [n for n, _ in frames] == list(range(40))
    kept = [(n, f) for n, f in frames if f is not None]  # None: dropped (late) on a busy machine
    assert len(kept) >= 36, f"{40 - len(kept)} of 40 frames dropped"
    for n, f in kept:
        assert np.array_equal(f, ref[n]), f"frame {n} differs from speak's"
    sound = np.concatenate([s for _, s in sink.sound[:40]])
    assert np.allclose(sound[:16000], speech[:16000]) and not sound[16000:].any()  # the clip, then silence
    assert [e["type"] for e in live.session.events][:2] == ["speaking_started", "speaking_stopped"]
    for r in server.renderers.values():
        r.stop()


def test_idle_life_never_freezes(registry):
    # No speech at all: frames keep coming in real time, blinks and the track move them.
    server = Server(registry)
    sink = RecordingSink()
    live = server.open_session("tiny", sink)
    t = time.monotonic()
    assert wait_for(lambda: len(sink.frames) >= 50, 10)
    elapsed = time.monotonic() - t
    live.session.close()
    kept = [f for _, f, _ in sink.frames[:50] if f is not None]  # None: dropped on a busy machine
    assert len(kept) >= 45, f"{50 - len(kept)} of 50 idle frames dropped"
    frames = np.stack(kept).astype(np.int16)
    assert 1.5 < elapsed < 3.5, f"50 idle frames took {elapsed:.2f} s (real time: 2 s + lookahead)"
    diffs = np.abs(np.diff(frames, axis=0)).max(axis=(1, 2, 3))
    assert (diffs > 0).mean() > 0.5, "the idle avatar froze"
    assert not any(s.any() for _, s in sink.sound[:50]), "idle sound must be silence"
    assert all(e["type"] != "speaking_started" for e in live.session.events)
    for r in server.renderers.values():
        r.stop()


def test_interrupt_closes_the_mouth_within_two_frames(registry, speech):
    server = Server(registry)
    sink = RecordingSink()
    live = server.open_session("tiny", sink, start=False)
    live.session.say(speech)
    live.session.start()
    assert wait_for(lambda: len(sink.frames) >= 30, 10)
    before = len(sink.frames)
    live.session.interrupt()
    live.renderer.notify()
    assert wait_for(lambda: len(sink.frames) >= before + 12, 10)
    live.session.close()
    avatar = registry.get("tiny").avatar
    n_max = max(n for n, _, _ in sink.frames) + 1
    silent = avatar.speak(np.zeros(n_max * 640, np.float32), sample_rate=16000)  # the idle, closed mouth
    after = [(n, f) for n, f, _ in sink.frames[before:] if f is not None]  # the frames sent
    closed = [np.array_equal(f, silent[n]) for n, f in after]
    first = closed.index(True)
    assert first <= 2 and all(closed[first:]), f"mouth closed from sent frame {first} after interrupt: {closed}"
    talking = [not np.array_equal(f, silent[n]) for n, f, _ in sink.frames[10:before] if f is not None]
    assert any(talking), "the speech never reached the mouth: the test would prove nothing"
    quiet = [s for n, s in sink.sound if n >= after[first][0]]
    assert not any(s.any() for s in quiet), "the sound goes on after the interrupt"
    assert "interrupted" in [e["type"] for e in live.session.events]
    for r in server.renderers.values():
        r.stop()


def test_admission_from_measured_frame_time(registry):
    entry = registry.get("tiny")
    assert entry.render_ms > 0 and entry.encode_ms > 0 and entry.features_ms > 0
    assert entry.frame_ms == entry.render_ms + entry.encode_ms + entry.features_ms
    server = Server(registry)  # default: measured
    cap = server.admission.capacity(entry)
    assert cap == max(1, int(0.8 / (entry.frame_ms / 1000 * entry.avatar.fps)))
    sessions = [server.open_session("tiny", RecordingSink(), start=False) for _ in range(cap)]
    from embedtalk_sdk.serve.app import ServerFull

    with pytest.raises(ServerFull, match="server full"):
        server.open_session("tiny", RecordingSink(), start=False)
    for s in sessions:
        s.session.close()
    for r in server.renderers.values():
        r.stop()


@pytest.fixture(scope="module")
def running(registry):
    from embedtalk_sdk.serve.media import restrict_ice_to_loopback

    restrict_ice_to_loopback()  # as `serve` does on 127.0.0.1: media on loopback only (no other interface needed)
    server = Server(registry, max_sessions=2, tts=EspeakTTS(),  # no token, loopback: as `serve` by default
                    limits=Limits(max_upload_bytes=400_000, max_upload_s=8.0, connect_timeout_s=20,
                                  sessions_per_min=600, session_burst=50))
    with BackgroundServer(server) as bg:
        yield bg
    for r in server.renderers.values():
        r.stop()


def test_webrtc_session_end_to_end(running, speech):
    url = running.url

    async def scenario():
        pc, sid, video, audio = await webrtc_client(url, "tiny")
        assert pc is not None, sid
        loop = asyncio.get_running_loop()
        import aiohttp

        async with aiohttp.ClientSession() as client:
            ws = await client.ws_connect(f"{url}/sessions/{sid}/ws")
            for _ in range(100):
                if pc.connectionState == "connected":
                    break
                await asyncio.sleep(0.05)
            assert pc.connectionState == "connected"
            status, body = await loop.run_in_executor(None, http, "POST", f"{url}/sessions/{sid}/audio",
                                                      wav_bytes(speech[:32000], 16000))
            assert status == 200 and body["seconds"] == 2.0, body
            # live PCM over the WebSocket too: 1 s in 100 ms chunks
            pcm = (speech[32000:48000] * 32767).astype("<i2")
            for k in range(0, 16000, 1600):
                await ws.send_bytes(pcm[k:k + 1600].tobytes())
            await ws.send_bytes(b"\x01\x02\x03")  # not whole int16 samples: refused, the session goes on
            await asyncio.sleep(4.0)
            status, m = await loop.run_in_executor(None, http, "GET", f"{url}/metrics")
            events = []
            while True:
                try:
                    msg = await ws.receive_json(timeout=0.2)
                except (asyncio.TimeoutError, TypeError):
                    break
                events.append(msg["type"])
            status, tts = await loop.run_in_executor(None, http, "POST", f"{url}/sessions/{sid}/speak",
                                                     {"text": "Hello from the avatar."})
            assert status == 200 and tts["seconds"] > 0.5, tts
            status, body = await loop.run_in_executor(None, http, "POST", f"{url}/sessions/{sid}/interrupt")
            assert status == 200
            await ws.close()
        mine = m["per_session"][sid]
        assert mine["fps"] >= 20, mine
        assert m["sessions"] == 1 and m["frames_sent"] >= mine["frames_sent"] > 80
        assert mine["latency_ms_p50"] is not None and mine["latency_ms_p99"] >= mine["latency_ms_p50"]
        assert "speaking_started" in events and "error" in events, events
        assert len(video) > 80 and video[-1][1].width == 64
        assert len(audio) > 80
        await pc.close()  # the client goes away: the server frees the session
        for _ in range(100):
            status, m = await loop.run_in_executor(None, http, "GET", f"{url}/metrics")
            if m["sessions"] == 0:
                break
            await asyncio.sleep(0.1)
        assert m["sessions"] == 0, "a disconnected session was not freed"
        return mine

    mine = asyncio.run(scenario())
    assert mine["dropped_frames"] <= 0.05 * mine["frames_sent"]


def test_refusals(running, avatars, speech):
    url = running.url
    outside = avatars.parent / "outside" / "secret.etk"
    for bad in ["nobody", "../outside/secret", str(outside), "tiny.etk/../../outside/secret", "", 7, None]:
        status, body = http("POST", url + "/sessions", {"avatar": bad, "sdp": "v=0", "type": "offer"})
        assert status == 404 and "unknown avatar" in body["error"], (bad, status, body)
    status, body = http("POST", url + "/sessions", b"not json", content_type="application/json")
    assert status == 400 and "JSON" in body["error"]
    status, body = http("POST", url + "/sessions", b"{}", content_type="text/plain")  # what a foreign form can post
    assert status == 415 and "application/json" in body["error"]
    status, body = http("POST", url + "/sessions", {"avatar": "tiny", "sdp": "v=0\r\nnonsense", "type": "offer"})
    assert status == 400 and ("SDP" in body["error"] or "no video" in body["error"]), (status, body)
    assert http("GET", url + "/metrics")[1]["sessions"] == 0  # the refused offer left nothing behind

    async def two_sessions_then_one_more():
        clients = [await webrtc_client(url, "tiny") for _ in range(2)]
        assert all(pc is not None for pc, *_ in clients)
        pc, refusal, *_ = await webrtc_client(url, "tiny")
        sid = clients[0][1]
        results = {"refusal": refusal}
        loop = asyncio.get_running_loop()
        results["oversize"] = await loop.run_in_executor(None, http, "POST", f"{url}/sessions/{sid}/audio",
                                                         b"\0" * 500_000)
        results["too_long"] = await loop.run_in_executor(None, http, "POST", f"{url}/sessions/{sid}/audio",
                                                         wav_bytes(np.zeros(16000 * 9, np.float32), 16000, "PCM_U8"))
        results["garbage"] = await loop.run_in_executor(None, http, "POST", f"{url}/sessions/{sid}/audio",
                                                        b"RIFF....WAVEfmt garbage" * 50)
        nan = speech[:8000].copy()
        nan[100] = np.nan
        results["nan"] = await loop.run_in_executor(None, http, "POST", f"{url}/sessions/{sid}/audio",
                                                    wav_bytes(nan, 16000, "FLOAT"))
        good = wav_bytes(speech[:16000], 16000)
        results["truncated"] = await loop.run_in_executor(None, http, "POST", f"{url}/sessions/{sid}/audio",
                                                          good[: len(good) // 2])
        results["empty"] = await loop.run_in_executor(None, http, "POST", f"{url}/sessions/{sid}/audio", b"")
        results["no_session"] = await loop.run_in_executor(None, http, "POST", f"{url}/sessions/nope/audio", good)
        results["empty_text"] = await loop.run_in_executor(None, http, "POST", f"{url}/sessions/{sid}/speak",
                                                           {"text": "  "})
        for pc, *_ in clients:
            await pc.close()
        return results

    r = asyncio.run(two_sessions_then_one_more())
    assert r["refusal"][0] == 503 and "server full" in r["refusal"][1]["error"], r["refusal"]
    assert r["oversize"][0] == 413 and "limit" in r["oversize"][1]["error"]
    assert r["too_long"][0] == 413 and "9.0 s" in r["too_long"][1]["error"], r["too_long"]
    for key in ("garbage", "nan", "truncated", "empty"):
        assert r[key][0] == 400, (key, r[key])
    assert "NaN" in r["nan"][1]["error"] and "the upload" in r["nan"][1]["error"]
    assert "truncated" in r["truncated"][1]["error"].lower() or "shorter" in r["truncated"][1]["error"].lower()
    assert "upload" in r["garbage"][1]["error"] and "/tmp" not in r["garbage"][1]["error"]
    assert r["no_session"][0] == 404
    assert r["empty_text"][0] == 400


def test_cli_serve_refuses_a_missing_folder(tmp_path):
    from typer.testing import CliRunner

    from embedtalk_sdk.cli import app

    result = CliRunner().invoke(app, ["serve", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "no such bundle" in result.output


def test_lookahead_rows_emit_earlier_and_are_checked(registry, speech):
    from embedtalk_sdk.serve.session import StreamState

    avatar = registry.get("tiny").avatar
    exact, fast = StreamState(avatar), StreamState(avatar, lookahead_rows=4)
    assert StreamState.future_rows(avatar) == 7
    first = {}
    for name, st in (("exact", exact), ("fast", fast)):
        for k in range(0, 16000, 80):  # 5 ms pieces: when does frame 0 come out?
            n0, n1, _, _ = st.feed(speech[k:k + 80])
            if n1 > 0:
                first[name] = k + 80
                break
    assert first["exact"] - first["fast"] == 3 * 320, first  # 3 rows (60 ms) earlier
    with pytest.raises(ValueError, match="lookahead_rows must be 0..7"):
        StreamState(avatar, lookahead_rows=8)


def test_short_realtime_session_keeps_sync_and_memory(registry):
    # The benchmark's long session (10 minutes there), shortened: fed in real time, picture and
    # sound end in step, the stream keeps pace with the wall clock, memory does not grow.
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_serve", Path(__file__).parents[1] / "benchmarks" / "bench_serve.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    server = Server(registry, max_sessions=1)
    r = bench.long_session(server, "tiny", 10 / 60, synthesize_speech(4.0, seed=2).samples, log=lambda m: None)
    for rr in server.renderers.values():
        rr.stop()
    assert abs(r["av_drift_ms"]) <= 40, r
    assert r["stream_lag_behind_wall_ms"] < 400, r
    lags = r["lag_behind_wall_ms_over_time"]
    assert max(lags) - min(lags) < 120, lags  # no drift behind the clock
    assert r["frames_sent"] >= 230 and r["dropped_frames"] <= 5, r
    assert r["rss_mb"][-1][1] - r["rss_mb"][1][1] < 30, r["rss_mb"]


def test_phonetic_session_frames_are_speaks_frames(phonetic_avatar, tmp_path, speech):
    # The default encoder through the server: a stateful front end (noise removal, causal CMN) fed
    # as the timeline arrives gives speak()'s frames bit for bit, silence after the clip included.
    shutil.copytree(phonetic_avatar["inside"], tmp_path / "avatars" / "ph.etk")
    registry = AvatarRegistry.load(tmp_path / "avatars", backend="onnxruntime", log_fn=lambda m: None)
    server = Server(registry)
    sink = RecordingSink()
    live = server.open_session("ph", sink, start=False)
    live.session.say(speech[:16000])
    live.session.start()
    assert wait_for(lambda: len(sink.frames) >= 45, 10)
    server.sessions.pop(live.session.id).session.close()
    ref = registry.get("ph").avatar.speak(np.concatenate([speech[:16000], np.zeros(32000, np.float32)]),
                                          sample_rate=16000)  # fmt: skip
    kept = [(n, f) for n, f, _ in sink.frames[:40] if f is not None]
    assert len(kept) >= 36, f"{40 - len(kept)} of 40 frames dropped"
    for n, f in kept:
        assert np.array_equal(f, ref[n]), f"frame {n} differs from speak's"
    for r in server.renderers.values():
        r.stop()
