"""The team setup on one machine: PostgreSQL, an S3-compatible store, MLflow and Prefect servers
and a Prefect process worker, each on 127.0.0.1 at a free port, all state in one folder.

    python -m deployments.stack up [--dir .stack]    # start; prints URLs and the env to source
    python -m deployments.stack down [--dir .stack]  # stop what `up` started, remove its data

The services test (``tests/services``) starts and stops the stack through the same functions.

- PostgreSQL (Debian's ``postgresql``): ``initdb`` + ``pg_ctl`` into a temporary data folder,
  databases ``mlflow`` and ``prefect``; the password lives in a libpq password file only.
- S3: moto's standalone server (``moto[server]``), buckets for MLflow artefacts and the DVC remote.
- ``mlflow server``: Postgres backend store, ``--artifacts-destination s3://...``,
  ``--serve-artifacts`` (clients need only the URL, no S3 credentials).
- ``prefect server start`` on Postgres (asyncpg) and ``prefect worker start`` (process pool).
"""

from __future__ import annotations

import argparse
import contextlib
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
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PG_BIN = Path(os.environ.get("STACK_PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_USER = "stack"  # the database role every service uses
OS_USER = "postgres"  # initdb and the server refuse to run as root; Debian's package adds this user
MLFLOW_BUCKET = "mlflow-artifacts"
DVC_BUCKET = "dvc-store"
DVC_PREFIX = "clothing-classifier"
DVC_REMOTE_NAME = "s3"
STATE_FILE = "stack.json"
ENV_FILE = "env.sh"
SECRET_KEYS = ("AWS_SECRET_ACCESS_KEY",)
# Never phone home.
QUIET_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
}
# Stop order: the worker first (no flow run starts while the rest goes), then the servers at once,
# PostgreSQL last.
STOP_ORDER = (("worker",), ("prefect", "mlflow", "s3"))


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
            "MLFLOW_TRACKING_URI": self.mlflow_url,
            "PREFECT_API_URL": self.prefect_api_url,
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
    pids = [stack.pids.pop(name) for name in names if name in stack.pids]
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
            f"PostgreSQL is not installed ({PG_BIN}/initdb missing); run `make postgres-deps` "
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
    for database in ("mlflow", "prefect"):
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
    argv = [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(stack.s3_port)]
    _spawn(stack, "s3", argv, stack.server_env())


def create_buckets(stack: Stack) -> None:
    _wait(stack, "s3", lambda: _http_ok(f"{stack.s3_url}/moto-api/"), 60)
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
    argv += ["--host", "127.0.0.1", "--port", str(stack.mlflow_port), "--workers", "1"]
    _spawn(stack, "mlflow", argv, stack.server_env())


def wait_mlflow(stack: Stack, timeout: float = 120) -> None:
    _wait(stack, "mlflow", lambda: _http_ok(f"{stack.mlflow_url}/health"), timeout)


def ensure_experiment(stack: Stack) -> None:
    """Create the experiment on the server, so runs store artefacts through its proxy (S3)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=stack.mlflow_url)
    if client.get_experiment_by_name(stack.experiment_name) is None:
        client.create_experiment(stack.experiment_name)


def start_prefect(stack: Stack, ui: bool) -> None:
    home = stack.root / "prefect-home"
    home.mkdir(exist_ok=True)
    env = {
        **stack.server_env(),
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": stack.prefect_api_url,
        "PREFECT_API_DATABASE_CONNECTION_URL": stack.pg_url("prefect", "postgresql+asyncpg"),
        "PREFECT_SERVER_UI_ENABLED": "true" if ui else "false",
    }
    argv = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1"]
    _spawn(stack, "prefect", [*argv, "--port", str(stack.prefect_port)], env)


def wait_prefect(stack: Stack, timeout: float = 180) -> None:
    _wait(stack, "prefect", lambda: _http_ok(f"{stack.prefect_api_url}/health"), timeout)
    import httpx

    pool = {"name": stack.work_pool, "type": "process"}
    response = httpx.post(f"{stack.prefect_api_url}/work_pools/", json=pool, timeout=30)
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
        workers = httpx.post(url, json={}, timeout=10).json()
        return any(worker.get("status") == "ONLINE" for worker in workers)

    _wait(stack, "worker", online, timeout)


# --- the whole stack --------------------------------------------------------------------------


def _new_stack(root: Path) -> Stack:
    sys.path.insert(0, str(REPO_ROOT))
    from src.config import load_config

    cfg = load_config()
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o700)  # the password file and the dummy keys live here
    return Stack(
        root=root.resolve(),
        pg_dir=Path(tempfile.mkdtemp(prefix="stack-pg-")),
        pg_port=free_port(),
        s3_port=free_port(),
        mlflow_port=free_port(),
        prefect_port=free_port(),
        work_pool=cfg.flow.work_pool,
        experiment_name=cfg.mlflow.experiment_name,
        aws_key_id="stack-" + secrets.token_hex(4),
        aws_secret=secrets.token_urlsafe(24),
    )


def up(
    root: Path, *, ui: bool = True, worker_env: dict[str, str] | None = None, worker: bool = True
) -> Stack:
    """Start every service (stopping what started if one fails) and return where they listen."""
    if (root / STATE_FILE).is_file():
        raise StackError(f"{root} holds a stack already; stop it first (`make stack-down`).")
    stack = _new_stack(root)
    password = secrets.token_urlsafe(24)
    stack.passfile.write_text(f"127.0.0.1:{stack.pg_port}:*:{PG_USER}:{password}\n")
    stack.passfile.chmod(0o600)
    stack.save()
    try:
        start_s3(stack)  # in the background while PostgreSQL initialises
        start_postgres(stack, password)
        start_mlflow(stack)
        start_prefect(stack, ui)
        create_buckets(stack)
        wait_mlflow(stack)
        ensure_experiment(stack)
        wait_prefect(stack)
        if worker:
            start_worker(stack, worker_env)
            wait_worker(stack)
    except BaseException:
        down(stack)
        raise
    write_env_file(stack)
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
    for secret_file in (stack.passfile, stack.root / ENV_FILE, stack.root / STATE_FILE):
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
            f"  MLflow      {stack.mlflow_url}",
            f"  Prefect     {stack.prefect_api_url.removesuffix('/api')}   "
            f"(worker on pool {stack.work_pool!r})",
            f"  logs        {stack.root}/*.log",
            "Environment for clients (secrets are in the file, not shown here):",
            *(f"  export {key}={value}" for key, value in shown.items()),
            f"  source {stack.root / ENV_FILE}",
            "Then, from the repository root:",
            "  prefect --no-prompt deploy --prefect-file deployments/prefect.yaml --all",
            '  prefect deployment run train-flow/weekly --param params=\'{"profile": "smoke"}\'',
            "  make serve            # the API follows the MLflow server's Production model",
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
    except StackError as exc:
        print(f"stack {args.action}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
