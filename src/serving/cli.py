"""``clothing-classifier serve`` (``make serve``): run ``src.api:app`` under uvicorn with the
``serve`` config's host, port and connection limits (``SERVE_HOST``, ``SERVE_PORT``, ...)."""

from __future__ import annotations

import argparse
import sys

import uvicorn

from src.config import load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clothing-classifier serve", description=__doc__)
    parser.add_argument("--host", help="default: serve.host (SERVE_HOST)")
    parser.add_argument("--port", type=int, help="default: serve.port (SERVE_PORT)")
    args = parser.parse_args(argv)
    serve = load_config().serve  # a bad setting raises ConfigError: one line, exit 2 (src.cli)
    uvicorn.run(
        "src.api:app",
        host=args.host or serve.host,
        port=args.port or serve.port,
        timeout_keep_alive=int(max(1, serve.keep_alive_timeout_s)),
        limit_concurrency=serve.limit_concurrency or None,
        log_level=serve.log_level.lower(),
    )
    return 0


if __name__ == "__main__":
    from src.cli import run

    sys.exit(run("serve", sys.argv[1:]))
