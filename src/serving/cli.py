"""``python -m src.serving.cli`` (``make serve``): run ``src.api:app`` under uvicorn with the
``serve`` config's host, port and connection limits (``SERVE_HOST``, ``SERVE_PORT``, ...)."""

from __future__ import annotations

import sys

import uvicorn

from src.config import ConfigError, load_config


def main() -> int:
    try:
        serve = load_config().serve
    except ConfigError as exc:
        print(f"error: cannot start the API: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(
        "src.api:app",
        host=serve.host,
        port=serve.port,
        timeout_keep_alive=int(max(1, serve.keep_alive_timeout_s)),
        limit_concurrency=serve.limit_concurrency or None,
        log_level=serve.log_level.lower(),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
