"""Which packages the wheel holds; everything else is in pyproject.toml.

``configs/`` stays the one source of the settings; the build maps it into the package as
``src._configs`` so an installed package carries its defaults (see src/package.py).
"""

from setuptools import find_namespace_packages, setup

CODE = ["src", "src.*", "flows", "flows.*", "deployments", "deployments.*"]

setup(
    packages=[
        *find_namespace_packages(include=CODE, exclude=["*.__pycache__"]),
        "src._configs",
        "src._configs.profiles",
    ],
    package_dir={"src._configs": "configs"},
)
