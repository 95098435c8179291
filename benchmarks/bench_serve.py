"""Benchmark `embedtalk-sdk serve`: latency, concurrent sessions, admission, a long real-time session.

    python benchmarks/bench_serve.py AVATAR.etk [-o bench_serve.json] [--seconds 20] [--long-minutes 10]

Sessions run in this process on the server's own code (Server, Session, the render thread), fed
like a microphone: 20 ms chunks of speech (the runtime's test speech, looped) pushed in real time
by a feeder thread. Each session's sink does what aiortc's sender does with the two tracks:
VP8-encodes every frame and Opus-encodes its 40 ms of sound (aiortc's own encoders) in its own
worker thread, dropping the oldest frame when more than media.MAX_QUEUED wait (as the track does).
Only the network transport is left out (loopback UDP + SRTP: small next to the encode), and no
client decodes on this machine.

Reported:
- latency p50/p99, audio sample in -> its frame out of the encoder (the /metrics latency plus the
  encode), at 1 session; it includes the audio window's lookahead (frame n needs audio up to
  ~152 ms past its time stamp with the mel encoder);
- for N = 1, 2, ... sessions: fps per session and dropped frames; the most sessions at >= 24.5
  fps with < 1 % dropped; the server's admission limit (measured at start-up) and whether it
  refuses the next session;
- a long session (--long-minutes, fed in real time): A/V drift at the end (video media time minus
  audio media time of what was sent; and the stream's lag behind the wall clock) and RSS per minute.
"""
from __future__ import annotations

import argparse
import fractions
import json
import os
import platform
import queue
import sys
import threading
import time
from pathlib import Path

import numpy as np

from embedtalk_sdk.runtime.audio.speech import synthesize_speech
from embedtalk_sdk.serve import AvatarRegistry, Server
from embedtalk_sdk.serve.app import ServerFull
from embedtalk_sdk.serve.media import MAX_QUEUED
from embedtalk_sdk.serve.metrics import percentile

CHUNK = 320  # 20 ms at 16 kHz, as a microphone delivers it


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


class EncodingSink:
    """A session sink that encodes like aiortc's senders (VP8 + Opus) in its own thread."""

    def __init__(self, fps: float) -> None:
        import av
        from aiortc.codecs import get_encoder
        from aiortc.rtcrtpparameters import RTCRtpCodecParameters

        self.av, self.fps = av, fps
        self.vp8 = get_encoder(RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000))
        self.opus = get_encoder(RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2))
        self.q: queue.Queue = queue.Queue()
        self.latencies: list[float] = []
        self.frames_out = 0
        self.dropped_queue = 0
        self.audio_out = 0
        self.last_video_n = -1
        self.last_audio_n = -1
        self.session = None
        self._video_waiting = 0
        self._lock = threading.Lock()
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def video(self, n, frame, t_in) -> None:
        if frame is None:
            return  # dropped by the renderer: counted in the session's metrics
        with self._lock:
            self._video_waiting += 1
        self.q.put(("v", n, frame, t_in))

    def audio(self, n, samples) -> None:
        self.q.put(("a", n, samples.copy(), None))

    def _run(self) -> None:
        av = self.av
        while not self._stop:
            try:
                kind, n, data, t_in = self.q.get(timeout=0.2)
            except queue.Empty:
                continue
            if kind == "v":
                with self._lock:
                    self._video_waiting -= 1
                    late = self._video_waiting >= MAX_QUEUED
                if late:  # the track would have dropped it
                    self.dropped_queue += 1
                    if self.session is not None:
                        self.session.metrics.dropped()
                    continue
                vf = av.VideoFrame.from_ndarray(data, format="rgb24")
                vf.pts, vf.time_base = int(round(n * 90000 / self.fps)), fractions.Fraction(1, 90000)
                self.vp8.encode(vf, self.frames_out == 0)
                now = time.monotonic()
                self.frames_out += 1
                self.last_video_n = n
                if self.session is not None:
                    self.session.metrics.sent(None if t_in is None else (now - t_in) * 1000.0, now)
                if t_in is not None:
                    self.latencies.append((now - t_in) * 1000.0)
            else:
                pcm = np.clip(np.round(data * 32767), -32768, 32767).astype(np.int16)
                af = av.AudioFrame.from_ndarray(pcm[None], format="s16", layout="mono")
                af.sample_rate, af.pts, af.time_base = 16000, n * pcm.shape[0], fractions.Fraction(1, 16000)
                self.opus.encode(af)
                self.audio_out += 1
                self.last_audio_n = n

    def stop(self) -> None:
        self._stop = True
        self.thread.join(2)


class Feeder(threading.Thread):
    """Pushes speech into a session in 20 ms chunks on the real-time clock, like a microphone."""

    def __init__(self, live, speech: np.ndarray) -> None:
        super().__init__(daemon=True)
        self.live, self.speech, self.stop_flag = live, (speech * 32767).astype(np.int16), False

    def run(self) -> None:
        t0, k = time.monotonic(), 0
        while not self.stop_flag:
            a = (k * CHUNK) % (self.speech.shape[0] - CHUNK)
            try:
                self.live.push(self.speech[a:a + CHUNK], "feeder")
            except ValueError:
                return
            k += 1
            delay = t0 + k * CHUNK / 16000 - time.monotonic()
            if delay > 0:
                time.sleep(delay)


def run_sessions(server: Server, avatar: str, n: int, seconds: float, speech: np.ndarray) -> dict:
    """n sessions fed in real time for `seconds`; per-session fps, drops, latency."""
    lives, sinks, feeders = [], [], []
    fps = server.registry.get(avatar).avatar.fps
    for _ in range(n):
        sink = EncodingSink(fps)
        live = server.open_session(avatar, sink, start=False)
        sink.session = live.session
        lives.append(live)
        sinks.append(sink)
    for live in lives:
        live.session.start()
        f = Feeder(live, speech)
        f.start()
        feeders.append(f)
    warm = 2.0
    time.sleep(warm)
    base = [(s.frames_out, live.session.metrics.dropped_frames, len(s.latencies)) for s, live in zip(sinks, lives)]
    t = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - t
    rows = []
    for (f0, d0, l0), s, live in zip(base, sinks, lives):
        sent = s.frames_out - f0
        dropped = live.session.metrics.dropped_frames - d0
        lat = s.latencies[l0:]
        rows.append({"fps": round(sent / elapsed, 2), "dropped_pct": round(100.0 * dropped / max(sent + dropped, 1), 2),
                     "latency_ms_p50": percentile(lat, 50), "latency_ms_p99": percentile(lat, 99)})
    for f in feeders:
        f.stop_flag = True
    for live, s in zip(lives, sinks):
        server.sessions.pop(live.session.id, None)
        live.session.close()
        server.metrics.closed(live.session.metrics)
        s.stop()
    time.sleep(0.3)
    lat_all = [x for s in sinks for x in s.latencies]
    return {"sessions": n, "min_fps": min(r["fps"] for r in rows), "max_dropped_pct": max(r["dropped_pct"] for r in rows),
            "latency_ms_p50": percentile(lat_all, 50), "latency_ms_p99": percentile(lat_all, 99), "per_session": rows}


def long_session(server: Server, avatar: str, minutes: float, speech: np.ndarray, log=print) -> dict:
    """One session fed in real time for `minutes`: A/V drift at the end and RSS over time."""
    fps = server.registry.get(avatar).avatar.fps
    sink = EncodingSink(fps)
    live = server.open_session(avatar, sink, start=False)
    sink.session = live.session
    live.session.start()
    t0 = time.monotonic()
    feeder = Feeder(live, speech)
    feeder.start()
    rss, lags, step = [], [], max(1.0, minutes * 60 / 10)
    end = t0 + minutes * 60
    while time.monotonic() < end:
        time.sleep(min(step, max(0.0, end - time.monotonic())))
        rss.append((round(time.monotonic() - t0, 1), round(rss_mb(), 1)))
        lags.append(round(((time.monotonic() - t0) - (sink.last_audio_n + 1) / fps) * 1000.0, 1))
        log(f"  long session: {rss[-1][0]:.0f} s, RSS {rss[-1][1]:.0f} MB, frames {sink.frames_out}")
    time.sleep(0.3)  # let the encoder drain what is queued
    now = time.monotonic()
    video_t = (sink.last_video_n + 1) / fps
    audio_t = (sink.last_audio_n + 1) / fps  # each audio frame is one video frame's 40 ms
    feeder.stop_flag = True
    m = live.session.metrics
    dropped = m.dropped_frames
    server.sessions.pop(live.session.id, None)
    live.session.close()
    sink.stop()
    return {"minutes": minutes, "frames_sent": sink.frames_out, "dropped_frames": dropped,
            "audio_frames_sent": sink.audio_out,
            "av_drift_ms": round((video_t - audio_t) * 1000.0, 1),
            "stream_lag_behind_wall_ms": round(((now - t0) - audio_t) * 1000.0, 1),
            "lag_behind_wall_ms_over_time": lags,
            "rss_mb": rss, "rss_growth_mb_after_first_tenth": round(rss[-1][1] - rss[0][1], 1) if rss else None,
            "latency_ms_p50": percentile(sink.latencies, 50), "latency_ms_p99": percentile(sink.latencies, 99)}


def lookahead_cost(avatar, speech: np.ndarray, rows: int) -> dict:
    """What waiting for only `rows` rows past a frame's centre costs in fidelity: the frames of
    `speech` rendered with each window's later rows repeating the last waited-for row, against the
    exact frames (speak's), PSNR over the frame and over its most changing 1/16 (the mouth)."""
    from embedtalk_sdk.runtime.audio.mel import frame_windows

    feats = avatar.audio_features(speech, 16000)
    t = avatar.n_frames(speech.shape[0])
    w = frame_windows(feats, t, avatar.fps, avatar.audio_encoder.rate, avatar.window)
    keep = avatar.window // 2 + 1 + rows  # rows up to the centre, plus `rows` after it
    cut = w.copy()
    cut[:, keep:] = cut[:, keep - 1:keep]
    aus = avatar.generated_aus()(0, t)
    exact = np.stack([f.copy() for f in avatar.render_network_inputs(w, aus, np.arange(t))]).astype(np.float64)
    aus = avatar.generated_aus()(0, t)
    fast = np.stack([f.copy() for f in avatar.render_network_inputs(cut, aus, np.arange(t))]).astype(np.float64)
    motion = exact.std(axis=0).mean(axis=2)  # where the speech moves the face
    mask = motion >= np.quantile(motion, 15 / 16)

    def psnr(a, b):
        mse = float(np.mean((a - b) ** 2))
        return round(10 * np.log10(255.0 ** 2 / mse), 2) if mse > 0 else float("inf")

    return {"lookahead_rows": rows, "psnr_db": psnr(exact, fast),
            "psnr_moving_db": psnr(exact[:, mask], fast[:, mask]),
            "max_abs_diff": int(np.abs(exact - fast).max())}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("avatar", type=Path, help="a bundle (the 256² demo bundle: embedtalk-sdk demo -o demo_out)")
    ap.add_argument("-o", "--out", type=Path, default=None, help="write the report as JSON")
    ap.add_argument("--seconds", type=float, default=20.0, help="measured seconds per concurrency level")
    ap.add_argument("--max-n", type=int, default=8, help="most sessions tried")
    ap.add_argument("--long-minutes", type=float, default=10.0, help="the long session (0: skip)")
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--lookahead", default="4,3,2", help="also time 1 session with these --lookahead-rows")
    ap.add_argument("--skip-levels", action="store_true", help="only the lookahead and long runs")
    args = ap.parse_args(argv)
    speech = synthesize_speech(12.0, seed=7).samples
    registry = AvatarRegistry.load(args.avatar, backend=args.backend, log_fn=print)
    entry = registry.entries()[0]
    a = entry.avatar
    report: dict = {"avatar": entry.info(), "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                                          "load_at_start": os.getloadavg()}}
    server = Server(registry)  # admission from the measured frame time
    cap = server.admission.capacity(entry)
    report["admission_capacity"] = cap
    print(f"{entry.id}: {a.width}x{a.height}, frame {entry.render_ms:.1f} ms render + {entry.features_ms:.1f} ms "
          f"features + {entry.encode_ms:.1f} ms encode -> admission limit {cap} sessions")
    full = max(0, a.window - a.window // 2 - 1)
    report["lookahead"] = []
    for rows in [int(x) for x in args.lookahead.split(",") if x.strip()]:
        lat_server = Server(registry, lookahead_rows=rows)
        r = run_sessions(_unlimited(lat_server), entry.id, 1, args.seconds, speech)
        for rr in lat_server.renderers.values():
            rr.stop()
        cost = lookahead_cost(a, speech[:16000 * 6], rows)
        row = {"lookahead_rows": rows, "of": full, "latency_ms_p50": r["latency_ms_p50"],
               "latency_ms_p99": r["latency_ms_p99"], "fps": r["min_fps"], "dropped_pct": r["max_dropped_pct"], **cost}
        report["lookahead"].append(row)
        print(f"  lookahead {rows}/{full} rows: latency p50 {row['latency_ms_p50']} ms p99 {row['latency_ms_p99']} ms; "
              f"vs exact frames PSNR {cost['psnr_db']} dB, moving part {cost['psnr_moving_db']} dB")
    levels = []
    for n in range(1, (0 if args.skip_levels else args.max_n) + 1):
        server.admission.max_sessions = None
        r = run_sessions(_unlimited(server), entry.id, n, args.seconds, speech)
        levels.append(r)
        print(f"  {n} sessions: min fps {r['min_fps']:.2f}, max dropped {r['max_dropped_pct']:.2f} %, latency p50 "
              f"{r['latency_ms_p50']} ms p99 {r['latency_ms_p99']} ms")
        if r["min_fps"] < 24.5 or r["max_dropped_pct"] >= 1.0:
            if n > cap:
                break
            if n >= cap + 1:
                break
    ok = [r["sessions"] for r in levels if r["min_fps"] >= 24.5 and r["max_dropped_pct"] < 1.0]
    if levels:
        report["levels"] = levels
        report["most_sessions_at_25fps"] = max(ok) if ok else 0
        report["latency_1_session"] = {k: levels[0][k] for k in ("latency_ms_p50", "latency_ms_p99")}
    # the admission limit refuses the next session
    server = Server(registry)
    opened = []
    try:
        for _ in range(cap):
            opened.append(server.open_session(entry.id, EncodingSink(a.fps), start=False))
        try:
            server.open_session(entry.id, EncodingSink(a.fps), start=False)
            report["admission_refuses_next"] = False
        except ServerFull as e:
            report["admission_refuses_next"] = True
            report["admission_refusal"] = str(e)
    finally:
        for live in opened:
            live.session.close()
    if args.long_minutes > 0:
        print(f"long session: {args.long_minutes:g} min in real time")
        report["long_session"] = long_session(_unlimited(server), entry.id, args.long_minutes, speech)
        ls = report["long_session"]
        print(f"  A/V drift {ls['av_drift_ms']} ms, lag behind wall {ls['stream_lag_behind_wall_ms']} ms, "
              f"RSS {ls['rss_mb'][0][1]} -> {ls['rss_mb'][-1][1]} MB, dropped {ls['dropped_frames']}")
    report["machine"]["load_at_end"] = os.getloadavg()
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text)
    print(text)
    return report


def _unlimited(server: Server) -> Server:
    """The same server with admission off (the benchmark looks past the limit on purpose)."""
    for live in list(server.sessions.values()):
        live.session.close()
    server.sessions.clear()
    server.admission.max_sessions = 10**6
    return server


if __name__ == "__main__":
    main(sys.argv[1:])
