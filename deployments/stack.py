"""The team setup on one machine: PostgreSQL, an S3-compatible store, MLflow and Prefect servers,
a Prefect process worker, API replicas behind an nginx reverse proxy and a Prometheus server, each
on 127.0.0.1 at a free port, all state in one folder.

    python -m deployments.stack up [--dir .stack]    # start; prints URLs and the env to source
    python -m deployments.stack down [--dir .stack]  # stop what `up` started, remove its data

The services test (``tests/services``) starts and stops the stack through the same functions.

- PostgreSQL (Debian's ``postgresql``): ``initdb`` + ``pg_ctl`` into a temporary data folder,
  databases ``mlflow`` and ``prefect``; the password lives in a libpq password file only.
- S3: moto's standalone server (``moto[server]``), buckets for MLflow artefacts and the DVC remote.
- ``mlflow server``: Postgres backend store, ``--artifacts-destination s3://...``,
  ``--serve-artifacts`` (clients need only the URL, no S3 credentials).
- ``prefect server start`` on Postgres (asyncpg) and ``prefect worker start`` (process pool).
- The edge (:mod:`deployments.edge`): ``edge.replicas`` API replicas following MLflow's
  Production, nginx in front of them (and in front of MLflow), Prometheus scraping them.

Every service asks for credentials: S3 checks the keys (moto's IAM, a user created at start),
MLflow sits behind nginx's basic auth, Prefect's server wants its basic-auth string.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fnmatch
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from deployments import edge as edge_files
from deployments import postgres

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PG_BIN = postgres.pg_bin() or Path("/usr/lib/postgresql/bin")  # the message below names the fix
PG_USER = "stack"  # the database role every service uses
OS_USER = "postgres"  # initdb and the server refuse to run as root; Debian's package adds this user
MLFLOW_BUCKET = "mlflow-artifacts"
DVC_BUCKET = "dvc-store"
DVC_PREFIX = "clothing-classifier"
DVC_REMOTE_NAME = "s3"
STATE_FILE = "stack.json"
ENV_FILE = "env.sh"
SECRET_KEYS = ("AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_PASSWORD", "PREFECT_API_AUTH_STRING")
MLFLOW_USER = "stack"
PREFECT_USER = "stack"
S3_USER = "stack"
# moto checks no credentials for this many requests: the three that create the stack's S3 user.
S3_BOOTSTRAP_ACTIONS = 3
# Never phone home.
QUIET_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
}
# Stop order: the worker and the proxy first (no flow run or request starts while the rest goes),
# then the replicas and Prometheus, then the servers at once, PostgreSQL last.
STOP_ORDER = (("worker", "proxy"), ("prometheus", "api-*"), ("prefect", "mlflow", "s3"))


class StackError(RuntimeError):
    """A service of the stack did not start or stop."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Stack:
    """Where each service listens and which process runs it (all state lives in ``root``)."""

    root: Path
    pg_dir: Path  # owned by the unprivileged user PostgreSQL runs as
    pg_port: int
    s3_port: int
    mlflow_port: int
    prefect_port: int
    work_pool: str
    experiment_name: str
    aws_key_id: str
    aws_secret: str
    mlflow_internal_port: int
    mlflow_password: str
    prefect_password: str
    proxy_port: int
    prometheus_port: int
    api_ports: list[int]
    api_tracking_uri: str = ""
    api_store_urls: list[str] = field(default_factory=list)
    pids: dict[str, int] = field(default_factory=dict)

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    @property
    def prefect_api_url(self) -> str:
        return f"http://127.0.0.1:{self.prefect_port}/api"

    @property
    def s3_url(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.prometheus_port}"

    @property
    def api_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.api_ports]

    @property
    def edge_dir(self) -> Path:
        return self.root / "edge"

    @property
    def prefect_auth_string(self) -> str:
        return f"{PREFECT_USER}:{self.prefect_password}"

    def prefect_headers(self) -> dict[str, str]:
        """What a client of the Prefect API sends (Prefect's basic-auth string)."""
        token = base64.b64encode(self.prefect_auth_string.encode()).decode()
        return {"Authorization": f"Basic {token}"}

    def mlflow_env(self) -> dict[str, str]:
        """What an MLflow client (a flow run, an API replica) needs: the URL and credentials."""
        return {
            "MLFLOW_TRACKING_URI": self.mlflow_url,
            "MLFLOW_TRACKING_USERNAME": MLFLOW_USER,
            "MLFLOW_TRACKING_PASSWORD": self.mlflow_password,
            # Artefacts stream through the server, which holds the S3 keys: no presigned S3 URL
            # goes to clients (moto's IAM checks do not cover presigned requests).
            "MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD": "false",
            "MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD": "false",
        }

    @property
    def passfile(self) -> Path:
        return self.root / "pgpass"

    @property
    def dvc_remote_url(self) -> str:
        return f"s3://{DVC_BUCKET}/{DVC_PREFIX}"

    def pg_url(self, database: str, driver: str = "postgresql") -> str:
        """A URL without the password: libpq and asyncpg read it from ``PGPASSFILE``."""
        return f"{driver}://{PG_USER}@127.0.0.1:{self.pg_port}/{database}"

    def aws_env(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": self.aws_key_id,
            "AWS_SECRET_ACCESS_KEY": self.aws_secret,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def client_env(self) -> dict[str, str]:
        """What a training machine, a worker or a person's shell sets to use the stack."""
        return {
            **self.mlflow_env(),
            "PREFECT_API_URL": self.prefect_api_url,
            "PREFECT_API_AUTH_STRING": self.prefect_auth_string,
            "DATA_DVC_REMOTE_NAME": DVC_REMOTE_NAME,
            "DATA_DVC_REMOTE_URL": self.dvc_remote_url,
            "DATA_DVC_REMOTE_ENDPOINT_URL": self.s3_url,
            **self.aws_env(),
        }

    def server_env(self) -> dict[str, str]:
        return {
            **os.environ,
            **QUIET_ENV,
            **self.aws_env(),
            "PGPASSFILE": str(self.passfile),
            "MLFLOW_S3_ENDPOINT_URL": self.s3_url,
            # Server-side GenAI jobs (huey consumers): unused here, several processes each.
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        }

    def s3_client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.s3_url,
            aws_access_key_id=self.aws_key_id,
            aws_secret_access_key=self.aws_secret,
            region_name="us-east-1",
        )

    def save(self) -> None:
        state = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}
        path = self.root / STATE_FILE
        path.write_text(json.dumps(state, indent=2))
        path.chmod(0o600)

    @classmethod
    def load(cls, root: Path) -> Stack:
        state = json.loads((root / STATE_FILE).read_text())
        return cls(**{**state, "root": Path(state["root"]), "pg_dir": Path(state["pg_dir"])})


# --- processes --------------------------------------------------------------------------------

_children: dict[int, subprocess.Popen[bytes]] = {}  # reaped here, so a stopped group can vanish


def _spawn(stack: Stack, name: str, argv: list[str], env: dict[str, str]) -> None:
    with (stack.root / f"{name}.log").open("ab") as log:
        process = subprocess.Popen(
            argv,
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopping it stops its children
        )
    _children[process.pid] = process
    stack.pids[name] = process.pid
    stack.save()


def _group_alive(pid: int) -> bool:
    child = _children.get(pid)
    if child is not None:
        child.poll()
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop_groups(pids: list[int], timeout: float = 15.0) -> None:
    """SIGTERM the process groups together, then SIGKILL whatever is left after ``timeout``."""
    left = list(pids)
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, sig)
        deadline = time.monotonic() + wait
        while any(_group_alive(pid) for pid in left) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = [pid for pid in left if _group_alive(pid)]
        if not left:
            break
    for pid in pids:
        _children.pop(pid, None)
    if left:
        raise StackError(f"process groups {left} survived SIGKILL; check them with `ps -g`.")


def stop_services(stack: Stack, *names: str) -> None:
    """Stop the named services together (``api-*`` names every replica)."""
    matched = [name for name in list(stack.pids) if any(fnmatch.fnmatch(name, n) for n in names)]
    pids = [stack.pids.pop(name) for name in matched]
    if pids:
        _stop_groups(pids)
        stack.save()


def stop_service(stack: Stack, name: str) -> None:
    stop_services(stack, name)


def _log_tail(stack: Stack, name: str) -> str:
    path = stack.root / f"{name}.log"
    return path.read_text(errors="replace")[-3000:] if path.is_file() else "(no log)"


def _wait(stack: Stack, name: str, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except Exception:  # refused, reset, not JSON yet: not up yet; the log tells at the end
            pass
        pid = stack.pids.get(name)
        if pid is not None and not _group_alive(pid):
            raise StackError(f"{name} exited while starting; its log:\n{_log_tail(stack, name)}")
        if time.monotonic() > deadline:
            raise StackError(
                f"{name} did not answer within {timeout:.0f} s; see {stack.root / name}.log:\n"
                + _log_tail(stack, name)
            )
        time.sleep(0.3)


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as response:
        return bool(response.status == 200)


# --- PostgreSQL -------------------------------------------------------------------------------


def _as_pg_user(argv: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: drop to the package's unprivileged user when root."""
    if os.geteuid() != 0:
        return argv
    return ["runuser", "-u", OS_USER, "--", *argv]


def _pg_run(argv: list[str], env: dict[str, str] | None = None) -> None:
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise StackError(f"{' '.join(argv[:4])} failed:\n{result.stdout}{result.stderr}")


def start_postgres(stack: Stack, password: str) -> None:
    """``initdb`` (password auth on 127.0.0.1 only, no Unix socket) + ``pg_ctl start``."""
    if not (PG_BIN / "initdb").is_file():
        raise StackError(
            "PostgreSQL's server tools (initdb) are not installed; run `make postgres-deps` "
            "(Debian package postgresql) or set STACK_PG_BIN to its bin folder."
        )
    pwfile = stack.pg_dir / "pwfile"
    pwfile.write_text(password + "\n")
    if os.geteuid() == 0:
        shutil.chown(stack.pg_dir, OS_USER)
        shutil.chown(pwfile, OS_USER)
    data = stack.pg_dir / "data"
    initdb = [str(PG_BIN / "initdb"), "-D", str(data), "-U", PG_USER, "--pwfile", str(pwfile)]
    auth = ["--auth-host=scram-sha-256", "--auth-local=scram-sha-256", "-E", "UTF8"]
    _pg_run(_as_pg_user([*initdb, *auth, "--no-locale", "--no-sync"]))
    pwfile.unlink()
    options = f"-p {stack.pg_port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=''"
    log = stack.pg_dir / "postgres.log"
    pg_ctl = [str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options]
    _pg_run(_as_pg_user([*pg_ctl, "-w", "-t", "60", "start"]))
    env = {**os.environ, "PGPASSFILE": str(stack.passfile)}
    for database in ("mlflow", "prefect", "predictions"):
        create = [str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(stack.pg_port)]
        _pg_run([*create, "-U", PG_USER, database], env=env)


def stop_postgres(stack: Stack) -> None:
    data = stack.pg_dir / "data"
    if (data / "postmaster.pid").is_file():
        pg_ctl = [str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", "60", "stop"]
        _pg_run(_as_pg_user(pg_ctl))


def psql(stack: Stack, database: str, query: str) -> list[tuple[str, ...]]:
    """Rows of ``query`` (as text) from one of the stack's databases."""
    argv = [str(PG_BIN / "psql"), "-h", "127.0.0.1", "-p", str(stack.pg_port), "-U", PG_USER]
    argv += ["-d", database, "-X", "-A", "-t", "-F", "\t", "-v", "ON_ERROR_STOP=1", "-c", query]
    env = {**os.environ, "PGPASSFILE": str(stack.passfile)}
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise StackError(f"psql {database}: {result.stderr.strip()}")
    return [tuple(line.split("\t")) for line in result.stdout.splitlines() if line]


# --- S3, MLflow, Prefect ----------------------------------------------------------------------


def start_s3(stack: Stack) -> None:
    """moto's server, checking signatures and IAM policies after the bootstrap requests."""
    argv = [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(stack.s3_port)]
    env = {**stack.server_env(), "INITIAL_NO_AUTH_ACTION_COUNT": str(S3_BOOTSTRAP_ACTIONS)}
    _spawn(stack, "s3", argv, env)


def create_s3_user(stack: Stack) -> None:
    """The stack's S3 user (allowed everything) and its keys, which every client then uses;
    moto refuses any other key from here on."""
    import boto3

    _wait(stack, "s3", lambda: _http_ok(f"{stack.s3_url}/moto-api/"), 60)
    iam = boto3.client(
        "iam",
        endpoint_url=stack.s3_url,
        aws_access_key_id="bootstrap",
        aws_secret_access_key="bootstrap",
        region_name="us-east-1",
    )
    iam.create_user(UserName=S3_USER)
    policy = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
    }
    iam.put_user_policy(UserName=S3_USER, PolicyName="stack", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=S3_USER)["AccessKey"]
    stack.aws_key_id, stack.aws_secret = key["AccessKeyId"], key["SecretAccessKey"]
    stack.save()


def create_buckets(stack: Stack) -> None:
    create_s3_user(stack)
    client = stack.s3_client()
    for bucket in (MLFLOW_BUCKET, DVC_BUCKET):
        client.create_bucket(Bucket=bucket)


def start_mlflow(stack: Stack) -> None:
    """``mlflow server`` on the Postgres store, proxying artefacts to the S3 bucket."""
    argv = [
        str(BIN / "mlflow"),
        "server",
        "--backend-store-uri",
        stack.pg_url("mlflow", "postgresql+psycopg2"),
    ]
    argv += ["--artifacts-destination", f"s3://{MLFLOW_BUCKET}/", "--serve-artifacts"]
    # Behind the proxy's credential check: clients use stack.mlflow_url (the proxy's port).
    argv += ["--host", "127.0.0.1", "--port", str(stack.mlflow_internal_port), "--workers", "1"]
    _spawn(stack, "mlflow", argv, stack.server_env())


def wait_mlflow(stack: Stack, timeout: float = 120) -> None:
    _wait(stack, "mlflow", lambda: _http_ok(f"{stack.mlflow_url}/health"), timeout)


def ensure_experiment(stack: Stack) -> None:
    """Create the experiment on the server, so runs store artefacts through its proxy (S3)."""
    import httpx

    auth = (MLFLOW_USER, stack.mlflow_password)
    api = f"{stack.mlflow_url}/api/2.0/mlflow/experiments"
    found = httpx.get(
        f"{api}/get-by-name", params={"experiment_name": stack.experiment_name}, auth=auth
    )
    if found.status_code == 200:
        return
    created = httpx.post(f"{api}/create", json={"name": stack.experiment_name}, auth=auth)
    if created.status_code != 200:
        raise StackError(f"creating experiment {stack.experiment_name!r} failed: {created.text}")


def start_prefect(stack: Stack, ui: bool) -> None:
    home = stack.root / "prefect-home"
    home.mkdir(exist_ok=True)
    env = {
        **stack.server_env(),
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": stack.prefect_api_url,
        "PREFECT_API_DATABASE_CONNECTION_URL": stack.pg_url("prefect", "postgresql+asyncpg"),
        "PREFECT_SERVER_UI_ENABLED": "true" if ui else "false",
        # Every API call but the health probe needs this (the server's own services use it too).
        "PREFECT_SERVER_API_AUTH_STRING": stack.prefect_auth_string,
        "PREFECT_API_AUTH_STRING": stack.prefect_auth_string,
    }
    argv = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1"]
    _spawn(stack, "prefect", [*argv, "--port", str(stack.prefect_port)], env)


def wait_prefect(stack: Stack, timeout: float = 180) -> None:
    _wait(stack, "prefect", lambda: _http_ok(f"{stack.prefect_api_url}/health"), timeout)
    import httpx

    pool = {"name": stack.work_pool, "type": "process"}
    response = httpx.post(
        f"{stack.prefect_api_url}/work_pools/",
        json=pool,
        headers=stack.prefect_headers(),
        timeout=30,
    )
    if response.status_code not in (201, 409):  # 409: it exists already
        raise StackError(f"creating work pool {stack.work_pool!r} failed: {response.text}")


def start_worker(stack: Stack, extra_env: dict[str, str] | None = None) -> None:
    """A process worker: flow runs start in this checkout with the stack's client env."""
    env = {
        **os.environ,
        **(extra_env or {}),
        **QUIET_ENV,
        **stack.client_env(),  # the stack's URLs win over anything inherited
        "PREFECT_HOME": str(stack.root / "worker-home"),
        "PREFECT_WORKER_QUERY_SECONDS": "2",
    }
    argv = [str(BIN / "prefect"), "worker", "start", "--pool", stack.work_pool]
    _spawn(stack, "worker", [*argv, "--type", "process"], env)


def wait_worker(stack: Stack, timeout: float = 120) -> None:
    import httpx

    url = f"{stack.prefect_api_url}/work_pools/{stack.work_pool}/workers/filter"

    def online() -> bool:
        workers = httpx.post(url, json={}, headers=stack.prefect_headers(), timeout=10).json()
        return any(worker.get("status") == "ONLINE" for worker in workers)

    _wait(stack, "worker", online, timeout)


# --- the edge: API replicas, nginx in front, Prometheus -------------------------------------


def _edge_config(settings: dict[str, Any] | None = None) -> Any:
    sys.path.insert(0, str(REPO_ROOT))
    from src.config import load_config

    return load_config(overrides={"edge": settings} if settings else None)


def start_proxy(
    stack: Stack, *, mlflow_front: bool, settings: dict[str, Any] | None = None
) -> None:
    """nginx: the public API port in front of the replicas (and MLflow's credential check)."""
    cfg = _edge_config(settings)
    prefix = stack.edge_dir / "nginx"
    prefix.mkdir(parents=True, exist_ok=True)
    front = None
    if mlflow_front:
        htpasswd = prefix / "mlflow.htpasswd"
        htpasswd.write_text(edge_files.htpasswd_line(MLFLOW_USER, stack.mlflow_password))
        htpasswd.chmod(0o600)
        front = edge_files.MlflowFront(stack.mlflow_port, stack.mlflow_internal_port, htpasswd)
    text = edge_files.nginx_config(
        cfg.edge,
        cfg.serve,
        prefix=prefix,
        public_port=stack.proxy_port,
        api_ports=stack.api_ports,
        mlflow=front,
    )
    conf = edge_files.write_nginx(prefix, text)
    check = subprocess.run(
        [*edge_files.nginx_argv(conf, prefix), "-t", "-q"], capture_output=True, text=True
    )
    if check.returncode != 0:
        raise StackError(f"nginx refuses {conf}: {check.stderr.strip()}")
    _spawn(stack, "proxy", edge_files.nginx_argv(conf, prefix), {**os.environ})


def wait_proxy(stack: Stack, timeout: float = 30) -> None:
    _wait(stack, "proxy", lambda: _http_status(f"{stack.proxy_url}/health") > 0, timeout)


def _http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def replica_env(stack: Stack, index: int) -> dict[str, str]:
    """A replica gets the registry and its prediction log, no other credential of the stack."""
    inherited = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SERVE_", "MLFLOW_", "AWS_", "PREFECT_API_AUTH"))
    }
    env = {**inherited, **QUIET_ENV, "MLFLOW_TRACKING_URI": stack.api_tracking_uri}
    if stack.api_tracking_uri == stack.mlflow_url:
        env |= stack.mlflow_env()
    env |= {
        "PGPASSFILE": str(stack.passfile),
        "MONITOR_STORE_URL": stack.api_store_urls[index],
        "PROFILE": "",
        # The replicas are the stack's unit of scale (nginx spreads over them): one worker each.
        "SERVE_WORKERS": "1",
    }
    return env


def start_replica(stack: Stack, index: int, extra_env: dict[str, str] | None = None) -> None:
    port = stack.api_ports[index]
    argv = [str(BIN / "clothing-classifier"), "serve", "--host", "127.0.0.1", "--port", str(port)]
    _spawn(stack, f"api-{index + 1}", argv, {**replica_env(stack, index), **(extra_env or {})})


def wait_replica(stack: Stack, index: int, timeout: float = 120) -> None:
    url = f"{stack.api_urls[index]}/health"
    _wait(stack, f"api-{index + 1}", lambda: _http_ok(url), timeout)


def start_prometheus(stack: Stack, settings: dict[str, Any] | None = None) -> None:
    cfg = _edge_config(settings)
    folder = stack.edge_dir / "prometheus"
    folder.mkdir(parents=True, exist_ok=True)
    conf = folder / "prometheus.yml"
    conf.write_text(edge_files.prometheus_config(cfg.edge, stack.api_ports))
    argv = edge_files.prometheus_argv(conf, folder / "data", stack.prometheus_port, cfg.edge)
    _spawn(stack, "prometheus", argv, {**os.environ})


def wait_prometheus(stack: Stack, timeout: float = 60) -> None:
    _wait(stack, "prometheus", lambda: _http_ok(f"{stack.prometheus_url}/-/ready"), timeout)


def start_edge(
    stack: Stack,
    tracking_uri: str,
    store_urls: list[str],
    *,
    settings: dict[str, Any] | None = None,
    replica_env: dict[str, str] | None = None,
) -> None:
    """The replicas (following ``tracking_uri``), then Prometheus, then wait for all of them
    and the proxy (started before, as it also fronts MLflow)."""
    stack.api_tracking_uri, stack.api_store_urls = tracking_uri, store_urls
    for index in range(len(stack.api_ports)):
        start_replica(stack, index, replica_env)
    start_prometheus(stack, settings)
    for index in range(len(stack.api_ports)):
        wait_replica(stack, index)
    wait_proxy(stack)
    wait_prometheus(stack)


# --- the whole stack --------------------------------------------------------------------------


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports (the sockets are held until all are chosen)."""
    with contextlib.ExitStack() as held:
        ports = []
        for _ in range(count):
            sock = held.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def _new_stack(root: Path, replicas: int | None = None) -> Stack:
    sys.path.insert(0, str(REPO_ROOT))
    from src.config import load_config

    cfg = load_config()
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o700)  # the password file and the keys live here
    replicas = cfg.edge.replicas if replicas is None else replicas
    pg, s3, mlflow, mlflow_internal, prefect, proxy, prometheus, *api = free_ports(7 + replicas)
    return Stack(
        root=root.resolve(),
        pg_dir=Path(tempfile.mkdtemp(prefix="stack-pg-")),
        pg_port=pg,
        s3_port=s3,
        mlflow_port=mlflow,
        prefect_port=prefect,
        work_pool=cfg.flow.work_pool,
        experiment_name=cfg.mlflow.experiment_name,
        aws_key_id="",  # created by create_s3_user
        aws_secret="",
        mlflow_internal_port=mlflow_internal,
        mlflow_password=secrets.token_urlsafe(24),
        prefect_password=secrets.token_urlsafe(24),
        proxy_port=proxy,
        prometheus_port=prometheus,
        api_ports=api,
    )


def _claim(root: Path, replicas: int | None = None) -> Stack:
    if (root / STATE_FILE).is_file():
        raise StackError(f"{root} holds a stack already; stop it first (`make stack-down`).")
    stack = _new_stack(root, replicas)
    stack.save()
    return stack


def up(
    root: Path, *, ui: bool = True, worker_env: dict[str, str] | None = None, worker: bool = True
) -> Stack:
    """Start every service (stopping what started if one fails) and return where they listen."""
    stack = _claim(root)
    password = secrets.token_urlsafe(24)
    stack.passfile.write_text(f"127.0.0.1:{stack.pg_port}:*:{PG_USER}:{password}\n")
    stack.passfile.chmod(0o600)
    try:
        start_s3(stack)  # in the background while PostgreSQL initialises
        start_postgres(stack, password)
        create_buckets(stack)  # the S3 user's keys first: MLflow's server needs them
        start_mlflow(stack)
        start_prefect(stack, ui)
        start_proxy(stack, mlflow_front=True)
        wait_proxy(stack)
        wait_mlflow(stack)
        ensure_experiment(stack)
        wait_prefect(stack)
        if worker:
            start_worker(stack, worker_env)
            wait_worker(stack)
        predictions = stack.pg_url("predictions", "postgresql+psycopg2")
        start_edge(stack, stack.mlflow_url, [predictions] * len(stack.api_ports))
    except BaseException:
        down(stack)
        raise
    write_env_file(stack)
    return stack


def up_edge(
    root: Path,
    tracking_uri: str,
    *,
    replicas: int = 2,
    settings: dict[str, Any] | None = None,
    replica_env: dict[str, str] | None = None,
) -> Stack:
    """Only the edge (replicas, proxy, Prometheus) on another registry, e.g. a sqlite file; each
    replica keeps its prediction log in a sqlite file of its own in ``root``."""
    stack = _claim(root, replicas)
    try:
        start_proxy(stack, mlflow_front=False, settings=settings)
        stores = [f"sqlite:///{stack.root}/predictions-{i + 1}.db" for i in range(replicas)]
        start_edge(stack, tracking_uri, stores, settings=settings, replica_env=replica_env)
    except BaseException:
        down(stack)
        raise
    return stack


def down(stack: Stack) -> None:
    """Stop every service and remove the database folder; safe to call more than once."""
    errors: list[str] = []
    for names in STOP_ORDER:
        try:
            stop_services(stack, *names)
        except Exception as exc:
            errors.append(f"{', '.join(names)}: {exc}")
    try:
        stop_postgres(stack)
    except Exception as exc:
        errors.append(f"postgres: {exc}")
    shutil.rmtree(stack.pg_dir, ignore_errors=True)
    shutil.rmtree(stack.edge_dir / "prometheus" / "data", ignore_errors=True)
    htpasswd = stack.edge_dir / "nginx" / "mlflow.htpasswd"
    for secret_file in (stack.passfile, htpasswd, stack.root / ENV_FILE, stack.root / STATE_FILE):
        secret_file.unlink(missing_ok=True)
    if errors:
        raise StackError("stopping the stack failed: " + "; ".join(errors))


@contextlib.contextmanager
def running(root: Path, **kwargs: Any) -> Iterator[Stack]:
    """The stack for the duration of a ``with`` block; stopped on the way out, also on errors."""
    stack = up(root, **kwargs)
    try:
        yield stack
    finally:
        down(stack)


@contextlib.contextmanager
def running_edge(root: Path, tracking_uri: str, **kwargs: Any) -> Iterator[Stack]:
    """:func:`up_edge` for the duration of a ``with`` block, stopped also on errors."""
    stack = up_edge(root, tracking_uri, **kwargs)
    try:
        yield stack
    finally:
        down(stack)


# --- command line -----------------------------------------------------------------------------


def write_env_file(stack: Stack) -> Path:
    path = stack.root / ENV_FILE
    lines = [f"export {key}={value}" for key, value in stack.client_env().items()]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


def describe(stack: Stack) -> str:
    shown = {k: "<in env.sh>" if k in SECRET_KEYS else v for k, v in stack.client_env().items()}
    psql_line = f"PGPASSFILE={stack.passfile} psql -h 127.0.0.1 -p {stack.pg_port} -U {PG_USER}"
    return "\n".join(
        [
            "The stack is up (127.0.0.1):",
            f"  PostgreSQL  port {stack.pg_port}   {psql_line} -d mlflow",
            f"  S3 (moto)   {stack.s3_url}   buckets {MLFLOW_BUCKET}, {DVC_BUCKET}",
            f"  MLflow      {stack.mlflow_url}   (user {MLFLOW_USER}, password in env.sh)",
            f"  Prefect     {stack.prefect_api_url.removesuffix('/api')}   "
            f"(worker on pool {stack.work_pool!r}; PREFECT_API_AUTH_STRING in env.sh)",
            f"  API         {stack.proxy_url}   (nginx in front of the replicas; the public port)",
            *(
                f"  replica {i + 1}   {url}   (/metrics here)"
                for i, url in enumerate(stack.api_urls)
            ),
            f"  Prometheus  {stack.prometheus_url}   (alerts: {stack.prometheus_url}/alerts)",
            f"  logs        {stack.root}/*.log",
            "Environment for clients (secrets are in the file, not shown here):",
            *(f"  export {key}={value}" for key, value in shown.items()),
            f"  source {stack.root / ENV_FILE}",
            "Then, from the repository root:",
            "  prefect --no-prompt deploy --prefect-file deployments/prefect.yaml --all",
            '  prefect deployment run train-flow/weekly --param params=\'{"profile": "smoke"}\'',
            f"  curl -F file=@shirt.png {stack.proxy_url}/predict   # once a model is Production",
            "Stop everything:  make stack-down",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deployments.stack", description=__doc__)
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--dir", type=Path, default=REPO_ROOT / ".stack", help="state folder")
    args = parser.parse_args(argv)
    root: Path = args.dir
    try:
        if args.action == "up":
            print(describe(up(root)))
            return 0
        if not (root / STATE_FILE).is_file():
            print(f"No stack is running from {root} (no {STATE_FILE}); nothing to stop.")
            return 0
        down(Stack.load(root))
        print(f"Stopped the stack in {root}.")
        return 0
    except (StackError, edge_files.EdgeError) as exc:
        print(f"stack {args.action}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
