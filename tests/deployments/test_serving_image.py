"""The serving image, built and run: the serving lock only, a non-root user, ``uvicorn src.api:app``
with a health check on /ready, the registry and credentials from the environment, and no secret in
any layer. It serves a Production model from a sqlite registry mounted in and answers /predict.

The build starts FROM a Debian 12 image made here (tests/helpers/docker.py; no registry is
reachable), and every container uses the host network, listening on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tarfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pytest

from deployments import images
from src import registry
from src.labels import CLASS_NAMES
from src.model_io import log_classifier, log_onnx
from tests.helpers import docker as dk
from tests.helpers.api import encode, free_port, wait_until
from tests.helpers.flows import tiny_model
from tests.helpers.install import REPO_ROOT, copy_checkout
from tests.helpers.mlflow_db import new_sqlite_store

pytestmark = [pytest.mark.integration, pytest.mark.docker]

NAME = "image-model"
HEAVY = ("torch", "lightning", "mlflow", "prefect", "dvc", "pandas", "great_expectations")
# Planted where a careless build would pick them up: files of the checkout and the build's own
# environment. None may appear in any layer, the history or the image's configuration.
PLANTED = {
    ".env": "SERVE_API_KEY={secret}\n",
    ".stack/env.sh": "export MLFLOW_TRACKING_URI=http://admin:{secret}@127.0.0.1:5000\n",
    "outputs/monitoring/notes.txt": "{secret}\n",
}


@pytest.fixture(scope="module")
def base_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with dk.running_daemon(tmp_path_factory.mktemp("dockerd") / "dockerd.log"):
        problem = dk.daemon_problem()
        if problem:
            pytest.fail(problem, pytrace=False)
        yield dk.test_base_image()


@pytest.fixture(scope="module")
def build_secret() -> str:
    return "planted-" + secrets.token_hex(16)


@pytest.fixture(scope="module")
def serving_image(
    base_image: str, build_secret: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The serving image, built from a copy of the checkout with secrets planted in it."""
    root = tmp_path_factory.mktemp("checkout")
    source = copy_checkout(root / "repo")
    shutil.copy2(REPO_ROOT / "uv.lock", source / "uv.lock")
    (source / ".tools").symlink_to(REPO_ROOT / ".tools")  # the pinned uv
    for relative, text in PLANTED.items():
        (source / relative).parent.mkdir(parents=True, exist_ok=True)
        (source / relative).write_text(text.format(secret=build_secret))
    context = images.write_context("serve", root / "context", root=source)
    tag = f"clothing-classifier-serve:test-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "SERVE_API_KEY": build_secret, "MLFLOW_TRACKING_PASSWORD": build_secret}
    started = time.monotonic()
    command = ["docker", "build", "--network", "host", "--build-arg", f"BASE={base_image}",
               "--tag", tag, str(context)]  # fmt: skip
    done = subprocess.run(
        command,
        env={**env, "DOCKER_BUILDKIT": "0"},
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    print(f"serving image built in {time.monotonic() - started:.0f} s")
    try:
        yield tag
    finally:
        dk.remove_image(tag)


@pytest.fixture
def mounted_registry(tmp_path: Path) -> Iterator[tuple[Path, str, str]]:
    """A sqlite registry (database + artifacts) in a folder the image's user may read, holding a
    Production version; (folder, tracking URI, version)."""
    folder = tmp_path / "registry"
    folder.mkdir()
    folder.chmod(0o755)  # tmp_path itself is 0700: the folder is mounted, its parents are not
    uri = new_sqlite_store(folder / "mlflow.db")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        experiment = mlflow.create_experiment("image", artifact_location=str(folder / "artifacts"))
        client = registry.get_client(uri)
        with mlflow.start_run(experiment_id=experiment) as run:
            info = log_classifier(tiny_model(3))
        log_onnx(client, run.info.run_id, tiny_model(3))
        version = registry.register_candidate(
            client, NAME, model_uri=info.model_uri, run_id=run.info.run_id
        )
        registry.promote_candidate(client, NAME, str(version.version), passed=True, reasons=["t"])
        yield folder, uri, str(version.version)
    finally:
        mlflow.set_tracking_uri(previous)


def run_in_image(image: str, *command: str) -> str:
    done = dk.docker("run", "--rm", "--network", "host", image, *command, timeout=120)
    return done.stdout


def image_files(image: str, dest: Path) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of every file in every layer of ``image`` and of its metadata (``docker
    save``: the configuration, the history, the manifest)."""
    archive = dest / "image.tar"
    dk.docker("save", "--output", str(archive), image, timeout=600)
    with tarfile.open(archive) as saved:
        for member in saved.getmembers():
            handle = saved.extractfile(member)
            if handle is None:
                continue
            if not member.name.endswith("layer.tar"):
                yield member.name, handle.read()
                continue
            with tarfile.open(fileobj=handle) as layer:
                for item in layer.getmembers():
                    # Links are read as their targets; devices and folders have no bytes.
                    inner = layer.extractfile(item) if item.isfile() else None
                    if inner is not None:
                        yield f"{member.name}:{item.name}", inner.read()


@pytest.mark.timeout(1800)
def test_the_serving_image_is_the_serving_role_as_a_non_root_user_with_no_secret(
    serving_image: str, build_secret: str, tmp_path: Path
) -> None:
    config = dk.inspect("image", serving_image)["Config"]
    size = dk.inspect("image", serving_image)["Size"]
    print(f"serving image: {size / 1e6:.0f} MB (with the Debian 12 test base)")
    assert config["User"] and config["User"].split(":")[0] not in ("", "0", "root")
    assert config["Cmd"] == ["uvicorn", "src.api:app"]
    assert "/ready" in " ".join(config["Healthcheck"]["Test"])
    assert run_in_image(serving_image, "id", "-u").strip() != "0"

    probe = f"import importlib.util as u, json; print(json.dumps({{m: bool(u.find_spec(m)) for m in {HEAVY!r}}}))"
    present = json.loads(run_in_image(serving_image, "python3", "-c", probe))
    assert not any(present.values()), present  # the serving lock only

    history = dk.docker("history", "--no-trunc", serving_image).stdout
    assert build_secret not in history and build_secret not in json.dumps(config)
    leaked = [
        name for name, data in image_files(serving_image, tmp_path) if build_secret.encode() in data
    ]
    assert leaked == [], f"the planted secret is in the image: {leaked}"


@pytest.mark.timeout(600)
def test_the_serving_image_serves_production_from_a_mounted_registry(
    serving_image: str, mounted_registry: tuple[Path, str, str]
) -> None:
    folder, uri, version = mounted_registry
    port = free_port()
    key = "runtime-" + secrets.token_hex(8)
    name = f"clothing-classifier-serve-test-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    dk.docker(
        "run", "--detach", "--name", name, "--network", "host",
        "--health-interval", "1s", "--health-start-period", "120s",
        "--volume", f"{folder}:{folder}:ro",  # the registry records absolute artifact paths
        "--env", f"MLFLOW_TRACKING_URI={uri}", "--env", f"MLFLOW_REGISTERED_MODEL_NAME={NAME}",
        "--env", f"SERVE_API_KEY={key}",
        "--env", "UVICORN_HOST=127.0.0.1", "--env", f"UVICORN_PORT={port}",
        serving_image,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            state = dk.inspect("container", name)["State"]
            assert state["Running"], dk.docker("logs", name, check=False).stderr[-3000:]
            try:
                return httpx.get(f"{url}/ready", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, timeout=240, interval=0.1)
        print(
            f"serving image cold start (docker run to /ready 200): {time.monotonic() - started:.1f} s"
        )
        assert httpx.get(f"{url}/ready", timeout=5).json()["model_version"] == version

        image = encode(np.random.default_rng(0).integers(0, 255, (28, 28), dtype=np.uint8))
        files = {"file": ("x.png", image, "image/png")}
        refused = httpx.post(f"{url}/predict", files=files, timeout=30)
        assert refused.status_code == 401  # the API key came from the environment
        answer = httpx.post(f"{url}/predict", files=files, headers={"X-API-Key": key}, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json()["label"] in CLASS_NAMES and answer.json()["model_version"] == version

        health = lambda: dk.inspect("container", name)["State"]["Health"]["Status"]  # noqa: E731
        assert wait_until(lambda: health() == "healthy", timeout=120, interval=0.5)
        logs = dk.docker("logs", name).stdout + dk.docker("logs", name).stderr
        assert key not in logs
    finally:
        dk.remove_container(name)
