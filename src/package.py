"""Where the code, the files it ships and the working files are: a checkout or an installed package.

In a checkout (``pyproject.toml`` and ``configs/`` beside ``src/``), the settings are read from
``configs/`` and the working files (``data/``, ``outputs/``, ``mlflow.db``) live in the checkout.
An installed package (``pip install clothing-classifier``, not ``-e``) carries a copy of
``configs/`` as ``src/_configs`` (the build maps it in; ``configs/`` stays the one source) and
``src/static``; its working files live in the folder the process starts in. ``CONFIG_DIR`` and
``PATHS_ROOT`` point either elsewhere.
"""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

DISTRIBUTION = "clothing-classifier"
PACKAGE_DIR = Path(__file__).resolve().parent
# The folder holding src/ and flows/: the checkout, or site-packages for an installed package.
CODE_ROOT = PACKAGE_DIR.parent
IS_CHECKOUT = (CODE_ROOT / "pyproject.toml").is_file() and (CODE_ROOT / "configs").is_dir()
# A relative ``paths.root`` is taken from here.
PROJECT_ROOT = CODE_ROOT if IS_CHECKOUT else Path.cwd().resolve()
DEFAULT_CONFIG_DIR = CODE_ROOT / "configs" if IS_CHECKOUT else PACKAGE_DIR / "_configs"
STATIC_DIR = PACKAGE_DIR / "static"


def package_version() -> str:
    """The version in ``pyproject.toml`` (checkout) or in the installed package's metadata."""
    if IS_CHECKOUT:
        # An editable install's metadata is as old as its last install; pyproject.toml is not.
        with (CODE_ROOT / "pyproject.toml").open("rb") as handle:
            return str(tomllib.load(handle)["project"]["version"])
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "0+unknown"


__version__ = package_version()
