"""Playback: `Avatar`, the bundle reader and the backends. Never imports torch."""
from embedtalk_sdk.runtime.avatar import Avatar
from embedtalk_sdk.runtime.backends.registry import available_backends, create_backend
from embedtalk_sdk.runtime.bundle import Bundle, BundleError
from embedtalk_sdk.runtime.errors import EmbedTalkError

__all__ = ["Avatar", "Bundle", "BundleError", "EmbedTalkError", "available_backends", "create_backend"]
