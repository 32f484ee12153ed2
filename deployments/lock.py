"""The dependency locks in ``requirements/``: every package of one role, pinned with its hashes.

    python -m deployments.lock compile   # make lock: (re)write the locks from pyproject.toml
    python -m deployments.lock check     # make lock-check: fail when pyproject.toml and a lock disagree

One lock per role (pyproject.toml's base dependencies and extras), each installed with
``pip install --require-hashes -r requirements/<role>.txt``:

- ``serve.txt``: the base install, what ``uvicorn src.api:app`` needs;
- ``train.txt``: base + ``train`` (``make train``);
- ``dev.txt``: base + ``train`` + ``services`` + ``test`` (``make test``, CI, ``make stack``).

``dev.txt`` is resolved first (pip-tools' ``pip-compile``, keeping the pins it already holds unless
``--upgrade``); ``train.txt`` and ``serve.txt`` are resolved under its pins, so a package has one
version in every lock. The locks are for CPython 3.11 on Linux x86-64, the machines here. Each
lock's first line is a fingerprint of the dependency tables it was made from: ``check`` needs no
network and no third-party package, so the Makefile runs it before installing anything.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LOCK_DIR = ROOT / "requirements"
# role -> extras on top of the base dependencies; dev first, the others are resolved under it.
ROLES: dict[str, tuple[str, ...]] = {
    "dev": ("train", "services", "test"),
    "train": ("train",),
    "serve": (),
}
FINGERPRINT_PREFIX = "# pyproject-fingerprint: "
RELOCK = "run `make lock` and commit requirements/"


def fingerprint(pyproject: dict[str, Any]) -> str:
    """A hash of what the locks are made from: Python bound, base dependencies, extras."""
    project = pyproject["project"]
    tables = {
        "requires-python": project.get("requires-python"),
        "dependencies": project.get("dependencies", []),
        "optional-dependencies": project.get("optional-dependencies", {}),
    }
    return "sha256:" + hashlib.sha256(json.dumps(tables, sort_keys=True).encode()).hexdigest()


def read_pyproject(root: Path = ROOT) -> dict[str, Any]:
    with (root / "pyproject.toml").open("rb") as handle:
        return tomllib.load(handle)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if match is None:
        raise ValueError(f"pyproject.toml: cannot read the requirement {requirement!r}")
    return canonical(match.group(1))


def direct_requirements(pyproject: dict[str, Any], role: str) -> set[str]:
    """The names a role asks for directly: base dependencies plus its extras."""
    project = pyproject["project"]
    wanted = list(project.get("dependencies", []))
    for extra in ROLES[role]:
        wanted += project.get("optional-dependencies", {}).get(extra, [])
    return {requirement_name(r) for r in wanted}


def pinned(lock_text: str) -> dict[str, str]:
    """``name -> version`` of every ``name==version`` line of a pip-compile lock."""
    pins = {}
    for line in lock_text.splitlines():
        match = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", line)
        if match:
            pins[canonical(match.group(1))] = match.group(2)
    return pins


def problems(root: Path = ROOT) -> list[str]:
    """What is wrong between ``root``'s pyproject.toml and its locks; empty when they agree."""
    pyproject = read_pyproject(root)
    expected = fingerprint(pyproject)
    found: list[str] = []
    versions: dict[str, tuple[str, str]] = {}
    for role in ROLES:
        path = root / "requirements" / f"{role}.txt"
        if not path.is_file():
            found.append(f"{path.relative_to(root)} is missing; {RELOCK}.")
            continue
        text = path.read_text()
        first = text.splitlines()[0] if text else ""
        if first != FINGERPRINT_PREFIX + expected:
            found.append(
                f"{path.relative_to(root)} was made from other dependencies than pyproject.toml "
                f"lists now; {RELOCK}."
            )
        pins = pinned(text)
        for name in sorted(direct_requirements(pyproject, role) - pins.keys()):
            found.append(f"{path.relative_to(root)} pins no {name}; {RELOCK}.")
        for name, version in pins.items():
            other = versions.setdefault(name, (version, role))
            if other[0] != version:
                found.append(
                    f"{name} is {other[0]} in {other[1]}.txt but {version} in {role}.txt; {RELOCK}."
                )
    return found


def compile_locks(upgrade: bool = False) -> None:
    """Resolve every role with pip-compile and stamp each lock with the fingerprint."""
    LOCK_DIR.mkdir(exist_ok=True)
    stamp = FINGERPRINT_PREFIX + fingerprint(read_pyproject()) + "\n"
    for role, extras in ROLES.items():
        out = LOCK_DIR / f"{role}.txt"
        command = [
            sys.executable, "-m", "piptools", "compile", "--quiet", "--generate-hashes",
            "--allow-unsafe", "--strip-extras", "--no-emit-index-url", "--no-emit-find-links",
            "--output-file", str(out.relative_to(ROOT)),
        ]  # fmt: skip
        command += [f"--extra={extra}" for extra in extras]
        if role != "dev":
            command += ["--constraint", "requirements/dev.txt"]
        elif upgrade:
            command.append("--upgrade")
        subprocess.run([*command, "pyproject.toml"], cwd=ROOT, check=True)
        out.write_text(stamp + out.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deployments.lock", description=__doc__)
    parser.add_argument("action", choices=["compile", "check"])
    parser.add_argument("--upgrade", action="store_true", help="compile: newest allowed versions")
    args = parser.parse_args(argv)
    if args.action == "compile":
        compile_locks(upgrade=args.upgrade)
    found = problems()
    for line in found:
        print(f"lock: {line}", file=sys.stderr)
    if not found:
        print("lock: requirements/ agrees with pyproject.toml.")
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
