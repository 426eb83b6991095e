"""The command line (`sipedge ...`, in `commands`) and its HTTP client of a node's API."""

from gateway.cli.commands import main

__all__ = ["main"]
