"""sipedge media: everything that is audio, free of SIP (frames, codecs, VAD, playout, agents)."""
