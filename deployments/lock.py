"""The dependency locks in ``requirements/``: every package of one role, pinned with its hashes.

    python -m deployments.lock compile   # make lock: (re)write the locks from pyproject.toml
    python -m deployments.lock check     # make lock-check: fail when pyproject.toml and a lock disagree

One lock per role (pyproject.toml's base dependencies and extras), each installed with
``pip install --require-hashes -r requirements/<role>.txt``:

- ``serve.txt``: the base install, what ``uvicorn src.api:app`` needs;
- ``train.txt``: base + ``train`` (``make train``);
- ``dev.txt``: base + ``train`` + ``services`` + ``test`` + ``docs`` (``make test``, CI,
  ``make stack``).

pip itself resolves (``pip install --dry-run --report``, the resolver that installs), and each pin
carries the sha256 of the file pip picked (the index's hash, or the local file's). ``dev.txt`` is
resolved first, keeping the pins it already holds unless ``--upgrade``; ``train.txt`` and
``serve.txt`` are resolved under its pins, so a package has one version in every lock. The locks
are for CPython 3.11 on Linux x86-64, the machines here. Each
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
import tempfile
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

ROOT = Path(__file__).resolve().parents[1]
LOCK_DIR = ROOT / "requirements"
# role -> extras on top of the base dependencies; dev first, the others are resolved under it.
ROLES: dict[str, tuple[str, ...]] = {
    "dev": ("train", "services", "test", "docs"),
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
    return {requirement_name(r) for r in requirement_lines(pyproject, role)}


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


def requirement_lines(pyproject: dict[str, Any], role: str) -> list[str]:
    project = pyproject["project"]
    lines = list(project.get("dependencies", []))
    for extra in ROLES[role]:
        lines += project.get("optional-dependencies", {}).get(extra, [])
    return lines


def resolve(requirements: list[str], constraints: dict[str, str] | None, work: Path) -> list[dict]:
    """pip's own resolution of ``requirements`` (nothing installed): the report's install list."""
    (work / "requirements.txt").write_text("\n".join(requirements) + "\n")
    pins = "".join(f"{name}=={version}\n" for name, version in sorted((constraints or {}).items()))
    (work / "constraints.txt").write_text(pins)
    report = work / "report.json"
    command = [
        sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed",
        "--report", str(report), "-r", str(work / "requirements.txt"),
        "-c", str(work / "constraints.txt"),
    ]  # fmt: skip
    subprocess.run(command, check=True)
    installs: list[dict] = json.loads(report.read_text())["install"]
    return installs


def sha256_of(item: dict) -> str:
    """The hash of the file pip chose: from the index, or computed for a local file."""
    info = item["download_info"]
    hashes = info.get("archive_info", {}).get("hashes", {})
    if "sha256" in hashes:
        return str(hashes["sha256"])
    url = urlparse(info["url"])
    if url.scheme != "file":
        raise RuntimeError(f"{info['url']}: no sha256 from the index; cannot lock it with a hash.")
    return hashlib.sha256(Path(unquote(url.path)).read_bytes()).hexdigest()


def lock_text(stamp: str, installs: list[dict]) -> str:
    lines = [
        stamp,
        "# Made by `make lock` from pyproject.toml (pip's resolver, CPython 3.11, Linux",
        "# x86-64); install with pip install --require-hashes -r <this file>. Do not edit.",
        "",
    ]
    for item in sorted(installs, key=lambda i: canonical(i["metadata"]["name"])):
        meta = item["metadata"]
        lines.append(f"{canonical(meta['name'])}=={meta['version']} \\")
        lines.append(f"    --hash=sha256:{sha256_of(item)}")
    return "\n".join(lines) + "\n"


def compile_locks(upgrade: bool = False) -> None:
    """Resolve every role and write its lock. Without ``upgrade``, the pins already in dev.txt are
    kept where pyproject.toml still allows them; train and serve always take dev's pins."""
    LOCK_DIR.mkdir(exist_ok=True)
    pyproject = read_pyproject()
    stamp = FINGERPRINT_PREFIX + fingerprint(pyproject)
    dev_lock = LOCK_DIR / "dev.txt"
    previous = {} if upgrade or not dev_lock.is_file() else pinned(dev_lock.read_text())
    with tempfile.TemporaryDirectory(prefix="lock-") as tmp:
        work = Path(tmp)
        try:
            installs = resolve(requirement_lines(pyproject, "dev"), previous, work)
        except subprocess.CalledProcessError:
            print("lock: the previous pins no longer fit pyproject.toml; resolving afresh.")
            installs = resolve(requirement_lines(pyproject, "dev"), {}, work)
        dev_lock.write_text(lock_text(stamp, installs))
        dev_pins = pinned(dev_lock.read_text())
        for role in ROLES:
            if role != "dev":
                installs = resolve(requirement_lines(pyproject, role), dev_pins, work)
                (LOCK_DIR / f"{role}.txt").write_text(lock_text(stamp, installs))


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
