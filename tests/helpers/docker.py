"""Docker for the image tests: the daemon, a base image made here, containers on the host network.

No image registry is reachable from the test machines, so the Dockerfiles' ``FROM`` (the official
``python:3.11-slim`` for users) is replaced by a Debian 12 image made with ``debootstrap`` and
``docker import``, with CPython 3.11 and venv, like the slim image. It is kept under its tag, so
only the first run pays for it (a few minutes). Containers use the host network only.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BASE_TAG = "clothing-classifier-test-base:bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"


def docker(
    *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args[:3])} failed: {done.stderr.strip()[-2000:]}")
    return done


def daemon_problem() -> str | None:
    """Why Docker cannot be used here, in one line; None when the daemon answers."""
    if shutil.which("docker") is None:
        return "docker is not installed: apt-get install -y docker.io"
    if docker("info", "--format", "{{.ServerVersion}}", check=False, timeout=30).returncode != 0:
        return "the Docker daemon does not answer: start it as root (dockerd &> /tmp/dockerd.log &)"
    return None


@contextlib.contextmanager
def running_daemon(log: Path) -> Iterator[None]:
    """The Docker daemon for the tests: the machine's if it answers; else, as root, one started
    here (no bridge network: containers use the host's) and stopped after, also on failure."""
    if daemon_problem() is None or shutil.which("dockerd") is None or os.geteuid() != 0:
        yield
        return
    with log.open("w") as out:
        process = subprocess.Popen(
            ["dockerd", "--bridge=none", "--iptables=false"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while daemon_problem() is not None and process.poll() is None:
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
        yield
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def image_exists(tag: str) -> bool:
    return docker("image", "inspect", tag, check=False).returncode == 0


def test_base_image(tag: str = BASE_TAG) -> str:
    """Debian 12 with python3 + python3-venv, made by debootstrap once and reused by its tag."""
    if image_exists(tag):
        return tag
    if shutil.which("debootstrap") is None:
        raise RuntimeError("debootstrap is not installed: apt-get install -y debootstrap")
    with tempfile.TemporaryDirectory(prefix="debootstrap-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        command = ["debootstrap", "--variant=minbase", "--include=python3,python3-venv",
                   "bookworm", str(rootfs), DEBIAN_MIRROR]  # fmt: skip
        subprocess.run(
            command,
            check=True,
            capture_output=True,
            timeout=1200,
        )
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            shutil.rmtree(rootfs / cache, ignore_errors=True)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(
            ["docker", "import", "--change", 'CMD ["python3"]', "-", tag],
            stdin=tar.stdout,
            capture_output=True,
            text=True,
            timeout=600,
        )
        tar.wait(timeout=60)
    if imported.returncode != 0:
        raise RuntimeError(f"docker import of the test base failed: {imported.stderr[-2000:]}")
    return tag


def inspect(kind: str, name: str) -> dict[str, Any]:
    return json.loads(docker(kind, "inspect", name).stdout)[0]


def remove_container(name: str) -> None:
    docker("rm", "--force", name, check=False)


def remove_image(tag: str) -> None:
    docker("rmi", "--force", tag, check=False, timeout=300)
