"""The sipedge exception family: every error a user can act on derives from SipedgeError."""

from __future__ import annotations


class SipedgeError(Exception):
    """Base of every sipedge error."""


class ConfigError(SipedgeError):
    """The configuration file is invalid; `problems` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class SipEngineError(SipedgeError):
    """The SIP engine could not do what was asked."""


class CallRefused(SipedgeError):
    """An outbound call was refused before any INVITE was sent."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
