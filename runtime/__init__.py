"""Playback: `Avatar`, the bundle reader and the backends. Never imports torch."""
from embedtalk_sdk.runtime.avatar import Avatar
from embedtalk_sdk.runtime.backends.registry import available_backends, create_backend
from embedtalk_sdk.runtime.bundle import Bundle, BundleError

__all__ = ["Avatar", "Bundle", "BundleError", "available_backends", "create_backend"]
