"""Point pjsua's SDP at the media plane's socket: the audio stream's address and port (and
its RTCP attribute) are rewritten, everything negotiated (codecs, payload types, direction)
is left as pjsua wrote it. Pure text in, text out."""

from __future__ import annotations

from dataclasses import dataclass


def point_audio_at(sdp: str, host: str | None, port: int) -> str:
    """`sdp` with its first audio stream on host:port (RTCP on port + 1); host None keeps
    the address pjsua chose (a wildcard bind: the host's own address). A stream pjsua
    disabled (port 0) stays disabled; an SDP without audio is returned as it was."""
    lines = sdp.split("\r\n")
    audio = next((i for i, line in enumerate(lines) if line.startswith("m=audio ")), None)
    if audio is None:
        return sdp
    fields = lines[audio].split(" ")
    if fields[1] == "0":
        return sdp
    fields[1] = str(port)
    lines[audio] = " ".join(fields)
    if host is None:
        return "\r\n".join(_rtcp_port(line, port) for line in lines)
    family = "IP6" if ":" in host else "IP4"
    end = next((i for i in range(audio + 1, len(lines)) if lines[i].startswith("m=")), len(lines))
    media_c = False
    for i in range(audio + 1, end):
        if lines[i].startswith("c="):
            lines[i] = f"c=IN {family} {host}"
            media_c = True
        elif lines[i].startswith("a=rtcp:"):
            lines[i] = f"a=rtcp:{port + 1} IN {family} {host}"
    if not media_c:
        # The session-level c= applies to every stream: with one audio stream (all pjsua
        # offers here) it is this stream's address; a media-level c= keeps others intact.
        session_c = next((i for i in range(audio) if lines[i].startswith("c=")), None)
        others = any(line.startswith("m=") for line in lines[end:]) or any(
            line.startswith("m=") for line in lines[:audio]
        )
        if session_c is not None and not others:
            lines[session_c] = f"c=IN {family} {host}"
        else:
            lines.insert(audio + 1, f"c=IN {family} {host}")
    return "\r\n".join(lines)


def _rtcp_port(line: str, port: int) -> str:
    if not line.startswith("a=rtcp:"):
        return line
    rest = line[len("a=rtcp:") :].split(" ", 1)
    return f"a=rtcp:{port + 1}" + (f" {rest[1]}" if len(rest) > 1 else "")


# -- SDES (RFC 4568): the keys of an SRTP stream, from the a=crypto lines pjsua wrote and the
# far end sent. The media plane protects and unprotects the call's RTP with them.

SUITES = ("AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32")  # what the plane speaks


@dataclass(frozen=True)
class Crypto:
    tag: int
    suite: str
    key: str  # base64 of the master key and salt (30 bytes): a secret, never logged

    def __repr__(self) -> str:
        return f"Crypto(tag={self.tag}, suite={self.suite}, key=***)"


def audio_crypto(sdp: str) -> list[Crypto]:
    """The a=crypto lines of the first audio stream, in order, that name a suite we speak
    and an inline key (lifetime and MKI parameters, which pjsua does not write, are ignored;
    a key with an MKI is skipped)."""
    lines = sdp.replace("\r\n", "\n").split("\n")
    audio = next((i for i, line in enumerate(lines) if line.startswith("m=audio ")), None)
    if audio is None:
        return []
    found = []
    for line in lines[audio + 1 :]:
        if line.startswith("m="):
            break
        if not line.startswith("a=crypto:"):
            continue
        fields = line[len("a=crypto:") :].split()
        if len(fields) < 3 or not fields[0].isdigit() or fields[1] not in SUITES:
            continue
        if not fields[2].startswith("inline:"):
            continue
        key, *params = fields[2][len("inline:") :].split("|")
        if any(":" in p for p in params):
            continue  # an MKI
        found.append(Crypto(int(fields[0]), fields[1], key))
    return found


def audio_profile(sdp: str) -> str | None:
    """The transport profile of the first audio stream (RTP/AVP, RTP/SAVP, ...)."""
    for line in sdp.replace("\r\n", "\n").split("\n"):
        if line.startswith("m=audio "):
            fields = line.split()
            return fields[2] if len(fields) > 2 else None
    return None


def srtp_refusal(mode: str, offer: str) -> str | None:
    """Why an inbound offer is refused (488) under a trunk's `srtp` mode, or None: required
    needs keys we can use; off refuses an offer that takes SRTP only (RTP/SAVP)."""
    keys = audio_crypto(offer)
    if mode == "required" and not keys:
        return "srtp required: the offer has no a=crypto key with " + " or ".join(SUITES)
    if mode == "off" and audio_profile(offer) == "RTP/SAVP":
        return "srtp off for this trunk: the offer takes SRTP only (RTP/SAVP)"
    if mode != "off" and audio_profile(offer) == "RTP/SAVP" and not keys:
        return "the offer takes SRTP only, with no key the edge can use (" + ", ".join(SUITES) + ")"
    return None
