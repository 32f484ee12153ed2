"""``make unit`` runs no real server and reads no real data: every test that does is marked
(integration, services or install), which ``make unit``'s marker expression leaves out."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Fixtures that start a real server (uvicorn, Prefect, PostgreSQL, MLflow, the team stack, the
# edge) or read the real Fashion-MNIST files; a test using one, even through another fixture,
# is not a unit test.
REAL_FIXTURES = {
    "server_factory",
    "prefect_server",
    "prefect_api",
    "postgres_url",
    "mlflow_server",
    "team",
    "deployment_run",
    "edge",
    "shared_data_dir",
}
# Calls in a test's own body that start a real server process.
REAL_CALLS = ("start_server(", "running_edge(", "subprocess.Popen(", "running_stack(")


def unit_marker_expression() -> str:
    """The ``-m`` expression of the Makefile's ``unit`` target."""
    recipe = re.search(r"^unit:.*\n\t(.*)$", (REPO / "Makefile").read_text(), re.MULTILINE)
    assert recipe, "the Makefile has no unit target"
    expression = re.search(r'-m "([^"]+)"', recipe.group(1))
    assert expression, f"make unit selects no markers: {recipe.group(1)}"
    return expression.group(1)


def test_make_unit_collects_no_test_that_starts_a_server_or_reads_real_data(
    tmp_path: Path,
) -> None:
    listing = tmp_path / "collected.json"
    collect = ["--collect-only", "-q", "-p", "tests.helpers.collected", "-p", "no:cacheprovider"]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", *collect, "-m", unit_marker_expression()],
        cwd=REPO,
        env={**os.environ, "COLLECTED_JSON": str(listing)},
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    collected = json.loads(listing.read_text())
    assert len(collected) > 100  # the unit tests are there
    offenders = sorted(
        f"{row['id']} ({', '.join(sorted(REAL_FIXTURES & set(row['fixtures'])))}"
        f"{', '.join(call for call in REAL_CALLS if call in row['source'])})"
        for row in collected
        if REAL_FIXTURES & set(row["fixtures"]) or any(c in row["source"] for c in REAL_CALLS)
    )
    assert not offenders, "mark these integration: " + "; ".join(offenders)
