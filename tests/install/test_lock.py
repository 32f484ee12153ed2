"""The locks in requirements/ agree with pyproject.toml, pin with hashes, and keep each role apart."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from deployments import lock
from tests.helpers.install import REPO_ROOT


def test_the_committed_locks_agree_with_pyproject() -> None:
    assert lock.problems(REPO_ROOT) == []


def copy_project(dest: Path) -> Path:
    shutil.copy2(REPO_ROOT / "pyproject.toml", dest / "pyproject.toml")
    shutil.copytree(REPO_ROOT / "requirements", dest / "requirements")
    return dest


def test_a_dependency_added_without_relocking_is_caught(tmp_path: Path) -> None:
    root = copy_project(tmp_path)
    pyproject = root / "pyproject.toml"
    text = pyproject.read_text()
    pyproject.write_text(
        text.replace('"scipy>=1.11",', '"scipy>=1.11",\n    "rich-argparse>=1.0",')
    )
    found = lock.problems(root)
    assert any("train.txt pins no rich-argparse" in line for line in found), found
    assert any("dev.txt was made from other dependencies" in line for line in found), found
    assert all(line.endswith("run `make lock` and commit requirements/.") for line in found)


def test_a_changed_bound_is_caught(tmp_path: Path) -> None:
    root = copy_project(tmp_path)
    pyproject = root / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"numpy>=1.26"', '"numpy>=1.27"'))
    assert len(lock.problems(root)) == len(lock.ROLES)  # every lock's fingerprint


def test_a_hand_edited_pin_is_caught(tmp_path: Path) -> None:
    serve = copy_project(tmp_path) / "requirements" / "serve.txt"
    serve.write_text(re.sub(r"(?m)^numpy==\S+", "numpy==1.0.0", serve.read_text()))
    found = lock.problems(tmp_path)
    assert any(line.startswith("numpy is ") and "1.0.0 in serve.txt" in line for line in found)


@pytest.mark.parametrize("role", sorted(lock.ROLES))
def test_every_pin_has_hashes_and_no_machine_paths(role: str) -> None:
    text = (REPO_ROOT / "requirements" / f"{role}.txt").read_text()
    entries = re.split(r"(?m)^(?=[A-Za-z0-9])", text)[1:]
    assert len(entries) == len(lock.pinned(text)) > 0
    for entry in entries:
        assert "--hash=sha256:" in entry, entry
    assert "/opt/" not in text and "file:" not in text
    assert "--index-url" not in text and "--find-links" not in text


def test_the_serving_lock_has_no_training_stack() -> None:
    pins = lock.pinned((REPO_ROOT / "requirements" / "serve.txt").read_text())
    assert {"fastapi", "uvicorn", "onnxruntime", "sqlalchemy"} <= pins.keys()
    assert not {"torch", "lightning", "mlflow", "prefect", "dvc", "pandas"} & pins.keys()
    dev = lock.pinned((REPO_ROOT / "requirements" / "dev.txt").read_text())
    assert {"torch", "mlflow", "prefect", "pytest", "boto3"} <= dev.keys()


def test_make_installs_from_the_locks_with_hashes() -> None:
    makefile = (REPO_ROOT / "Makefile").read_text()
    recipe = makefile.split("$(VENV)/.installed-%:")[1].split("\n\n")[0]
    assert "--require-hashes -r $<" in recipe and "lock check" in makefile
    for target, role in (("train", "train"), ("test", "dev"), ("serve", "serve")):
        line = re.search(rf"(?m)^{target}:(.*)##", makefile)
        assert line is not None
        wanted = {"train": "install-train", "dev": "install", "serve": "install-serve"}[role]
        assert wanted in line.group(1).split(), (target, line.group(1))
    assert "lock-check" in re.search(r"(?m)^test:(.*)##", makefile).group(1)  # type: ignore[union-attr]
