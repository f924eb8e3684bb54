"""The OpenAI-compatible HTTP endpoint (`router serve`).

- `app`      the Starlette app factory: OpenAI's wire format in and out, nothing else
- `origins`  browser safety: Origin, Host and Content-Type checks, CORS
- `keys`     API keys (only their hashes are stored)
- `metrics`  Prometheus counters and histograms
"""

from router.server.app import create_app

__all__ = ["create_app"]
