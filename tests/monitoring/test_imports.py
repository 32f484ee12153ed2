"""The API's side of monitoring stays light and framework-free: no MLflow, Prefect, SciPy,
matplotlib or FastAPI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_api_side_of_monitoring_imports_no_heavy_stack() -> None:
    code = (
        "import sys, src.monitoring.answers, src.monitoring.inputs; "
        "print(sorted(m for m in ('mlflow', 'prefect', 'scipy', 'matplotlib', 'torch', 'fastapi', "
        "'starlette', 'src.training') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
