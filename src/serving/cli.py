"""``clothing-classifier serve`` (``make serve``): run ``src.api:app`` under uvicorn with the
``serve`` config's host, port, connection limits and worker processes (``SERVE_HOST``,
``SERVE_PORT``, ``SERVE_WORKERS``, ...)."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator

import uvicorn

from src.config import load_config
from src.serving.observability import MULTIPROC_DIR_ENV
from src.serving.workers import worker_count


@contextlib.contextmanager
def shared_metrics_folder(workers: int) -> Iterator[None]:
    """With several workers, one folder where each writes its metrics (prometheus_client's
    multiprocess mode) so that any worker's /metrics reports the whole service; removed after."""
    if workers == 1 or os.environ.get(MULTIPROC_DIR_ENV):
        yield
        return
    folder = tempfile.mkdtemp(prefix="clothing-classifier-metrics-")
    os.environ[MULTIPROC_DIR_ENV] = folder
    try:
        yield
    finally:
        os.environ.pop(MULTIPROC_DIR_ENV, None)
        shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clothing-classifier serve", description=__doc__)
    parser.add_argument("--host", help="default: serve.host (SERVE_HOST)")
    parser.add_argument("--port", type=int, help="default: serve.port (SERVE_PORT)")
    parser.add_argument("--workers", type=int, help="default: serve.workers (SERVE_WORKERS)")
    args = parser.parse_args(argv)
    serve = load_config().serve  # a bad setting raises ConfigError: one line, exit 2 (src.cli)
    workers = args.workers or worker_count(serve)
    # The workers read their share of the cores from it (src.serving.workers.worker_cores).
    os.environ["SERVE_WORKERS"] = str(workers)
    with shared_metrics_folder(workers):
        uvicorn.run(
            "src.api:app",
            host=args.host or serve.host,
            port=args.port or serve.port,
            workers=workers,
            timeout_keep_alive=int(max(1, serve.keep_alive_timeout_s)),
            limit_concurrency=serve.limit_concurrency or None,
            log_level=serve.log_level.lower(),
        )
    return 0


if __name__ == "__main__":
    from src.cli import run

    sys.exit(run("serve", sys.argv[1:]))
