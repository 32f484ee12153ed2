"""deployments/stack.py leaves nothing behind when a start fails half-way (the team stack and\nthe edge alone)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from deployments import stack as stack_module
from deployments.stack import Stack, StackError

pytestmark = pytest.mark.services


def test_a_failed_start_stops_what_already_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[Stack, int]] = []

    def broken_postgres(stack: Stack, password: str) -> None:
        # The S3 server (started first) answers before the simulated failure.
        moto_up = lambda: stack_module._http_ok(f"{stack.s3_url}/moto-api/")  # noqa: E731
        stack_module._wait(stack, "s3", moto_up, 60)
        seen.append((stack, stack.pids["s3"]))
        raise StackError("PostgreSQL could not start (simulated)")

    monkeypatch.setattr(stack_module, "start_postgres", broken_postgres)
    with pytest.raises(StackError, match="simulated"):
        stack_module.up(tmp_path / "stack", ui=False)
    [(stack, s3_pid)] = seen
    with pytest.raises(ProcessLookupError):  # no process of the S3 server's group is left
        os.killpg(s3_pid, 0)
    assert stack.pids == {}, f"services still recorded as running: {stack.pids}"
    assert not stack.pg_dir.exists(), "the database folder was left behind"
    assert not (stack.root / "stack.json").exists(), "the state file was left behind"
    assert not stack.passfile.exists(), "the password file was left behind"


def test_a_failed_edge_start_stops_the_proxy_and_the_replicas(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[dict[str, int]] = []

    def broken_prometheus(stack: Stack, settings: object = None) -> None:
        for index in range(len(stack.api_ports)):  # the replicas answer before the failure
            stack_module.wait_replica(stack, index)
        stack_module.wait_proxy(stack)
        seen.append(dict(stack.pids))
        raise StackError("Prometheus could not start (simulated)")

    monkeypatch.setattr(stack_module, "start_prometheus", broken_prometheus)
    registry = f"sqlite:///{tmp_path}/no-registry.db"
    with pytest.raises(StackError, match="simulated"):
        stack_module.up_edge(tmp_path / "edge", registry, replicas=2)
    [pids] = seen
    assert set(pids) == {"proxy", "api-1", "api-2"}, pids
    for name, pid in pids.items():
        with pytest.raises(ProcessLookupError):  # no process of its group is left
            os.killpg(pid, 0)
            print(f"{name} is still running")
    assert not (tmp_path / "edge" / "stack.json").exists(), "the state file was left behind"
