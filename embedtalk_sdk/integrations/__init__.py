"""Agent-framework integrations: LiveKit Agents (livekit_avatar.py, livekit_worker.py) and Pipecat
(pipecat_video.py), both over the framework-neutral live stream of live.py. See design.md here.
Each module needs its extra (livekit / pipecat); nothing here imports torch."""
