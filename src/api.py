"""HTTP API: ``uvicorn src.api:app`` serves the Production model from the MLflow registry.

Endpoints: ``POST /predict`` (multipart field ``file``), ``POST /predict/batch`` (field
``files``), ``GET /model``, ``GET /health``, ``GET /ready``, ``GET /metrics``, and the web page at
``/``. Settings: the ``serve`` section of the config (``configs/serve.yaml``, ``SERVE_*``
variables); the registry is ``MLFLOW_TRACKING_URI`` (config section ``mlflow``). The app is built
by :func:`src.serving.app.create_app`; ``make serve`` runs :mod:`src.serving.cli`. While it
serves, the process works from an empty folder of its own, never the folder it was started in.
Worker processes started by the server's own flags (``uvicorn --workers N``, gunicorn's ``-w N``
with uvicorn workers) are set up as ``make serve``'s are (:mod:`src.serving.server_workers`).
"""

from __future__ import annotations

import sys
from typing import NoReturn

from src.config import ConfigError
from src.serving.server_workers import join_server_workers


def _exit_with(exc: ConfigError) -> NoReturn:
    # One line, no traceback: `uvicorn src.api:app` exits with this message.
    print(f"error: cannot start the API: {exc}", file=sys.stderr)
    raise SystemExit(2) from None


try:
    # Before the app (and prometheus_client) is imported: it decides where metrics live.
    join_server_workers()
except ConfigError as exc:
    _exit_with(exc)

from fastapi import FastAPI  # noqa: E402

from src.serving.app import create_app  # noqa: E402

__all__ = ["app", "create_app"]


def _app_from_environment() -> FastAPI:
    try:
        return create_app(private_workdir=True)
    except ConfigError as exc:
        _exit_with(exc)


app = _app_from_environment()
