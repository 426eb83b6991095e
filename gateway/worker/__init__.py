"""The SIP worker process (`process`: one pjsua2 endpoint and the media of its calls) and its
framed IPC link to the supervisor (`ipc`). Run as `python -m gateway.worker`."""
