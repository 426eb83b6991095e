"""The node's media plane process: RTP, codecs, VAD, recording and agent sessions of every
call, served on one clock (process.py)."""
