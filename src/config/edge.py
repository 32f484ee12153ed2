"""The production edge (env prefix ``EDGE_``): the nginx reverse proxy in front of the API
replicas and the Prometheus server that scrapes them (deployments/edge.py renders both)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field


class EdgeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    env_prefix: ClassVar[str] = "EDGE_"

    # API replicas `make stack` starts behind the proxy.
    replicas: int = Field(ge=1, le=16)
    # Slow clients: the whole header, a gap in the body, a gap in sending the answer, an idle
    # keep-alive connection. Past each the proxy closes the connection.
    client_header_timeout_s: int = Field(ge=1)
    client_body_timeout_s: int = Field(ge=1)
    send_timeout_s: int = Field(ge=1)
    keepalive_timeout_s: int = Field(ge=1)
    # One header line (or the request line) may not exceed this; past it the proxy answers 431.
    header_line_bytes: int = Field(ge=1024)
    # Connections and request rate per client address (limit_conn, limit_req with a burst).
    max_connections_per_client: int = Field(ge=1)
    requests_per_second_per_client: int = Field(ge=1)
    request_burst: int = Field(ge=0)
    # Upstream: how long a replica may take to answer; passive health check (a replica that
    # failed max_fails times is left out for fail_timeout).
    upstream_read_timeout_s: int = Field(ge=1)
    upstream_max_fails: int = Field(ge=1)
    upstream_fail_timeout_s: int = Field(ge=1)
    # Prometheus: scrape and rule evaluation interval, and how long samples are kept.
    scrape_interval_s: float = Field(gt=0)
    evaluation_interval_s: float = Field(gt=0)
    retention: str
