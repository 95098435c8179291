"""`embedtalk-sdk serve`: live avatars over WebRTC (aiortc + aiohttp). See design.md beside this file.

    from aiohttp import web
    from embedtalk_sdk.serve import Access, AvatarRegistry, Server
    from embedtalk_sdk.serve.app import listen
    registry = AvatarRegistry.load("avatars/")            # one bundle or a folder of bundles
    server = Server(registry, access=Access(token))      # every route but /health needs the token
    runner = web.AppRunner(server.app(), **server.runner_options())   # in your event loop,
    await runner.setup()                                             # as the command's `run` does
    await listen(runner.server, "127.0.0.1", 8000)

Needs the `serve` extra (pip install -e ".[serve]").
"""
from embedtalk_sdk.serve.access import Access
from embedtalk_sdk.serve.app import Exposure, Limits, Server, run
from embedtalk_sdk.serve.avatars import Admission, AvatarRegistry, UnknownAvatar
from embedtalk_sdk.serve.session import Session, StreamState
from embedtalk_sdk.serve.tts import TTS, EspeakTTS, TTSError

__all__ = ["Access", "Admission", "AvatarRegistry", "EspeakTTS", "Exposure", "Limits", "Server", "Session",
           "StreamState", "TTS", "TTSError", "UnknownAvatar", "run"]
