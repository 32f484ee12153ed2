"""The Makefile's own install path on what a fresh machine has: the Python's ``venv`` with the pip it
bundles, untouched (3.11.7's is 23.2.1, which cannot install the lock by itself). The Makefile
brings its pinned uv and installs from uv.lock; an install cut off half-way is redone by the next
``make``; the training install on another supported Python runs the smoke pipeline."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SHARED_DATA
from tests.helpers.install import clean_env, copy_tracked, find_python


def make(
    checkout: Path, *args: str, timeout: float = 900, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", *args],
        cwd=checkout, env=clean_env(**env), capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def bundled_pip(python: str) -> str:
    """The pip version a new venv of ``python`` gets (ensurepip's wheel)."""
    done = subprocess.run([python, "-c", "import ensurepip; print(ensurepip.version())"],
                          capture_output=True, text=True, check=True, timeout=60)  # fmt: skip
    return done.stdout.strip()


def pip_version(venv: Path) -> str:
    done = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "--version"],
                          capture_output=True, text=True, check=True, timeout=60)  # fmt: skip
    return done.stdout.split()[1]


def site_packages(venv: Path) -> Path:
    (found,) = venv.glob("lib/python3.*/site-packages")
    return found


def imports(venv: Path, *modules: str) -> subprocess.CompletedProcess[str]:
    code = "; ".join(f"import {m}" for m in modules)
    return subprocess.run([str(venv / "bin" / "python"), "-c", code],
                          capture_output=True, text=True, timeout=300)  # fmt: skip


@pytest.mark.integration
@pytest.mark.install
@pytest.mark.timeout(1200)
def test_make_installs_with_the_machines_own_venv_and_redoes_an_interrupted_install(
    tmp_path: Path,
) -> None:
    python = shutil.which("python3") or sys.executable  # the machine's python3, as `make` finds it
    checkout = copy_tracked(tmp_path / "clone")
    done = make(checkout, "install-train", f"PYTHON={python}")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert pip_version(checkout / ".tools") == bundled_pip(python)  # its pip was not upgraded
    venv = checkout / ".venv"
    assert imports(venv, "torch", "lightning", "prefect", "mlflow", "src.cli").returncode == 0

    # What a network drop or Ctrl-C half-way leaves: no finished-sync mark, a package's metadata
    # already in place but one of its files not yet written.
    # (The serving role, a subset, is enough to show it: the venv is remade with its 29 packages.)
    (venv / ".synced").unlink()
    (site_packages(venv) / "fastapi" / "routing.py").unlink()
    assert imports(venv, "fastapi.routing").returncode != 0
    again = make(checkout, "install-serve", f"PYTHON={python}")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert imports(venv, "fastapi.routing").returncode == 0, "the next make did not repair it"


@pytest.mark.integration
@pytest.mark.install
def test_an_unsupported_python_is_refused_in_one_line_before_any_download(tmp_path: Path) -> None:
    checkout = copy_tracked(tmp_path / "clone")
    old = find_python(10)
    done = make(checkout, "install-serve", f"PYTHON={old}", timeout=120)
    assert done.returncode != 0
    refusal = [line for line in done.stderr.splitlines() if line.startswith("install:")]
    assert len(refusal) == 1 and "supported: CPython 3.11, 3.12, 3.13" in refusal[0], done.stderr
    assert not (checkout / ".tools").exists() and not (checkout / ".venv").exists()


@pytest.mark.integration
@pytest.mark.install
@pytest.mark.timeout(1500)
def test_the_training_install_on_python_3_12_runs_the_smoke_pipeline(tmp_path: Path) -> None:
    checkout = copy_tracked(tmp_path / "clone")
    done = make(
        checkout, "train", f"PYTHON={find_python(12)}", "PROFILE=smoke",
        DATA_SOURCE=str(SHARED_DATA), PREFECT_HOME=str(tmp_path / "prefect-home"),
        timeout=1400,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    version = subprocess.run([str(checkout / ".venv" / "bin" / "python"), "--version"],
                             capture_output=True, text=True, timeout=60).stdout  # fmt: skip
    assert version.startswith("Python 3.12"), version
    assert "Production" in done.stdout + done.stderr
