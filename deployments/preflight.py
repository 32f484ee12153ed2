"""Before anything downloads: is this Python, on this platform, one the lock supports?

    python3 deployments/preflight.py   # exit 0, or one line on stderr saying what is supported

The answer is read from pyproject.toml (``requires-python`` and ``[tool.uv] environments``, the
same settings ``uv lock`` resolves for), so the refusal and the lock cannot disagree. It runs on
any Python 3 (an unsupported one is what it is for), so it reads the file with regular
expressions, not ``tomllib`` (3.11+), and uses nothing newer than Python 3.6.
"""

# typing's Tuple/Optional, not tuple[...]/X | None: those need Python 3.9/3.10 at run time.
# ruff: noqa: UP006, UP035, UP045
import platform
import re
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
PLATFORM_NAMES = {
    ("linux", "x86_64"): "Linux x86-64",
    ("linux", "aarch64"): "Linux aarch64",
    ("darwin", "arm64"): "macOS arm64",
}


def _first_group(pattern: str, text: str) -> str:
    match = re.search(pattern, text)
    if match is None:
        raise ValueError("pyproject.toml: cannot find " + pattern)
    return match.group(1)


def python_bounds(text: str) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """``requires-python = ">=3.11,<3.14"`` as ((3, 11), (3, 14))."""
    spec = _first_group(r'(?m)^requires-python\s*=\s*"([^"]+)"', text)
    low = _first_group(r">=\s*([\d.]+)", spec)
    high = _first_group(r"<\s*([\d.]+)", spec)
    return tuple(map(int, low.split("."))), tuple(map(int, high.split(".")))


def platforms(text: str) -> List[Tuple[str, str]]:
    """(sys_platform, platform_machine) of each marker in ``[tool.uv] environments``."""
    block = _first_group(r"(?ms)^environments\s*=\s*\[(.*?)\]", text)
    return re.findall(r"sys_platform == '([^']+)' and platform_machine == '([^']+)'", block)


def unsupported(
    text: str, implementation: str, version: Sequence[int], system: str, machine: str
) -> Optional[str]:
    """One line saying what is supported when this interpreter or platform is not; else None."""
    low, high = python_bounds(text)
    allowed = platforms(text)
    minors = ", ".join(f"{low[0]}.{m}" for m in range(low[1], high[1]))
    names = ", ".join(PLATFORM_NAMES.get(p, "/".join(p)) for p in allowed)
    supported = f"supported: CPython {minors} on {names}"
    here = ".".join(str(part) for part in version[:3])
    if implementation != "cpython" or not (low <= tuple(version[: len(low)]) < high):
        name = "Python" if implementation == "cpython" else implementation
        return f"{name} {here} is not supported ({supported}); run make with PYTHON=python3.X"
    if (system, machine) not in allowed:
        return f"{system} {machine} is not supported ({supported})"
    return None


def main() -> int:
    machine = {"amd64": "x86_64"}.get(platform.machine().lower(), platform.machine())
    system = "linux" if sys.platform.startswith("linux") else sys.platform
    reason = unsupported(
        PYPROJECT.read_text(), sys.implementation.name, tuple(sys.version_info[:3]), system, machine
    )
    if reason:
        sys.stderr.write(f"install: {reason}\n")
    return 1 if reason else 0


if __name__ == "__main__":
    sys.exit(main())
