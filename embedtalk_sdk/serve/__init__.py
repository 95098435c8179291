"""`embedtalk-sdk serve`: live avatars over WebRTC (aiortc + aiohttp). See design.md beside this file.

    from embedtalk_sdk.serve import Access, AvatarRegistry, Server
    from embedtalk_sdk.serve.app import BackgroundServer
    registry = AvatarRegistry.load("avatars/")            # one bundle or a folder of bundles
    server = Server(registry, access=Access(token))      # every route but /health needs the token
    with BackgroundServer(server, port=8000) as bg:      # its own thread; or the command's `run`
        ...

Needs the `serve` extra (pip install -e ".[serve]").
"""
from embedtalk_sdk.serve.access import Access
from embedtalk_sdk.serve.app import Exposure, Limits, Server, run
from embedtalk_sdk.serve.avatars import Admission, AvatarRegistry, UnknownAvatar
from embedtalk_sdk.serve.session import Session, StreamState
from embedtalk_sdk.serve.tts import TTS, EspeakTTS, TTSError

__all__ = ["Access", "Admission", "AvatarRegistry", "EspeakTTS", "Exposure", "Limits", "Server", "Session",
           "StreamState", "TTS", "TTSError", "UnknownAvatar", "run"]
