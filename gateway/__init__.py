"""sipedge gateway: the node — config, SIP engine, calls, events, store, API, CLI."""

__version__ = "0.1.0"
