"""Where the installed PostgreSQL server tools are, found by what is installed, not by a version.

    python -m deployments.postgres   # prints the bin folder (initdb, pg_ctl, createdb, psql); exit 1 if none

``STACK_PG_BIN`` wins; then ``pg_config --bindir`` (Debian's libpq-dev points it at the server's
folder), ``initdb`` on PATH (its real folder: Debian links only a few tools into PATH), and last
Debian's layout, the newest ``/usr/lib/postgresql/<major>/bin``. Standard library only.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

DEBIAN_ROOT = Path("/usr/lib/postgresql")


def _has_initdb(folder: Path) -> bool:
    return (folder / "initdb").is_file()


def _from_pg_config() -> Path | None:
    pg_config = shutil.which("pg_config")
    if pg_config is None:
        return None
    done = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=30)
    folder = Path(done.stdout.strip())
    return folder if done.returncode == 0 and _has_initdb(folder) else None


def _newest_debian(root: Path) -> Path | None:
    found = [p.parent for p in root.glob("*/bin/initdb") if p.parent.parent.name.isdigit()]
    return max(found, key=lambda p: int(p.parent.name)) if found else None


def pg_bin(debian_root: Path = DEBIAN_ROOT) -> Path | None:
    """The folder holding ``initdb`` and its siblings, or None when PostgreSQL is not installed."""
    if os.environ.get("STACK_PG_BIN"):
        return Path(os.environ["STACK_PG_BIN"])
    on_path = shutil.which("initdb")
    return (
        _from_pg_config()
        or (Path(on_path).resolve().parent if on_path else None)
        or _newest_debian(debian_root)
    )


def main() -> int:
    folder = pg_bin()
    if folder is None or not _has_initdb(folder):
        print("PostgreSQL's server tools (initdb) are not installed", file=sys.stderr)
        return 1
    print(folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
