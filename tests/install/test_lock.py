"""uv.lock is one universal lock: it agrees with pyproject.toml, covers every supported Python and
platform with a file to install, and the installer that reads it is pinned with its hashes."""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.utils import parse_wheel_filename

from deployments import lock, preflight
from tests.helpers.install import REPO_ROOT, uv_path

PYTHONS = ("3.11", "3.12", "3.13")
# (sys_platform, platform_machine) -> what a wheel's platform tag must say to install there.
PLATFORMS = {
    ("linux", "x86_64"): lambda tag: tag.endswith("_x86_64") and "linux" in tag,
    ("linux", "aarch64"): lambda tag: tag.endswith("_aarch64") and "linux" in tag,
    ("darwin", "arm64"): lambda tag: (
        tag.startswith("macosx_") and tag.endswith(("_arm64", "_universal2"))
    ),
}
# Published as a source archive only; pure Python (its wheel is py3-none-any), so it builds anywhere.
PURE_PYTHON_SDISTS = {"antlr4-python3-runtime"}


def uv(*args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(uv_path()), *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def locked_packages() -> dict[str, dict]:
    with (REPO_ROOT / "uv.lock").open("rb") as handle:
        return {p["name"]: p for p in tomllib.load(handle)["package"]}


def exported() -> list[tuple[str, Marker | None]]:
    """Every locked package of every extra, with the marker saying where it installs."""
    done = uv("export", "--frozen", "--all-extras", "--no-hashes", "--no-emit-project",
              "--no-header", "--no-annotate")  # fmt: skip
    assert done.returncode == 0, done.stderr
    found = []
    for line in done.stdout.splitlines():
        requirement, _, marker = line.partition(" ; ")
        found.append((requirement.split("==")[0], Marker(marker) if marker else None))
    return found


def _minor(interpreter: str, prefix: str) -> int | None:
    """``cp312`` -> 12 (``py3`` -> 0: any Python 3); None for another implementation."""
    digits = interpreter.removeprefix(prefix)
    if not interpreter.startswith(prefix) or not digits.startswith("3"):
        return None
    return int(digits[1:] or 0)


def installs_there(wheel: str, python: str, platform_ok) -> bool:  # type: ignore[no-untyped-def]
    """Whether one of the wheel's tags installs on CPython ``python`` where ``platform_ok``."""
    minor = int(python.split(".")[1])
    for tag in parse_wheel_filename(wheel.rsplit("/", 1)[-1])[3]:
        py, cp = _minor(tag.interpreter, "py"), _minor(tag.interpreter, "cp")
        python_ok = (py is not None and py <= minor) or (
            cp is not None and (cp == minor or (tag.abi == "abi3" and cp <= minor))
        )
        abi_ok = tag.abi in ("none", "abi3", f"cp3{minor}")
        if python_ok and abi_ok and (tag.platform == "any" or platform_ok(tag.platform)):
            return True
    return False


def test_the_committed_lock_agrees_with_pyproject() -> None:
    assert lock.problems(REPO_ROOT) == []
    done = uv("lock", "--check", "--offline")
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("python", PYTHONS)
@pytest.mark.parametrize("where", sorted(PLATFORMS))
def test_every_locked_package_has_a_file_for_each_supported_python_and_platform(
    python: str, where: tuple[str, str]
) -> None:
    packages = locked_packages()
    environment = {"sys_platform": where[0], "platform_machine": where[1],
                   "python_version": python, "python_full_version": f"{python}.0"}  # fmt: skip
    missing = []
    for name, marker in exported():
        if marker is not None and not marker.evaluate(environment):
            continue  # not installed there (e.g. CUDA libraries on macOS)
        wheels = [w["url"] for w in packages[name].get("wheels", [])]
        if not wheels and name in PURE_PYTHON_SDISTS:
            continue
        if not any(installs_there(w, python, PLATFORMS[where]) for w in wheels):
            missing.append(name)
    assert missing == [], f"no file for CPython {python} on {where}: {missing}"


def test_every_file_in_the_lock_has_its_hash() -> None:
    for name, package in locked_packages().items():
        files = [*package.get("wheels", []), *([package["sdist"]] if "sdist" in package else [])]
        assert all(f.get("hash", "").startswith("sha256:") for f in files), name


def copy_project(dest: Path) -> Path:
    for name in ("pyproject.toml", "uv.lock", "setup.py", "README.md", "LICENSE"):
        shutil.copy2(REPO_ROOT / name, dest / name)
    shutil.copytree(REPO_ROOT / "requirements", dest / "requirements")
    return dest


def test_a_dependency_added_without_relocking_is_caught(tmp_path: Path) -> None:
    root = copy_project(tmp_path)
    pyproject = root / "pyproject.toml"
    pyproject.write_text(
        pyproject.read_text().replace('"scipy>=1.11",', '"scipy>=1.11",\n    "rich-argparse>=1.0",')
    )
    done = uv("lock", "--check", "--offline", cwd=root)
    assert done.returncode != 0
    assert "needs to be updated" in done.stderr or "rich-argparse" in done.stderr, done.stderr


def test_a_changed_uv_pin_is_caught(tmp_path: Path) -> None:
    root = copy_project(tmp_path)
    pin = root / "requirements" / "uv.txt"
    pin.write_text(
        pin.read_text().replace(f"uv=={lock.uv_version(lock.read_pyproject(root))}", "uv==0.1.0")
    )
    assert lock.problems(root) == [
        "requirements/uv.txt does not pin uv=="
        + lock.uv_version(lock.read_pyproject(root))
        + "; run `make lock` and commit uv.lock and requirements/uv.txt."
    ]


def test_the_serving_role_has_no_training_stack() -> None:
    done = uv(
        "export", "--frozen", "--no-hashes", "--no-emit-project", "--no-header", "--no-annotate"
    )
    names = {line.split("==")[0] for line in done.stdout.splitlines()}
    assert {"fastapi", "uvicorn", "onnxruntime", "sqlalchemy"} <= names
    assert not {"torch", "lightning", "mlflow", "prefect", "dvc", "pandas"} & names


@pytest.mark.parametrize(
    ("implementation", "version", "system", "machine", "refused"),
    [
        ("cpython", (3, 11, 2), "linux", "x86_64", False),  # Debian 12's own python3
        ("cpython", (3, 13, 0), "darwin", "arm64", False),
        ("cpython", (3, 12, 1), "linux", "aarch64", False),
        ("cpython", (3, 10, 13), "linux", "x86_64", True),
        ("cpython", (3, 14, 0), "linux", "x86_64", True),
        ("pypy", (3, 11, 0), "linux", "x86_64", True),
        ("cpython", (3, 12, 1), "win32", "x86_64", True),
        ("cpython", (3, 12, 1), "darwin", "x86_64", True),
    ],
)
def test_preflight_refuses_what_the_lock_does_not_cover_in_one_line(
    implementation: str, version: tuple[int, ...], system: str, machine: str, refused: bool
) -> None:
    text = (REPO_ROOT / "pyproject.toml").read_text()
    reason = preflight.unsupported(text, implementation, version, system, machine)
    assert (reason is not None) == refused, reason
    if reason:
        assert "\n" not in reason
        assert (
            "supported: CPython 3.11, 3.12, 3.13 on Linux x86-64, Linux aarch64, macOS arm64"
            in reason
        )
