"""Transports from a call's audio to an AI agent: twilio-ws, pcm-ws, webrtc, echo."""
