"""SRTP (RFC 3711) for one call's RTP, both ways, with the keys SDES (RFC 4568) put in the
SDP: the media plane protects every packet it sends and unprotects every packet it receives.
libsrtp does the cryptography (pylibsrtp, which aiortc brings); this is the glue.
"""

from __future__ import annotations

import base64
import binascii

from pylibsrtp import Error, Policy, Session

_PROFILES = {
    "AES_CM_128_HMAC_SHA1_80": Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    "AES_CM_128_HMAC_SHA1_32": Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
}
KEY_BYTES = 30  # AES-128 master key (16) and salt (14)


class SrtpError(ValueError):
    pass


class SrtpStream:
    """`tx_key`: ours (what we wrote in our SDP), `rx_key`: the far end's; both base64 as
    they appear after `inline:`. Keys never appear in a repr or an error."""

    def __init__(self, suite: str, tx_key: str, rx_key: str) -> None:
        profile = _PROFILES.get(suite)
        if profile is None:
            raise SrtpError(f"SRTP suite {suite!r} is not one of {', '.join(_PROFILES)}")
        self.suite = suite
        self.unprotect_failures = 0
        self._tx = Session(_policy(_key(tx_key, "ours"), profile, Policy.SSRC_ANY_OUTBOUND))
        self._rx = Session(_policy(_key(rx_key, "the far end's"), profile, Policy.SSRC_ANY_INBOUND))

    def __repr__(self) -> str:
        return f"SrtpStream(suite={self.suite})"

    def protect(self, packet: bytes) -> bytes:
        return bytes(self._tx.protect(packet))

    def unprotect(self, packet: bytes) -> bytes | None:
        """The RTP packet, or None for one that fails authentication or is a replay."""
        try:
            return bytes(self._rx.unprotect(packet))
        except Error:
            self.unprotect_failures += 1
            return None


def _key(text: str, whose: str) -> bytes:
    try:
        key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise SrtpError(f"{whose} SRTP key is not base64") from None
    if len(key) != KEY_BYTES:
        raise SrtpError(f"{whose} SRTP key has {len(key)} bytes, not {KEY_BYTES}")
    return key


def _policy(key: bytes, profile: int, ssrc_type: int) -> Policy:
    policy = Policy(key=key, ssrc_type=ssrc_type, srtp_profile=profile)
    policy.allow_repeat_tx = True  # a retransmitted RTP packet (same seq) is not an error
    return policy
