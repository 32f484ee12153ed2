"""The serving role alone, on every supported Python: a fresh virtualenv with uv.lock's base
dependencies and the built wheel (not editable) has no training stack, stays small, and its
``uvicorn src.api:app`` serves a registered Production model from another folder and follows a
promotion. The model is made and registered
with this (full) environment; the light one only reads the registry."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pytest

from src import registry
from src.labels import CLASS_NAMES
from src.model_io import log_classifier
from tests.helpers.api import encode, start_server, stop_server, wait_until
from tests.helpers.flows import tiny_model
from tests.helpers.install import REPO_ROOT, find_python, pyproject_version, tree_bytes, uv_path

NAME = "light-venv-model"
HEAVY = ("torch", "lightning", "mlflow", "prefect", "dvc", "pandas", "great_expectations")
MAX_VENV_BYTES = 400 * 1024 * 1024


def run(command: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def make_serving_venv(folder: Path, wheel: Path, python: Path) -> Path:
    """A venv of ``python`` with the serving role of uv.lock (hashes checked) and the wheel itself."""
    subprocess.run([str(python), "-m", "venv", str(folder)], check=True, timeout=300)
    target = ["--python", str(folder / "bin" / "python")]
    lock = folder.parent / "serve-requirements.txt"
    uv = str(uv_path())
    for step in (
        ["export", "--frozen", "--no-dev", "--no-emit-project", "--quiet", "-o", str(lock)],
        ["pip", "install", "--quiet", *target, "--require-hashes", "-r", str(lock)],
        ["pip", "install", "--quiet", *target, "--no-deps", str(wheel)],
        ["pip", "check", *target],  # the lock is complete for this Python
    ):
        done = run([uv, *step], cwd=REPO_ROOT, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return folder


def register_production(tracking_uri: str, tmp_path: Path, seed: int) -> str:
    """Log a tiny model as the trainer does (the onnx flavour), register and promote it."""
    mlflow.set_tracking_uri(tracking_uri)
    client = registry.get_client(tracking_uri)
    experiment = mlflow.get_experiment_by_name("light-venv")
    experiment_id = (
        experiment.experiment_id
        if experiment
        else mlflow.create_experiment("light-venv", artifact_location=str(tmp_path / "art"))
    )
    with mlflow.start_run(experiment_id=experiment_id) as run_:
        info = log_classifier(tiny_model(seed))
    mv = registry.register_candidate(
        client, NAME, model_uri=info.model_uri, run_id=run_.info.run_id
    )
    registry.promote_candidate(client, NAME, str(mv.version), passed=True, reasons=["test"])
    return str(mv.version)


def served_version(url: str) -> str | None:
    try:
        response = httpx.get(f"{url}/ready", timeout=2)
    except httpx.HTTPError:
        return None
    return str(response.json().get("model_version")) if response.status_code == 200 else None


@pytest.mark.integration
@pytest.mark.install
@pytest.mark.timeout(900)
@pytest.mark.parametrize("minor", [11, 12, 13])
def test_the_serving_install_has_no_training_stack_and_serves_production(
    minor: int, wheel: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PYTHONPATH", raising=False)  # the fresh venv sees only its own packages
    python = Path(sys.executable) if sys.version_info[:2] == (3, minor) else find_python(minor)
    venv = make_serving_venv(tmp_path / "serve-venv", wheel, python)
    python = str(venv / "bin" / "python")
    probe = f"import importlib.util as u, json; print(json.dumps({{m: bool(u.find_spec(m)) for m in {HEAVY!r}}}))"
    present = json.loads(run([python, "-c", probe], cwd=tmp_path).stdout)
    assert not any(present.values()), present
    size = tree_bytes(venv)
    print(f"serving venv: {size / 2**20:.0f} MiB")
    assert size <= MAX_VENV_BYTES, f"{size / 2**20:.0f} MiB"

    work = tmp_path / "elsewhere"  # not the checkout: the installed package's own files only
    work.mkdir()
    cli = run([str(venv / "bin" / "clothing-classifier"), "train"], cwd=work)
    assert cli.returncode == 1 and cli.stderr.count("\n") == 1, cli.stderr
    assert "install the train extra" in cli.stderr

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    previous = mlflow.get_tracking_uri()
    try:
        v1 = register_production(uri, tmp_path, seed=1)
        server = start_server(
            tmp_path,
            uri,
            NAME,
            uvicorn=(str(venv / "bin" / "uvicorn"),),
            cwd=work,
            SERVE_POLL_INTERVAL_S="0.5",
            PATHS_ROOT="",  # the installed default: working files in the folder it starts in
        )
        try:
            assert served_version(server.url) == v1
            image = encode(np.random.default_rng(0).integers(0, 255, (28, 28), dtype=np.uint8))
            answer = httpx.post(
                f"{server.url}/predict", files={"file": ("x.png", image, "image/png")}, timeout=30
            )
            assert answer.status_code == 200, answer.text
            assert answer.json()["label"] in CLASS_NAMES and answer.json()["model_version"] == v1
            assert httpx.get(f"{server.url}/", timeout=10).status_code == 200
            schema = httpx.get(f"{server.url}/openapi.json", timeout=10).json()
            assert schema["info"]["version"] == pyproject_version()
            v2 = register_production(uri, tmp_path, seed=2)
            wait_until(lambda: served_version(server.url) == v2, timeout=120, interval=0.2)
            again = httpx.post(
                f"{server.url}/predict", files={"file": ("x.png", image, "image/png")}, timeout=30
            )
            assert again.status_code == 200 and again.json()["model_version"] == v2
            assert (work / "outputs").is_dir()  # working files land in the folder it runs in
        finally:
            stop_server(server)
    finally:
        mlflow.set_tracking_uri(previous)
