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
