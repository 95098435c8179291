"""`embedtalk-sdk serve`: live avatars over WebRTC (aiortc + aiohttp). See design.md beside this file.

    from embedtalk_sdk.serve import AvatarRegistry, Server
    server = Server(AvatarRegistry.load("avatars/"))   # one bundle or a folder of bundles
    web.run_app(server.app(), host="127.0.0.1", port=8000)

Needs the `serve` extra (pip install -e ".[serve]").
"""
from embedtalk_sdk.serve.app import Limits, Server, run
from embedtalk_sdk.serve.avatars import Admission, AvatarRegistry, UnknownAvatar
from embedtalk_sdk.serve.session import Session, StreamState
from embedtalk_sdk.serve.tts import TTS, EspeakTTS, TTSError

__all__ = ["Admission", "AvatarRegistry", "EspeakTTS", "Limits", "Server", "Session", "StreamState", "TTS",
           "TTSError", "UnknownAvatar", "run"]
