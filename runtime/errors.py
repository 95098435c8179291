"""`EmbedTalkError`: the one root of the exception classes the SDK defines.

Every error class of the project derives from it and keeps its standard base as well
(`BundleError(EmbedTalkError, ValueError)`, `BackendError(EmbedTalkError, RuntimeError)`): an app
catches the SDK's own errors with one `except EmbedTalkError`, and code that catches `ValueError`
or `RuntimeError` keeps working. Standard exceptions raised as such (FileNotFoundError for a
missing path, OSError from the file system, RuntimeError for a second clip on a busy `Avatar`) do
not derive from it. It lives in the runtime, the core every layer may import (plugins, export,
training, serve); `tests/test_errors.py` checks that no error class of the project forgets it.
"""
from __future__ import annotations

__all__ = ["EmbedTalkError"]


class EmbedTalkError(Exception):
    """Base of every exception the SDK defines; each also keeps its standard base (ValueError, ...)."""
