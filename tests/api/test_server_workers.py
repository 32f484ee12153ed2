"""How a worker started by the server's own flags finds its siblings (src/serving/server_workers.py):
the count read off the server's own objects, the shared folder's safety, stale folders cleared.
The servers themselves run in tests/monitoring/test_worker_processes.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from uvicorn.config import Config

from src.config import ConfigError
from src.serving.server_workers import (
    FOLDER_PREFIX,
    MULTIPROC_DIR_ENV,
    WORKERS_ENV,
    join_server_workers,
    private_folder,
    process_start_ticks,
    remove_stale_folders,
    server_workers,
    shared_folder_name,
)


def imported_by(config: Config) -> int | None:
    """``server_workers()`` as seen from code the server calls (the app's import)."""

    def app_import() -> int | None:
        found = server_workers()
        return found.count if found is not None else None

    return app_import()


def test_the_count_is_read_off_uvicorns_config_on_the_stack() -> None:
    assert imported_by(Config(app="src.api:app", workers=3)) == 3
    assert imported_by(Config(app="src.api:app")) == 1
    assert server_workers() is None  # no server importing: a test, a script


def test_a_lone_process_is_left_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    environ: dict[str, str] = {}
    config = Config(app="src.api:app", workers=1)  # noqa: F841 (found on the stack)
    found = join_server_workers(environ)
    assert found is not None and found.count == 1
    assert environ == {}


def test_several_workers_get_their_count_and_one_private_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    environ = {WORKERS_ENV: "7"}  # the server's own count wins
    config = Config(app="src.api:app", workers=2)  # noqa: F841 (found on the stack)
    join_server_workers(environ)
    folder = Path(environ[MULTIPROC_DIR_ENV])
    assert environ[WORKERS_ENV] == "2"
    assert folder.parent == tmp_path and folder.name == shared_folder_name(os.getppid())
    assert folder.stat().st_mode & 0o777 == 0o700
    again: dict[str, str] = {}
    join_server_workers(again)  # a sibling (same parent) finds the same folder
    assert again[MULTIPROC_DIR_ENV] == str(folder)


def test_a_folder_open_to_others_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / (FOLDER_PREFIX + "x")
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    with pytest.raises(ConfigError, match="not a private folder"):
        private_folder(folder)
    (tmp_path / "link").symlink_to(folder)
    with pytest.raises(ConfigError, match="not a private folder"):
        private_folder(tmp_path / "link")


@pytest.mark.integration  # starts processes (stand-ins for servers that ended)
def test_folders_of_ended_servers_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    uid = os.getuid()
    live = tmp_path / f"{FOLDER_PREFIX}{uid}-{os.getpid()}-{process_start_ticks(os.getpid())}"
    gone = tmp_path / f"{FOLDER_PREFIX}{uid}-{ended.pid}-12345"
    reused = tmp_path / f"{FOLDER_PREFIX}{uid}-{os.getpid()}-1"  # same pid, earlier process
    other_user = tmp_path / f"{FOLDER_PREFIX}{uid + 1}-{ended.pid}-12345"
    for folder in (live, gone, reused, other_user):
        folder.mkdir()
    remove_stale_folders(tmp_path)
    assert live.is_dir() and other_user.is_dir()
    assert not gone.exists() and not reused.exists()
