"""The flow, gate and registry tests' fixtures (a throw-away MLflow store, the Prefect server and
the tiny IDX sources) are session-wide, in ``tests/conftest.py``."""
