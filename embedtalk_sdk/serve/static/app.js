"use strict";
// The page of `embedtalk-sdk serve` (static/index.html loads it; no inline script, for the CSP).
// Its requests carry the HttpOnly client cookie the server set; it never sees the token.
const $ = (id) => document.getElementById(id);
let pc = null, sessionId = null, micStream = null, ws = null, statsTimer = null, iceServers = [];

function status(text, error) { const s = $("status"); s.textContent = text; s.className = error ? "error" : ""; }

async function api(path, options) {
  const r = await fetch(path, options);
  const body = await r.json().catch(() => ({}));
  if (r.status === 401) throw new Error("not signed in: open the link with ?token=... again");
  if (!r.ok) throw new Error(body.error || (r.status + " " + r.statusText));
  return body;
}

async function loadAvatars() {
  const info = await api("/avatars");
  const sel = $("avatar");
  sel.innerHTML = "";
  for (const a of info.avatars) {
    const o = document.createElement("option");
    o.value = a.id; o.textContent = `${a.id} (${a.width}x${a.height}, up to ${a.capacity} sessions)`;
    sel.appendChild(o);
  }
  $("say").dataset.tts = info.tts ? "1" : "";
  iceServers = info.ice_servers || [];
}

function waitIce(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const check = () => { if (pc.iceGatheringState === "complete") { pc.removeEventListener("icegatheringstatechange", check); resolve(); } };
    pc.addEventListener("icegatheringstatechange", check);
    setTimeout(resolve, 3000);
  });
}

async function start() {
  $("start").disabled = true;
  try {
    status("starting...");
    pc = new RTCPeerConnection({ iceServers });
    pc.addTransceiver("video", { direction: "recvonly" });
    if ($("mic").checked) {
      micStream = await navigator.mediaDevices.getUserMedia({ audio: true });
      pc.addTrack(micStream.getAudioTracks()[0], micStream);
    } else {
      pc.addTransceiver("audio", { direction: "recvonly" });
    }
    const remote = new MediaStream();
    pc.ontrack = (ev) => { remote.addTrack(ev.track); $("video").srcObject = remote; $("video").play().catch(() => {}); };
    pc.onconnectionstatechange = () => status("connection " + pc.connectionState, pc.connectionState === "failed");
    await pc.setLocalDescription(await pc.createOffer());
    await waitIce(pc);
    const answer = await api("/sessions", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ avatar: $("avatar").value, sdp: pc.localDescription.sdp, type: "offer" }) });
    sessionId = answer.session_id;
    window.embedtalkSession = sessionId;
    await pc.setRemoteDescription({ type: answer.type, sdp: answer.sdp });
    ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + `/sessions/${sessionId}/ws`);
    ws.onmessage = (ev) => {
      const e = JSON.parse(ev.data);
      if (e.type === "speaking_started") $("speaking").textContent = "speaking";
      else if (e.type === "speaking_stopped" || e.type === "interrupted") $("speaking").textContent = "";
      else if (e.type === "error") status(e.error, true);
    };
    for (const id of ["stop", "upload", "interrupt"]) $(id).disabled = false;
    $("say").disabled = !$("say").dataset.tts;
    statsTimer = setInterval(stats, 1000);
    status("session " + sessionId);
  } catch (err) {
    status("could not start: " + err.message, true);
    await stop();
  }
}

async function stop() {
  clearInterval(statsTimer);
  if (ws) ws.close();
  if (micStream) micStream.getTracks().forEach((t) => t.stop());
  if (pc) pc.close();
  if (sessionId) await fetch(`/sessions/${sessionId}`, { method: "DELETE" }).catch(() => {});
  pc = ws = micStream = sessionId = null;
  $("start").disabled = false;
  for (const id of ["stop", "upload", "say", "interrupt"]) $(id).disabled = true;
}

async function stats() {
  try {
    const m = await api("/metrics");
    $("sessions").textContent = m.sessions;
    const mine = sessionId && m.per_session[sessionId];
    if (mine) { $("fps").textContent = mine.fps.toFixed(1); $("lat").textContent = mine.latency_ms_p50 ?? "-"; }
  } catch (err) { /* the next tick tries again */ }
}

async function upload() {
  const f = $("file").files[0];
  if (!f) { status("choose a file first", true); return; }
  try { const r = await api(`/sessions/${sessionId}/audio`, { method: "POST", body: f }); status(`saying ${r.seconds} s of audio`); }
  catch (err) { status(err.message, true); }
}

async function say() {
  try {
    const r = await api(`/sessions/${sessionId}/speak`, { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ text: $("text").value }) });
    status(`saying ${r.seconds} s of speech`);
  } catch (err) { status(err.message, true); }
}

async function interrupt() { try { await api(`/sessions/${sessionId}/interrupt`, { method: "POST" }); } catch (err) { status(err.message, true); } }

$("start").onclick = start; $("stop").onclick = stop; $("upload").onclick = upload; $("say").onclick = say;
$("interrupt").onclick = interrupt;
window.addEventListener("beforeunload", () => { if (sessionId) fetch(`/sessions/${sessionId}`, { method: "DELETE", keepalive: true }); });

loadAvatars().then(() => {
  if (new URLSearchParams(location.search).get("autostart") === "1") { $("mic").checked = true; start(); }
}).catch((err) => status("cannot list avatars: " + err.message, true));
