"""The package works installed, not only from a checkout: the wheel carries configs/ and the web
page, and a non-editable install loads its settings, serves the page and runs the CLI from another
folder; the API's version is the package's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from src.package import package_version
from src.serving.app import create_app
from tests.helpers.api import make_config
from tests.helpers.install import REPO_ROOT, install_target, pyproject_version

# Run inside the installed copy, from a folder that is not the checkout.
INSTALLED_CHECK = """
import json, sys
from fastapi.testclient import TestClient
import src
from src.config import load_config
from src.package import IS_CHECKOUT, PROJECT_ROOT, package_version
from src.serving.app import create_app
cfg = load_config(environ={})
client = TestClient(create_app(cfg))  # no lifespan: the page and schema need no model
page, script = client.get("/"), client.get("/static/app.js")
print(json.dumps({
    "src": src.__file__, "checkout": IS_CHECKOUT, "root": str(cfg.paths.root),
    "project_root": str(PROJECT_ROOT), "outputs": str(cfg.paths.outputs),
    "page": [page.status_code, page.headers["content-type"], "<html" in page.text.lower()],
    "script": script.status_code, "api_version": client.get("/openapi.json").json()["info"]["version"],
    "version": package_version(), "smoke": load_config(profile="smoke", environ={}).profile,
}))
"""


def test_the_wheel_ships_every_config_and_the_web_page(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = sorted(
        p.relative_to(REPO_ROOT / "configs") for p in (REPO_ROOT / "configs").rglob("*.yaml")
    )
    assert configs, "no configs/*.yaml in the checkout"
    for path in configs:
        assert f"src/_configs/{path.as_posix()}" in names, path
    for path in sorted((REPO_ROOT / "src" / "static").iterdir()):
        assert f"src/static/{path.name}" in names, path
    for folder in ("src", "flows", "deployments"):
        for path in (REPO_ROOT / folder).rglob("*.py"):
            assert path.relative_to(REPO_ROOT).as_posix() in names, path
    assert any(name.endswith("/licenses/LICENSE") for name in names)
    assert f"clothing_classifier-{pyproject_version()}.dist-info/METADATA" in names


def installed_env(site: Path) -> dict[str, str]:
    # The installed copy first; the test environment's site-packages still give the dependencies.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SERVE_", "MLFLOW_", "PATHS_")) and k != "CONFIG_DIR"
    }
    return {**env, "PYTHONPATH": str(site), "PROFILE": ""}


def test_a_non_editable_install_serves_and_runs_the_cli_from_another_folder(
    wheel: Path, tmp_path: Path
) -> None:
    site = install_target(wheel, tmp_path / "site")
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = installed_env(site)
    result = subprocess.run(
        [sys.executable, "-c", INSTALLED_CHECK],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["src"] == str(site / "src" / "__init__.py")  # the installed copy, not the checkout
    assert seen["checkout"] is False
    assert seen["root"] == seen["project_root"] == str(work.resolve())
    assert seen["outputs"] == str(work.resolve() / "outputs")
    assert seen["page"] == [200, "text/html; charset=utf-8", True]
    assert seen["script"] == 200
    assert seen["api_version"] == seen["version"] == pyproject_version()
    assert seen["smoke"] == "smoke"  # the profiles ship too
    cli = subprocess.run(
        [sys.executable, "-m", "src.cli", "serve", "--help"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode == 0 and "clothing-classifier serve" in cli.stdout, cli.stderr


def test_the_api_version_is_the_package_version(tmp_path: Path) -> None:
    app = create_app(make_config(f"sqlite:///{tmp_path}/mlflow.db", "version-model"))
    assert app.openapi()["info"]["version"] == package_version() == pyproject_version()
