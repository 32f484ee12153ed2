"""HTTP API: ``uvicorn src.api:app`` serves the Production model from the MLflow registry.

Endpoints: ``POST /predict`` (multipart field ``file``), ``POST /predict/batch`` (field
``files``), ``GET /model``, ``GET /health``, ``GET /ready``, ``GET /metrics``, and the web page at
``/``. Settings: the ``serve`` section of the config (``configs/serve.yaml``, ``SERVE_*``
variables); the registry is ``MLFLOW_TRACKING_URI`` (config section ``mlflow``). The app is built
by :func:`src.serving.app.create_app`; ``make serve`` runs :mod:`src.serving.cli`. While it
serves, the process works from an empty folder of its own, never the folder it was started in.
"""

from __future__ import annotations

import sys

from fastapi import FastAPI

from src.config import ConfigError
from src.serving.app import create_app

__all__ = ["app", "create_app"]


def _app_from_environment() -> FastAPI:
    try:
        return create_app(private_workdir=True)
    except ConfigError as exc:
        # One line, no traceback: `uvicorn src.api:app` exits with this message.
        print(f"error: cannot start the API: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


app = _app_from_environment()
