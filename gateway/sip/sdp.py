"""Point pjsua's SDP at the media plane's socket: the audio stream's address and port (and
its RTCP attribute) are rewritten, everything negotiated (codecs, payload types, direction)
is left as pjsua wrote it. Pure text in, text out."""

from __future__ import annotations


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
