"""The node's HTTP API: the FastAPI app (`app`), auth, models, and the /v1 routes (`calls`,
`resources`). The supervisor runs `ApiServer`; tests build the app with `create_app`."""

from gateway.api.app import ApiServer, create_app

__all__ = ["ApiServer", "create_app"]
