"""EmbedTalk SDK: embedding-driven Gaussian talking heads.

`from embedtalk_sdk import Avatar` is the playback API; it never imports PyTorch.
"""
from __future__ import annotations

__version__ = "0.2.0"

__all__ = ["Avatar", "__version__"]


def __getattr__(name: str):
    # Lazy so that `import embedtalk_sdk` stays cheap and torch-free.
    if name == "Avatar":
        from embedtalk_sdk.runtime.avatar import Avatar

        return Avatar
    raise AttributeError(name)
