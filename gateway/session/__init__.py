"""Per-call I/O shells around media/: the contract the SIP engine drives (`contract`, with the
echo session), the agent WebSocket session (`agent`), WebRTC (`webrtc`), recording
(`recording`), the sans-IO wire adapters per agent protocol (`link`) and the factory that
picks one per call (`factory`).

Nothing is imported here, so the engine can import the contract without aiortc."""
