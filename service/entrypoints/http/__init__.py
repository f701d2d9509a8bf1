"""The HTTP API on FastAPI: health probes and the decision API (``app.build_http_app``)."""
