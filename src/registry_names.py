"""Names the registry's writer (:mod:`src.registry`) and the API's reader
(:mod:`src.serving.registry_reader`) must agree on; no MLflow import, so the API can use them."""

from __future__ import annotations

PRODUCTION_ALIAS = "production"  # the alias of the served version (the source of truth)
PRODUCTION_STAGE = "Production"  # the deprecated stage kept in step with it
