"""A light, read-only reader of the MLflow model registry for the API process.

Importing MLflow costs seconds of cold start and would bring its model loaders (pickle) into the
server; the API needs four facts: which version is Production, its run, that run's metrics and
where its artifacts live. They are read

* from an embedded ``sqlite:///`` registry with :mod:`sqlite3`, opened afresh (read-only) at every
  poll, so a registry file replaced by a restore is seen at the next poll;
* from an ``http(s)://`` tracking server through MLflow's REST API, artifacts included (through the
  server's artifact proxy for ``mlflow-artifacts:/`` locations).

Production is the alias ``production``, else the newest version in stage ``Production`` (the same
rule as :func:`src.registry.current_production`).

Every read of one registry check shares one :class:`Deadline`: a server that trickles a byte a
second or a query that never ends is cut off there, not read for ever. Redirects are refused (the
credentials of the tracking URI go to its own origin only), and artifacts are read only from
regular files (a FIFO or a device in the artifact store would block or never end).
"""

from __future__ import annotations

import base64
import contextlib
import errno
import http.client
import json
import math
import os
import socket
import sqlite3
import ssl
import stat
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.request import url2pathname

from src.registry_names import PRODUCTION_ALIAS, PRODUCTION_STAGE
from src.serving.redact import redact_uri

HTTP_TIMEOUT_S = 30.0  # one socket operation; the whole check has its Deadline besides
READ_CHUNK_BYTES = 1024 * 1024


class RegistryReadError(RuntimeError):
    """The registry or artifact store could not be read; the message is safe to show."""


class Deadline:
    """An overall time limit shared by every read of one registry check (``None``: none)."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self._at = math.inf if seconds is None else time.monotonic() + seconds

    def remaining(self) -> float:
        return self._at - time.monotonic()

    @property
    def expired(self) -> bool:
        return self.remaining() <= 0

    def timeout(self, cap: float) -> float:
        """A socket/lock timeout: ``cap``, or less when the deadline is nearer."""
        return max(0.001, min(cap, self.remaining()))

    def check(self, what: str) -> None:
        if self.expired:
            raise RegistryReadError(self.exceeded(what))

    def exceeded(self, what: str) -> str:
        return f"{what} did not finish within the reload's {self.seconds:g} s deadline"


@dataclass(frozen=True)
class VersionRef:
    """What the registry says about the Production version."""

    name: str
    version: str
    run_id: str | None
    source: str
    storage_location: str
    tags: dict[str, str] = field(default_factory=dict)
    created_at: float | None = None  # Unix time the version was registered


@dataclass(frozen=True)
class RunInfo:
    artifact_uri: str
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


class RegistryReader(Protocol):
    deadline: Deadline

    def production(self, name: str) -> VersionRef | None: ...

    def run(self, run_id: str) -> RunInfo | None: ...

    def read_artifact(self, location: str, path: str, max_bytes: int) -> bytes: ...


def reader_for(tracking_uri: str, deadline: Deadline | None = None) -> RegistryReader:
    """The reader for ``tracking_uri`` (``sqlite:///...`` or ``http(s)://...``); every read it
    makes ends by ``deadline``."""
    scheme = urllib.parse.urlparse(tracking_uri).scheme
    if scheme == "sqlite":
        return SqliteRegistry(tracking_uri, deadline)
    if scheme in ("http", "https"):
        return HttpRegistry(tracking_uri, deadline)
    raise RegistryReadError(
        f"The API reads the registry from sqlite:/// or http(s):// tracking URIs; got "
        f"{redact_uri(tracking_uri)!r}. Point MLFLOW_TRACKING_URI at one of those."
    )


def _open_regular(path: Path) -> int:
    """A descriptor of ``path`` if it is a regular file; never blocks (a FIFO opens at once with
    O_NONBLOCK and is then refused) and follows no symbolic link as its last part."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError as exc:
        raise RegistryReadError(f"{path.name} is missing from the artifact store") from exc
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise RegistryReadError(
                f"{path.name} in the artifact store is a symbolic link; the API reads only "
                "regular files: store the file itself"
            ) from exc
        raise RegistryReadError(f"cannot read {path.name}: {exc.strerror}") from exc
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = "folder" if stat.S_ISDIR(mode) else "FIFO" if stat.S_ISFIFO(mode) else "special file"
        raise RegistryReadError(
            f"{path.name} in the artifact store is a {kind}, not a regular file; the API reads "
            "only regular files: store the file itself"
        )
    return fd


def read_local_file(path: Path, max_bytes: int, deadline: Deadline | None = None) -> bytes:
    """``path``'s bytes: a regular file only, at most ``max_bytes`` (bounded memory), read in
    chunks that stop at ``deadline``."""
    deadline = deadline or Deadline(None)
    fd = _open_regular(path)
    try:
        with os.fdopen(fd, "rb", buffering=0) as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > max_bytes:
                raise RegistryReadError(f"{path.name} is {size} bytes, over the {max_bytes} limit")
            data = _read_capped(handle.read, max_bytes, deadline, f"reading {path.name}")
    except OSError as exc:
        raise RegistryReadError(f"cannot read {path.name}: {exc.strerror}") from exc
    if len(data) > max_bytes:
        raise RegistryReadError(f"{path.name} grew over the {max_bytes} byte limit while read")
    return data


def _read_capped(
    read: Callable[[int], bytes], max_bytes: int, deadline: Deadline, what: str
) -> bytes:
    """Chunks from ``read`` until it ends or passes ``max_bytes`` (at most one byte over, so the
    caller can tell), checking ``deadline`` before each chunk."""
    chunks: list[bytes] = []
    total = 0
    while total <= max_bytes:
        deadline.check(what)
        chunk = read(min(READ_CHUNK_BYTES, max_bytes + 1 - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def local_path(location: str) -> Path | None:
    """The local folder of a ``file:`` URI or plain path, ``None`` for any remote scheme."""
    parsed = urllib.parse.urlparse(location)
    if parsed.scheme == "file":
        return Path(url2pathname(parsed.path))
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and os.name == "nt"):
        return Path(location)
    return None


def _join(location: str, path: str) -> str:
    return location.rstrip("/") + "/" + path.lstrip("/")


class SqliteRegistry:
    """Reads an embedded sqlite registry; a fresh read-only connection per call."""

    def __init__(self, tracking_uri: str, deadline: Deadline | None = None) -> None:
        self.deadline = deadline or Deadline(None)
        self.path = (
            Path(tracking_uri[len("sqlite:///") :])
            if tracking_uri.startswith("sqlite:///")
            else Path(urllib.parse.urlparse(tracking_uri).path)
        )

    def _connect(self) -> sqlite3.Connection:
        if not self.path.is_file():
            raise RegistryReadError(f"the registry database {self.path} does not exist yet")
        # Read-only and opened per poll: no connection outlives a replaced file.
        uri = f"file:{urllib.parse.quote(str(self.path))}?mode=ro"
        try:
            connection = sqlite3.connect(uri, uri=True, timeout=self.deadline.timeout(10.0))
        except sqlite3.Error as exc:
            raise RegistryReadError(f"cannot open the registry database: {exc}") from exc
        # Interrupts a query still running at the deadline (checked every 10,000 VM steps).
        connection.set_progress_handler(lambda: int(self.deadline.expired), 10_000)
        return connection

    def _query(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        self.deadline.check("reading the registry database")
        connection = self._connect()
        try:
            return list(connection.execute(sql, args))
        except sqlite3.Error as exc:
            if self.deadline.expired:
                raise RegistryReadError(self.deadline.exceeded("reading the registry")) from exc
            raise RegistryReadError(f"cannot read the registry database: {exc}") from exc
        finally:
            connection.close()

    def production(self, name: str) -> VersionRef | None:
        rows = self._query(
            "SELECT v.version, v.run_id, v.source, v.storage_location, v.creation_time "
            "FROM model_versions v "
            "JOIN registered_model_aliases a ON a.name = v.name AND a.version = v.version "
            "WHERE v.name = ? AND a.alias = ?",
            (name, PRODUCTION_ALIAS),
        ) or self._query(
            "SELECT version, run_id, source, storage_location, creation_time FROM model_versions "
            "WHERE name = ? AND current_stage = ? ORDER BY version DESC LIMIT 1",
            (name, PRODUCTION_STAGE),
        )
        if not rows:
            return None
        version, run_id, source, storage, created_ms = rows[0]
        tags = self._query(
            "SELECT key, value FROM model_version_tags WHERE name = ? AND version = ?",
            (name, version),
        )
        return VersionRef(
            name=name,
            version=str(version),
            run_id=run_id or None,
            source=str(source or ""),
            storage_location=str(storage or source or ""),
            tags={str(k): str(v) for k, v in tags},
            created_at=_seconds(created_ms),
        )

    def run(self, run_id: str) -> RunInfo | None:
        rows = self._query("SELECT artifact_uri FROM runs WHERE run_uuid = ?", (run_id,))
        if not rows:
            return None
        metrics = self._query(
            "SELECT key, value FROM latest_metrics WHERE run_uuid = ? AND is_nan = 0", (run_id,)
        )
        params = self._query("SELECT key, value FROM params WHERE run_uuid = ?", (run_id,))
        tags = self._query("SELECT key, value FROM tags WHERE run_uuid = ?", (run_id,))
        return RunInfo(
            artifact_uri=str(rows[0][0] or ""),
            metrics={str(k): float(v) for k, v in metrics},
            params={str(k): str(v) for k, v in params},
            tags={str(k): str(v) for k, v in tags},
        )

    def read_artifact(self, location: str, path: str, max_bytes: int) -> bytes:
        folder = local_path(location)
        if folder is None:
            raise RegistryReadError(
                f"the artifact location {redact_uri(location)!r} is not a local folder; with an "
                "embedded sqlite registry the API reads artifacts from local folders only"
            )
        return read_local_file(folder / path, max_bytes, self.deadline)


class HttpRegistry:
    """Reads an MLflow tracking server over its REST API (artifacts through its proxy)."""

    def __init__(self, tracking_uri: str, deadline: Deadline | None = None) -> None:
        parsed = urllib.parse.urlparse(tracking_uri)
        self.deadline = deadline or Deadline(None)
        self.scheme = parsed.scheme
        self.host = parsed.hostname or ""
        self.port = parsed.port
        self.prefix = parsed.path.rstrip("/")
        netloc = self.host + (f":{self.port}" if self.port else "")
        self.base = urllib.parse.urlunparse((self.scheme, netloc, self.prefix, "", "", ""))
        self.headers = _auth_headers(parsed)

    def _connection(self) -> http.client.HTTPConnection:
        timeout = self.deadline.timeout(HTTP_TIMEOUT_S)
        if self.scheme == "https":
            context = ssl.create_default_context()
            return http.client.HTTPSConnection(
                self.host, self.port, timeout=timeout, context=context
            )
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def _get(self, path: str, params: dict[str, str], max_bytes: int) -> bytes:
        """One GET of this server (no redirects followed), all of it by the deadline."""
        query = urllib.parse.urlencode(params)
        target = f"{self.prefix}{path}" + (f"?{query}" if query else "")
        self.deadline.check(f"reading {path} from the tracking server")
        connection = self._connection()
        # Socket timeouts bound each read, not a server trickling a byte at a time: at the
        # deadline the watchdog shuts the socket, which ends any read in progress.
        watchdog = threading.Timer(self.deadline.timeout(math.inf), _shut, (connection,))
        watchdog.daemon = True
        if self.deadline.seconds is not None:
            watchdog.start()
        try:
            connection.request("GET", target, headers=self.headers)
            response = connection.getresponse()
            self._refuse_status(response, path)
            return _read_body(response, path, max_bytes, self.deadline)
        except (OSError, http.client.HTTPException) as exc:
            if self.deadline.expired:
                raise RegistryReadError(
                    self.deadline.exceeded(f"reading {path} from the tracking server")
                ) from exc
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise RegistryReadError(f"the tracking server is unreachable ({reason})") from exc
        finally:
            watchdog.cancel()
            connection.close()

    def _refuse_status(self, response: http.client.HTTPResponse, path: str) -> None:
        status = response.status
        if 300 <= status < 400:
            target = urllib.parse.urlparse(response.getheader("Location") or "")
            where = f"{target.scheme}://{target.hostname}" if target.hostname else "elsewhere"
            raise RegistryReadError(
                f"the tracking server redirected {path} (HTTP {status}, to {where}); the API "
                "follows no redirects, so its credentials never reach another host: point "
                "MLFLOW_TRACKING_URI at the server's final address"
            )
        if status == 404:
            raise _NotFound(path)
        if status >= 400:
            raise RegistryReadError(f"the tracking server answered HTTP {status} for {path}")

    def _json(self, path: str, params: dict[str, str]) -> dict[str, Any]:
        try:
            value = json.loads(self._get(path, params, 16 * 1024 * 1024))
        except ValueError as exc:
            raise RegistryReadError(f"the tracking server answered non-JSON for {path}") from exc
        return value if isinstance(value, dict) else {}

    def production(self, name: str) -> VersionRef | None:
        try:
            model = self._json("/api/2.0/mlflow/registered-models/get", {"name": name})
        except _NotFound:
            return None
        registered = model.get("registered_model", {})
        aliases = {a.get("alias"): a.get("version") for a in registered.get("aliases", [])}
        version = aliases.get(PRODUCTION_ALIAS)
        if version is None:
            staged = [
                v
                for v in registered.get("latest_versions", [])
                if v.get("current_stage") == PRODUCTION_STAGE
            ]
            if not staged:
                return None
            version = max(staged, key=lambda v: int(v.get("version", 0)))["version"]
        try:
            answer = self._json(
                "/api/2.0/mlflow/model-versions/get", {"name": name, "version": str(version)}
            )
            location = self._json(
                "/api/2.0/mlflow/model-versions/get-download-uri",
                {"name": name, "version": str(version)},
            ).get("artifact_uri", "")
        except _NotFound:
            return None
        mv = answer.get("model_version", {})
        return VersionRef(
            name=name,
            version=str(version),
            run_id=mv.get("run_id") or None,
            source=str(mv.get("source", "")),
            storage_location=str(location or mv.get("source", "")),
            tags=_pairs(mv.get("tags")),
            created_at=_seconds(mv.get("creation_timestamp")),
        )

    def run(self, run_id: str) -> RunInfo | None:
        try:
            run = self._json("/api/2.0/mlflow/runs/get", {"run_id": run_id}).get("run", {})
        except _NotFound:
            return None
        data = run.get("data", {})
        metrics = {
            str(m["key"]): float(m["value"])
            for m in data.get("metrics", [])
            if isinstance(m.get("value"), int | float)
        }
        return RunInfo(
            artifact_uri=str(run.get("info", {}).get("artifact_uri", "")),
            metrics=metrics,
            params=_pairs(data.get("params")),
            tags=_pairs(data.get("tags")),
        )

    def read_artifact(self, location: str, path: str, max_bytes: int) -> bytes:
        parsed = urllib.parse.urlparse(location)
        if parsed.scheme == "mlflow-artifacts":
            # mlflow-artifacts:/<path> or mlflow-artifacts://host/<path>: served by this server.
            relative = _join(parsed.path.lstrip("/"), path)
            quoted = urllib.parse.quote(relative)
            try:
                return self._get(f"/api/2.0/mlflow-artifacts/artifacts/{quoted}", {}, max_bytes)
            except _NotFound as exc:
                raise RegistryReadError(f"{path} is missing from the artifact store") from exc
        folder = local_path(location)
        if folder is not None:
            return read_local_file(folder / path, max_bytes, self.deadline)
        raise RegistryReadError(
            f"the artifact location {redact_uri(location)!r} is neither served by the tracking "
            "server (start it with --serve-artifacts) nor a local folder"
        )


class _NotFound(RegistryReadError):
    pass


def _shut(connection: http.client.HTTPConnection) -> None:
    sock = connection.sock
    if sock is not None:
        with contextlib.suppress(OSError):  # already closed: nothing left to stop
            sock.shutdown(socket.SHUT_RDWR)


def _read_body(
    response: http.client.HTTPResponse, path: str, max_bytes: int, deadline: Deadline
) -> bytes:
    what = f"reading {path} from the tracking server"
    data = _read_capped(response.read1, max_bytes, deadline, what)
    deadline.check(what)  # cut short by the watchdog?
    if len(data) > max_bytes:
        raise RegistryReadError(f"{path} is over the {max_bytes} byte limit")
    return data


def _seconds(milliseconds: Any) -> float | None:
    """MLflow's millisecond timestamps as Unix seconds (``None`` when absent or not a number)."""
    try:
        return float(milliseconds) / 1000.0 if milliseconds is not None else None
    except (TypeError, ValueError):
        return None


def _pairs(items: Any) -> dict[str, str]:
    if not isinstance(items, list):
        return {}
    return {str(i.get("key")): str(i.get("value", "")) for i in items if isinstance(i, dict)}


def _auth_headers(parsed: urllib.parse.ParseResult) -> dict[str, str]:
    """MLflow's client conventions: user:password in the URI or MLFLOW_TRACKING_USERNAME/PASSWORD
    (basic), or MLFLOW_TRACKING_TOKEN (bearer)."""
    user = urllib.parse.unquote(parsed.username or "") or os.environ.get(
        "MLFLOW_TRACKING_USERNAME", ""
    )
    password = urllib.parse.unquote(parsed.password or "") or os.environ.get(
        "MLFLOW_TRACKING_PASSWORD", ""
    )
    token = os.environ.get("MLFLOW_TRACKING_TOKEN", "")
    if user:
        pair = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        return {"Authorization": f"Basic {pair}"}
    if token:
        return {"Authorization": f"Bearer {token}"}
    return {}
