"""Helpers for the install tests (fixtures are in tests/install/conftest.py): build the wheel from a
copy of the checkout, install it outside the checkout, measure a virtualenv."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
# What a build reads; copied so the build's own folders (build/, *.egg-info) stay out of the checkout.
BUILD_INPUTS = ("pyproject.toml", "setup.py", "README.md", "LICENSE")
SOURCE_DIRS = ("src", "flows", "deployments", "configs")


def uv_path() -> Path:
    """The project's pinned uv, which the Makefile brings into .tools/ (`make install`)."""
    uv = REPO_ROOT / ".tools" / "bin" / "uv"
    if not uv.is_file():
        raise FileNotFoundError(f"{uv} is missing: run `make install` first")
    return uv


def pyproject_version() -> str:
    with (REPO_ROOT / "pyproject.toml").open("rb") as handle:
        return str(tomllib.load(handle)["project"]["version"])


def copy_checkout(dest: Path) -> Path:
    dest.mkdir(parents=True)
    for name in BUILD_INPUTS:
        shutil.copy2(REPO_ROOT / name, dest / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in SOURCE_DIRS:
        shutil.copytree(REPO_ROOT / name, dest / name, ignore=ignore)
    return dest


def build_wheel(dest: Path) -> Path:
    """The project's wheel, built with this environment's setuptools (no download)."""
    source = copy_checkout(dest / "source")
    pip = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run(
        [*pip, "--wheel-dir", str(dest / "dist"), str(source)],
        check=True,
        timeout=300,
    )
    (wheel,) = (dest / "dist").glob("clothing_classifier-*.whl")
    return wheel


def install_target(wheel: Path, target: Path) -> Path:
    """``wheel`` alone (no dependencies) unpacked into ``target``, as a non-editable install."""
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index"]
    subprocess.run(
        [*pip, "--target", str(target), str(wheel)],
        check=True,
        timeout=300,
    )
    return target


def tree_bytes(folder: Path) -> int:
    """Bytes of every file under ``folder`` (links not followed)."""
    total = 0
    for parent, _dirs, files in os.walk(folder):
        for name in files:
            total += os.lstat(os.path.join(parent, name)).st_size
    return total


def copy_tracked(dest: Path) -> Path:
    """A clean clone of the working tree: the files git tracks plus new ones it does not ignore,
    committed into a new repository (DVC needs one)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT, capture_output=True, check=True, timeout=60,
    ).stdout.decode()  # fmt: skip
    for name in filter(None, listed.split("\0")):
        source = REPO_ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid"]
    for step in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "clone"]):
        subprocess.run([*git, *step], cwd=dest, check=True, capture_output=True, timeout=120)
    return dest


def find_python(minor: int) -> Path:
    """CPython 3.<minor>: ``python3.<minor>`` on PATH if it runs, else pyenv's newest 3.<minor>.x."""
    name = f"python3.{minor}"
    on_path = shutil.which(name)
    if on_path and subprocess.run([on_path, "-c", ""], capture_output=True).returncode == 0:
        return Path(on_path)
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    found = sorted(
        root.glob(f"3.{minor}.*/bin/{name}"),
        key=lambda p: tuple(int(x) for x in p.parts[-3].split(".") if x.isdigit()),
    )
    if not found:
        raise FileNotFoundError(
            f"CPython 3.{minor} is needed for this test: install it (pyenv install 3.{minor})"
        )
    return found[-1]


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without what would point a nested make, uv or the project's
    settings at our own venv, registry or working files."""
    drop = (
        "VIRTUAL_ENV",
        "UV_PROJECT_ENVIRONMENT",
        "MAKEFLAGS",
        "MAKELEVEL",
        "MFLAGS",
        "PYTHONPATH",
    )
    # Settings an earlier test may have left in this process's environment: MLflow sets
    # MLFLOW_TRACKING_URI whenever a URI is set, e.g. back to cwd's (the repo's) mlflow.db.
    pinned = ("MLFLOW_", "PREFECT_API", "PATHS_", "SERVE_", "MONITOR_", "TRAIN_", "FLOW_", "GATE_")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith(pinned)}
    return {**env, **extra}
