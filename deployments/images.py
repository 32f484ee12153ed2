"""The container images: the serving image and the training/worker image, built from uv.lock.

    python -m deployments.images build serve     # docker build -> clothing-classifier-serve:<version>
    python -m deployments.images build train     # -> clothing-classifier-train:<version>
    python -m deployments.images build serve --base debian-python:3.11 --tag my/serve:1
    python -m deployments.images context serve DIR    # only write the build context (any builder)

The Dockerfiles are ``deployments/docker/<role>.Dockerfile``. A build context is written from
scratch, never from the checkout as it is: the role's pins exported from uv.lock with their hashes
(``requirements.txt``), those wheels downloaded here (``wheels/``: the build itself needs no
package index, which a builder behind a firewall does not reach) and the project's own wheel
(``project/``). Nothing else of the checkout goes in (no ``.env``, ``.stack/``, ``mlflow.db``,
``outputs/``), and a context whose configs/ hold a secret is refused: the settings travel inside
the project's wheel, and a secret there would be in an image layer. Credentials come from the
environment when a container runs.

The wheels are for CPython ``PYTHON`` on Linux with glibc ``GLIBC`` or older (Debian 12, which the
default base ``python:3.11-slim`` is), for this machine's architecture.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from packaging.markers import Marker

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = Path(__file__).resolve().parent / "docker"
PYTHON = "3.11"  # the base image's CPython (python:3.11-slim; Debian 12's python3)
GLIBC = (2, 36)  # Debian 12 (bookworm), the base image's distribution
DEFAULT_BASE = "python:3.11-slim"
# The images' working folder (WORKDIR, the app user's home): the installed package's working files.
TRAIN_WORKDIR = "/var/lib/clothing-classifier"
# What a wheel build reads from the checkout (copied, so build/ and *.egg-info stay out of it).
BUILD_FILES = ("pyproject.toml", "setup.py", "README.md", "LICENSE")
BUILD_DIRS = ("src", "flows", "deployments", "configs")
# A URI with a password in it: scheme://user:password@host
_URI_PASSWORD = re.compile(r"://[^/@\s:]*:[^/@\s]+@")


class ImageError(RuntimeError):
    """The build context or image could not be made; the message says what to do."""


@dataclass(frozen=True)
class Role:
    name: str
    extras: tuple[str, ...]  # the optional dependency groups installed besides the base
    repository: str  # the image's default name (tagged with the package version)


ROLES = {
    "serve": Role("serve", (), "clothing-classifier-serve"),
    "train": Role("train", ("train", "services"), "clothing-classifier-train"),
}


def role(name: str) -> Role:
    if name not in ROLES:
        raise ImageError(f"no image role {name!r}; choose one of {sorted(ROLES)}")
    return ROLES[name]


def uv_binary(root: Path = ROOT) -> Path:
    """The project's pinned uv (the Makefile brings it into .tools/)."""
    uv = root / ".tools" / "bin" / "uv"
    if not uv.is_file():
        raise ImageError(f"{uv} is missing; run `make install` first (it brings the pinned uv).")
    return uv


def version(root: Path = ROOT) -> str:
    match = re.search(r'(?m)^version = "([^"]+)"', (root / "pyproject.toml").read_text())
    if match is None:
        raise ImageError(f"no version in {root / 'pyproject.toml'}")
    return match.group(1)


def default_tag(image_role: Role, root: Path = ROOT) -> str:
    return f"{image_role.repository}:{version(root)}"


def secrets_in_configs(configs: Path) -> list[str]:
    """Settings under ``configs`` that hold a secret: an ``api_key`` that is set, or a URI with a
    password. They would travel in the project's wheel into an image layer."""
    found = []
    for path in sorted(configs.rglob("*.yaml")):
        for key, value in _leaves(yaml.safe_load(path.read_text()) or {}):
            if (key == "api_key" and value is not None) or (
                isinstance(value, str) and _URI_PASSWORD.search(value)
            ):
                found.append(f"{path.relative_to(configs.parent)}: {key}")
    return found


def _leaves(tree: Any, key: str = "") -> list[tuple[str, Any]]:
    if isinstance(tree, dict):
        return [leaf for k, v in tree.items() for leaf in _leaves(v, str(k))]
    if isinstance(tree, list):
        return [leaf for item in tree for leaf in _leaves(item, key)]
    return [(key, tree)]


def export_requirements(image_role: Role, root: Path = ROOT) -> str:
    """The role's pins from uv.lock, each with the hashes of its files (the project excluded)."""
    extras = [arg for extra in image_role.extras for arg in ("--extra", extra)]
    command = [str(uv_binary(root)), "export", "--frozen", "--no-dev", "--no-emit-project",
               "--no-header", *extras]  # fmt: skip
    done = subprocess.run(
        command,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        raise ImageError(f"uv export failed: {done.stderr.strip().splitlines()[-1:]}")
    return done.stdout


def platform_tags(machine: str | None = None) -> list[str]:
    """pip's ``--platform`` values a wheel may carry to install on the base image: manylinux for
    glibc up to ``GLIBC`` (pip does not expand them itself), on this machine's architecture."""
    arch = machine or platform.machine()
    tags = [f"manylinux_{GLIBC[0]}_{minor}_{arch}" for minor in range(GLIBC[1], 4, -1)]
    legacy = {"manylinux2014": 17, "manylinux2010": 12, "manylinux1": 5}
    return tags + [f"{name}_{arch}" for name, minor in legacy.items() if minor <= GLIBC[1]]


def for_the_image(requirements: str, machine: str | None = None) -> str:
    """The pins of ``requirements`` that install on the image (Linux, this architecture, any
    CPython ``PYTHON``.x), without their markers: pip would judge those by this machine's Python
    (``python_full_version < '3.11.3'`` is false on 3.11.7, true on Debian 12's 3.11.2)."""
    kept = []
    for block in re.sub(r"\\\n\s*", " ", requirements).splitlines():
        pin, _, rest = block.strip().partition(" ; ")
        if not pin or pin.startswith("#"):
            continue
        marker, _, hashes = rest.partition(" --hash")
        if marker and not any(
            Marker(marker).evaluate(image_environment(full, machine)) for full in ("0", "99")
        ):
            continue
        kept.append(" ".join(f"{pin} --hash{hashes}".split()) if marker else " ".join(pin.split()))
    return "\n".join(kept) + "\n"


def image_environment(patch: str, machine: str | None = None) -> dict[str, str]:
    return {
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": machine or platform.machine(),
        "os_name": "posix",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "python_version": PYTHON,
        "python_full_version": f"{PYTHON}.{patch}",
    }


def download_wheels(requirements: Path, dest: Path) -> None:
    """Every pinned file, hash-checked, for the image's Python and platform (not this one's).
    A package published only as a source archive comes as that archive (built in the image)."""
    pins = dest.parent / "download.txt"
    pins.write_text(for_the_image(requirements.read_text()))
    target = ["--python-version", PYTHON, "--implementation", "cp", "--abi", f"cp{PYTHON.replace('.', '')}"]  # fmt: skip
    platforms = [arg for tag in platform_tags() for arg in ("--platform", tag)]
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--require-hashes",
               *target, *platforms, "--dest", str(dest), "-r", str(pins)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise ImageError(f"downloading the locked wheels failed: {last}")
    pins.unlink()


def sdists(wheels: Path) -> list[Path]:
    return sorted(p for p in wheels.iterdir() if p.name.endswith((".tar.gz", ".zip")))


def download_build_tools(requirements: str, dest: Path) -> None:
    """setuptools and wheel at their locked versions, for the source archives built in the image
    (pip's build isolation takes them from ``wheels/``: the build reaches no index)."""
    locked = {line.split("==")[0]: line.split(" ")[0] for line in requirements.splitlines()
              if line.startswith(("setuptools==", "wheel=="))}  # fmt: skip
    # Older pips (Debian 12's 23.0) ask for wheel besides setuptools in a setup.py build.
    tools = [locked.get("setuptools", "setuptools>=77"), locked.get("wheel", "wheel")]
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary",
               ":all:", "--dest", str(dest), *tools]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise ImageError(
            f"downloading setuptools for the source builds failed: {done.stderr[-300:]}"
        )


def build_project_wheel(dest: Path, root: Path = ROOT) -> Path:
    """The project's wheel, built from a copy of its code (not the checkout's other files)."""
    with tempfile.TemporaryDirectory(prefix="image-source-") as tmp:
        source = Path(tmp) / "source"
        source.mkdir()
        for name in BUILD_FILES:
            shutil.copy2(root / name, source / name)
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        for name in BUILD_DIRS:
            shutil.copytree(root / name, source / name, ignore=ignore)
        command = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                   "--no-build-isolation", "--wheel-dir", str(dest), str(source)]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise ImageError(f"building the project's wheel failed: {done.stderr[-300:]}")
    (wheel,) = dest.glob("clothing_classifier-*.whl")
    return wheel


def write_context(role_name: str, dest: Path, root: Path = ROOT) -> Path:
    """Write the build context of ``role_name`` into the empty or missing folder ``dest``."""
    image_role = role(role_name)
    problems = secrets_in_configs(root / "configs")
    if problems:
        raise ImageError(
            f"configs/ holds a secret that would be baked into the image ({'; '.join(problems)}); "
            "set it in the container's environment instead (SERVE_API_KEY, MLFLOW_TRACKING_URI, ...)."
        )
    if dest.exists() and any(dest.iterdir()):
        raise ImageError(f"{dest} is not empty; give a new folder for the build context")
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(DOCKERFILES / f"{image_role.name}.Dockerfile", dest / "Dockerfile")
    requirements = export_requirements(image_role, root)
    (dest / "requirements.txt").write_text(requirements)
    (dest / "wheels").mkdir()
    download_wheels(dest / "requirements.txt", dest / "wheels")
    if sdists(dest / "wheels"):
        download_build_tools(requirements, dest / "wheels")
    (dest / "project").mkdir()
    build_project_wheel(dest / "project", root)
    return dest


def docker_build(context: Path, tag: str, base: str | None = None) -> None:
    """``docker build`` of ``context`` on the host network (the base image's FROM ``base``)."""
    if shutil.which("docker") is None:
        raise ImageError(
            "docker is not installed; install Docker (Debian: apt-get install docker.io)."
        )
    command = ["docker", "build", "--network", "host", "--tag", tag]
    if base:
        command += ["--build-arg", f"BASE={base}"]
    done = subprocess.run([*command, str(context)], env={**os.environ, "DOCKER_BUILDKIT": "0"})
    if done.returncode != 0:
        raise ImageError(
            f"docker build of {tag} failed (exit {done.returncode}); see its output above."
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deployments.images", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="write the context and docker build it")
    build.add_argument("role", choices=sorted(ROLES))
    build.add_argument("--tag", help="image name (default clothing-classifier-<role>:<version>)")
    build.add_argument("--base", help=f"the FROM image (default {DEFAULT_BASE}); CPython {PYTHON}")
    context = commands.add_parser("context", help="only write the build context")
    context.add_argument("role", choices=sorted(ROLES))
    context.add_argument("dest", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "context":
            print(f"wrote {write_context(args.role, args.dest)}")
            return 0
        tag = args.tag or default_tag(role(args.role))
        with tempfile.TemporaryDirectory(prefix=f"image-{args.role}-") as tmp:
            docker_build(write_context(args.role, Path(tmp) / "context"), tag, args.base)
        print(f"built {tag}")
        return 0
    except ImageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
