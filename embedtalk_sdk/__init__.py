"""EmbedTalk SDK: embedding-driven Gaussian talking heads.

`from embedtalk_sdk import Avatar` is the playback API; it never imports PyTorch.
`EmbedTalkError` is the base of every exception class the SDK defines.
"""
from __future__ import annotations

__version__ = "0.2.0"

__all__ = ["Avatar", "EmbedTalkError", "__version__"]


def __getattr__(name: str):
    # Lazy so that `import embedtalk_sdk` stays cheap and torch-free.
    if name == "Avatar":
        from embedtalk_sdk.runtime.avatar import Avatar

        return Avatar
    if name == "EmbedTalkError":
        from embedtalk_sdk.runtime.errors import EmbedTalkError

        return EmbedTalkError
    raise AttributeError(name)
