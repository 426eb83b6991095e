"""The media exception family: every audio-path error a caller can act on derives from MediaError.

`media` never imports `gateway`, so the gateway wraps or re-raises these at its boundary.
"""

from __future__ import annotations


class MediaError(Exception):
    """Base class for errors raised by the media package."""


class ProtocolError(MediaError):
    """An agent sent a message that does not follow its protocol (bad JSON, missing field...)."""


class PlayoutOverflow(MediaError):
    """The agent sent more audio than the playout buffer may hold; the chunk was rejected."""
