"""The project's installer and its one universal lock, checked with nothing but Python.

    python -m deployments.lock check       # the installer pin agrees with pyproject.toml
    python -m deployments.lock uv-version  # the uv version pyproject.toml requires

The lock is ``uv.lock`` (``uv lock``: every package for every supported Python and platform, with
the hashes of all their files); ``uv lock --check`` says whether it agrees with pyproject.toml.
uv itself comes from ``requirements/uv.txt``, installed by the Python's own pip with
``--require-hashes`` (one package, no dependencies: any pip since 8 can do that). Its version is
written once, as ``[tool.uv] required-version`` in pyproject.toml; ``make lock`` writes the file.

Standard library only: it runs before anything installs (after deployments/preflight.py).
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
UV_PIN = Path("requirements") / "uv.txt"
RELOCK = "run `make lock` and commit uv.lock and requirements/uv.txt"


def read_pyproject(root: Path = ROOT) -> dict[str, Any]:
    with (root / "pyproject.toml").open("rb") as handle:
        return tomllib.load(handle)


def uv_version(pyproject: dict[str, Any]) -> str:
    """The exact uv version ``[tool.uv] required-version`` names (``==X.Y.Z``)."""
    required = pyproject.get("tool", {}).get("uv", {}).get("required-version", "")
    match = re.fullmatch(r"==\s*(\d+(?:\.\d+)*)", required.strip())
    if match is None:
        raise ValueError(
            "pyproject.toml: [tool.uv] required-version must pin one version (==X.Y.Z)"
        )
    return match.group(1)


def problems(root: Path = ROOT) -> list[str]:
    """What is wrong between pyproject.toml and the installer pin; empty when they agree."""
    pyproject = read_pyproject(root)
    pin = root / UV_PIN
    if not pin.is_file():
        return [f"{UV_PIN} is missing; {RELOCK}."]
    pinned = re.search(r"(?m)^uv==([^\s;\\]+)", pin.read_text())
    if pinned is None or pinned.group(1) != uv_version(pyproject):
        return [f"{UV_PIN} does not pin uv=={uv_version(pyproject)}; {RELOCK}."]
    if "--hash=sha256:" not in pin.read_text():
        return [f"{UV_PIN} has no hashes; {RELOCK}."]
    if not (root / "uv.lock").is_file():
        return [f"uv.lock is missing; {RELOCK}."]
    return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deployments.lock", description=__doc__)
    parser.add_argument("action", choices=["check", "uv-version"])
    args = parser.parse_args(argv)
    pyproject = read_pyproject()
    if args.action == "uv-version":
        print(uv_version(pyproject))
        return 0
    found = problems()
    for line in found:
        print(f"lock: {line}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
