"""Worker processes started by the server's own flags: ``uvicorn src.api:app --workers N`` and
``gunicorn -k uvicorn.workers.UvicornWorker -w N src.api:app`` get what ``clothing-classifier
serve`` sets up (:mod:`src.serving.cli`): each worker its share of the cores and of the body
budget (``SERVE_WORKERS``), and one metrics folder for all of them (prometheus_client's
multiprocess mode), so any worker's ``/metrics`` reports the whole service.

:func:`join_server_workers` runs in each worker as it imports the app (:mod:`src.api`), before
any metric exists. The number of workers is read off the server that is importing the app (its
own configuration object, on the call stack), so every way of giving it counts: the flag,
``WEB_CONCURRENCY``, ``GUNICORN_CMD_ARGS`` or a gunicorn config file. The workers' shared folder
is named after their parent process (the uvicorn supervisor or the gunicorn arbiter): every
worker of one server finds the same one, a restarted worker included. No module here imports
prometheus_client (its value class is chosen from the environment when it is imported).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import sys
import tempfile
from collections.abc import MutableMapping
from pathlib import Path
from types import FrameType

from src.config import ConfigError

WORKERS_ENV = "SERVE_WORKERS"
MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
FOLDER_PREFIX = "clothing-classifier-workers-"
_FOLDER_NAME = re.compile(re.escape(FOLDER_PREFIX) + r"(\d+)-(\d+)-(\d+)$")


class ServerWorkers:
    """What the server importing the app says about its worker processes."""

    def __init__(self, count: int, *, preloaded: bool = False) -> None:
        self.count = count
        self.preloaded = preloaded  # gunicorn --preload: imported once, in the arbiter


def _is_instance_of(value: object, module: str, name: str) -> bool:
    """``isinstance`` by class name, so the servers' modules are never imported from here."""
    return any(c.__module__ == module and c.__name__ == name for c in type(value).__mro__)


def _workers_of(value: object) -> ServerWorkers | None:
    if _is_instance_of(value, "uvicorn.config", "Config"):
        return ServerWorkers(int(getattr(value, "workers", 1) or 1))
    if _is_instance_of(value, "gunicorn.workers.base", "Worker"):
        return ServerWorkers(int(value.cfg.workers))  # type: ignore[attr-defined]
    if _is_instance_of(value, "gunicorn.arbiter", "Arbiter"):
        return ServerWorkers(int(value.cfg.workers), preloaded=True)  # type: ignore[attr-defined]
    return None


def server_workers(frame: FrameType | None = None) -> ServerWorkers | None:
    """The worker processes of the uvicorn or gunicorn server whose call stack imports the app
    (the innermost server object found on the stack), or ``None`` outside such a server."""
    frame = frame or sys._getframe(1)
    while frame is not None:
        for value in list(frame.f_locals.values()):
            found = _workers_of(value)
            if found is not None:
                return found
        frame = frame.f_back
    return None


UNKNOWN = 0


def process_start_ticks(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, Linux), ``None`` if it is gone,
    :data:`UNKNOWN` where that cannot be read; it tells a process from a later one that reuses
    its pid."""
    if not Path("/proc").is_dir():
        return UNKNOWN
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return UNKNOWN
    # The command name (field 2) may hold spaces and parentheses: fields follow its last ')'.
    return int(text.rsplit(")", 1)[1].split()[19])


def shared_folder_name(parent_pid: int) -> str:
    return f"{FOLDER_PREFIX}{os.getuid()}-{parent_pid}-{process_start_ticks(parent_pid) or 0}"


def remove_stale_folders(base: Path) -> None:
    """Remove this user's worker folders left by servers that have ended (a server's workers
    cannot tell which of them stops last, so the next server clears up)."""
    for folder in base.glob(FOLDER_PREFIX + "*"):
        match = _FOLDER_NAME.match(folder.name)
        if match is None or int(match.group(1)) != os.getuid():
            continue
        pid, ticks = int(match.group(2)), int(match.group(3))
        now = process_start_ticks(pid)
        if now is None or (UNKNOWN not in (now, ticks) and now != ticks):
            shutil.rmtree(folder, ignore_errors=True)


def private_folder(path: Path) -> Path:
    """``path`` as a folder of this user only (mode 0700), created if missing; refused when it
    exists as anything else (another user could read or plant metrics there)."""
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        info = path.lstat()
    except OSError as exc:
        raise ConfigError(
            f"cannot create the workers' shared metrics folder {path}: {exc.strerror}; "
            f"set {MULTIPROC_DIR_ENV} to an empty folder of your own."
        ) from None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise ConfigError(
            f"the workers' shared metrics folder {path} is not a private folder of this user "
            f"(mode 0700); remove it or set {MULTIPROC_DIR_ENV} to an empty folder of your own."
        )
    return path


def join_server_workers(environ: MutableMapping[str, str] = os.environ) -> ServerWorkers | None:
    """Set up this worker as one of the server's N (see the module docstring); nothing for a
    lone process. ``ConfigError`` (one line) where the server runs the app in a way it cannot
    serve correctly."""
    found = server_workers(sys._getframe(1))
    if found is None or found.count <= 1:
        return found
    if found.preloaded:
        raise ConfigError(
            "gunicorn --preload is not supported: each worker must load the app and the model "
            "itself (its own metrics, registry poller and prediction log); drop --preload."
        )
    environ[WORKERS_ENV] = str(found.count)
    if not environ.get(MULTIPROC_DIR_ENV):  # clothing-classifier serve made one already
        base = Path(tempfile.gettempdir())
        remove_stale_folders(base)
        folder = private_folder(base / shared_folder_name(os.getppid()))
        environ[MULTIPROC_DIR_ENV] = str(folder)
    _use_multiprocess_values()
    return found


def _use_multiprocess_values() -> None:
    """Should prometheus_client be imported already (it chose its value class then), switch it
    to the shared files now: metrics made from here on use them."""
    values = sys.modules.get("prometheus_client.values")
    if values is not None:
        values.ValueClass = values.get_value_class()  # type: ignore[attr-defined]
