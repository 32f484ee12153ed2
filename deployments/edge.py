"""The production edge's configuration files: nginx in front of the API replicas (and in front of
MLflow, as its credential check) and Prometheus scraping the replicas with the alert rules.

Only rendering lives here; :mod:`deployments.stack` starts the processes. Settings come from
``configs/edge.yaml`` (``EDGE_*``) and ``configs/serve.yaml``; ports from the caller.
"""

from __future__ import annotations

import base64
import hashlib
import os
import pwd
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from src.config import EdgeConfig, ServeConfig

DEPLOYMENTS = Path(__file__).resolve().parent
NGINX_TEMPLATE = DEPLOYMENTS / "nginx.conf.template"
PROMETHEUS_DIR = DEPLOYMENTS / "prometheus"
ALERT_RULES = PROMETHEUS_DIR / "alerts.yml"
API_JOB = "clothing-classifier-api"
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


class EdgeError(RuntimeError):
    """The edge could not be configured (a missing binary or template value)."""


def binary(name: str) -> str:
    """Path of a Debian-packaged binary (nginx lives in /usr/sbin, off some users' PATH)."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if found is None:
        raise EdgeError(
            f"{name} is not installed; run `make edge-deps` (Debian packages nginx, prometheus, wrk)."
        )
    return found


def render(template: str, values: dict[str, object]) -> str:
    """Fill ``{{name}}`` placeholders; a placeholder without a value is an error, not a blank."""
    missing = sorted(set(_PLACEHOLDER.findall(template)) - set(values))
    if missing:
        raise EdgeError(f"no value for {missing} in {NGINX_TEMPLATE.name}")
    return _PLACEHOLDER.sub(lambda match: str(values[match.group(1)]), template)


@dataclass(frozen=True)
class MlflowFront:
    """nginx checks MLflow clients' basic-auth credentials, then passes them to the server."""

    public_port: int
    internal_port: int
    htpasswd: Path


def mlflow_server_block(front: MlflowFront, prefix: Path) -> str:
    upstream = f"http://127.0.0.1:{front.internal_port}"
    return f"""
    server {{
        listen 127.0.0.1:{front.public_port};
        access_log {prefix}/mlflow-access.log edge;
        # Artefacts of any size stream through to the server's artefact proxy.
        client_max_body_size 0;
        proxy_request_buffering off;
        proxy_buffering off;
        proxy_read_timeout 300s;
        proxy_send_timeout 300s;
        proxy_http_version 1.1;
        proxy_set_header Host $http_host;
        location = /health {{
            proxy_pass {upstream};
        }}
        location / {{
            auth_basic "MLflow";
            auth_basic_user_file {front.htpasswd};
            proxy_pass {upstream};
        }}
    }}
"""


def nginx_config(
    edge: EdgeConfig,
    serve: ServeConfig,
    *,
    prefix: Path,
    public_port: int,
    api_ports: list[int],
    mlflow: MlflowFront | None = None,
) -> str:
    servers = "\n".join(
        f"        server 127.0.0.1:{port} max_fails={edge.upstream_max_fails} "
        f"fail_timeout={edge.upstream_fail_timeout_s}s;"
        for port in api_ports
    )
    # As root, nginx's workers would drop to `nobody`; they run as the stack's own user instead,
    # like every other service of the stack.
    user = pwd.getpwuid(os.geteuid()).pw_name
    values: dict[str, object] = {
        "user_line": f"user {user};" if os.geteuid() == 0 else "",
        "prefix": prefix,
        "public_port": public_port,
        "api_servers": servers,
        "upstream_keepalive_s": max(1, int(serve.keep_alive_timeout_s) - 1),
        "max_image_body": serve.max_image_request_bytes,
        "max_batch_body": serve.max_batch_bytes,
        "mlflow_server": mlflow_server_block(mlflow, prefix) if mlflow else "",
        "client_header_timeout_s": edge.client_header_timeout_s,
        "client_body_timeout_s": edge.client_body_timeout_s,
        "send_timeout_s": edge.send_timeout_s,
        "keepalive_timeout_s": edge.keepalive_timeout_s,
        "header_line_bytes": edge.header_line_bytes,
        "max_connections_per_client": edge.max_connections_per_client,
        "requests_per_second_per_client": edge.requests_per_second_per_client,
        "request_burst": edge.request_burst,
        "upstream_read_timeout_s": edge.upstream_read_timeout_s,
    }
    return render(NGINX_TEMPLATE.read_text(), values)


def write_nginx(prefix: Path, text: str) -> Path:
    """The rendered file and the folders nginx writes to, under ``prefix``."""
    (prefix / "tmp").mkdir(parents=True, exist_ok=True)
    path = prefix / "nginx.conf"
    path.write_text(text)
    return path


def nginx_argv(conf: Path, prefix: Path) -> list[str]:
    # -e: the startup error log, before the configuration names its own.
    return [binary("nginx"), "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(conf)]


def htpasswd_line(user: str, password: str) -> str:
    """One ``{SSHA}`` entry (salted SHA-1), a scheme nginx's auth_basic reads."""
    salt = secrets.token_bytes(8)
    digest = hashlib.sha1(password.encode() + salt).digest()
    return f"{user}:{{SSHA}}{base64.b64encode(digest + salt).decode()}\n"


def _duration(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"


def prometheus_config(edge: EdgeConfig, api_ports: list[int], rules: Path = ALERT_RULES) -> str:
    targets = ", ".join(f'"127.0.0.1:{port}"' for port in api_ports)
    return f"""# Rendered by deployments/edge.py from configs/edge.yaml.
global:
  scrape_interval: {_duration(edge.scrape_interval_s)}
  evaluation_interval: {_duration(edge.evaluation_interval_s)}
  scrape_timeout: {_duration(min(10.0, edge.scrape_interval_s))}
rule_files:
  - {rules}
scrape_configs:
  - job_name: {API_JOB}
    metrics_path: /metrics
    static_configs:
      - targets: [{targets}]
"""


def prometheus_argv(conf: Path, data: Path, port: int, edge: EdgeConfig) -> list[str]:
    return [
        binary("prometheus"),
        f"--config.file={conf}",
        f"--storage.tsdb.path={data}",
        f"--storage.tsdb.retention.time={edge.retention}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
