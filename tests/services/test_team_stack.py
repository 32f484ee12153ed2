"""Scale-out on real services: PostgreSQL, an S3 store (moto), the MLflow and Prefect servers and a
process worker, all started by deployments/stack.py (what `make stack` runs) on 127.0.0.1.

The smoke train-flow runs as a Prefect deployment; the tests then look where everything landed."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import mlflow
import pytest
import yaml

from deployments.stack import (
    DVC_BUCKET,
    DVC_PREFIX,
    MLFLOW_BUCKET,
    psql,
    start_mlflow,
    stop_service,
    wait_mlflow,
)
from src import registry
from src.data.versioning import folder_md5, read_dvc_md5
from src.labels import CLASS_NAMES
from src.model_io import log_classifier, log_onnx
from src.monitoring.store import PredictionStore
from tests.helpers.api import (
    Server,
    constant_model,
    encode,
    sample_images,
    start_server,
    stop_server,
    wait_until,
)
from tests.helpers.flows import BIN
from tests.helpers.services import MODEL_NAME, DeploymentRun, Team

pytestmark = [pytest.mark.services, pytest.mark.timeout(600)]


def bucket_keys(team: Team, bucket: str, prefix: str = "") -> list[str]:
    pages = team.stack.s3_client().get_paginator("list_objects_v2")
    return [
        item["Key"]
        for page in pages.paginate(Bucket=bucket, Prefix=prefix)
        for item in page.get("Contents", [])
    ]


def test_flow_run_and_model_registry_live_in_postgres(
    team: Team, deployment_run: DeploymentRun
) -> None:
    flow_run_id = deployment_run.flow_run["id"]
    [(state, params)] = psql(
        team.stack,
        "prefect",
        f"SELECT state_type, parameters FROM flow_run WHERE id = '{flow_run_id}'",
    )
    assert state == "COMPLETED", f"Prefect's database records the flow run as {state}"
    assert '"profile": "smoke"' in params, params
    runs = psql(team.stack, "mlflow", "SELECT run_uuid, status FROM runs")
    assert any(status == "FINISHED" for _, status in runs), (
        f"no finished run in MLflow's DB: {runs}"
    )
    versions = psql(
        team.stack,
        "mlflow",
        f"SELECT version, current_stage, run_id FROM model_versions WHERE name = '{MODEL_NAME}'",
    )
    assert [(v, stage) for v, stage, _ in versions] == [("1", "Production")], versions
    assert versions[0][2] in {run_id for run_id, _ in runs}, "the version's run is not in the DB"
    aliases = psql(
        team.stack,
        "mlflow",
        f"SELECT alias, version FROM registered_model_aliases WHERE name = '{MODEL_NAME}'",
    )
    assert aliases == [("production", "1")], aliases


def test_model_artifacts_are_in_the_mlflow_bucket(
    team: Team, deployment_run: DeploymentRun
) -> None:
    keys = bucket_keys(team, MLFLOW_BUCKET)
    model_files = [key for key in keys if "/models/" in key]
    assert any(key.endswith("/MLmodel") for key in model_files), (
        f"no logged model in s3://{MLFLOW_BUCKET} (keys: {keys[:20]}); did the experiment get "
        "created on the server (deployments.stack.ensure_experiment)?"
    )
    assert any(key.endswith("/model.onnx") for key in model_files), f"no ONNX: {model_files}"
    # Nothing was written beside the flow's project: artefacts went through the server's proxy.
    assert not (team.project / "mlartifacts").exists(), "the run wrote artefacts locally"


def test_data_is_in_the_dvc_bucket_and_a_fresh_clone_pulls_it(
    team: Team, deployment_run: DeploymentRun, tmp_path: Path
) -> None:
    md5 = read_dvc_md5(team.project / "data.dvc")
    assert md5 is not None and md5.endswith(".dir")
    keys = bucket_keys(team, DVC_BUCKET, f"{DVC_PREFIX}/")
    listing = f"{DVC_PREFIX}/files/md5/{md5[:2]}/{md5[2:]}"
    assert listing in keys, f"{listing} (data.dvc) is not in s3://{DVC_BUCKET}: {keys}"
    assert len(keys) >= 3, f"the listing and the data files should be in the bucket: {keys}"

    # A fresh clone: the committed files only (no cache, no .dvc/config.local), then the
    # documented remote set-up and `dvc pull`.
    clone = tmp_path / "clone"
    clone.mkdir()
    shutil.copy(team.project / "data.dvc", clone / "data.dvc")
    stack = team.stack
    env = {**os.environ, **stack.aws_env(), "DVC_NO_ANALYTICS": "1"}
    for args in (
        ["init", "--no-scm"],
        ["remote", "add", "--local", "-d", "s3", stack.dvc_remote_url],
        ["remote", "modify", "--local", "s3", "endpointurl", stack.s3_url],
        ["pull"],
    ):
        result = subprocess.run(
            [str(BIN / "dvc"), *args],
            cwd=clone,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, f"dvc {' '.join(args)}:\n{result.stdout}{result.stderr}"
    assert folder_md5(clone / "data") == md5, "the pulled data differ from what data.dvc pins"
    # The flow wrote the endpoint from the settings into its own (git-ignored) local config.
    local = (team.project / ".dvc" / "config.local").read_text()
    assert stack.s3_url in local and stack.dvc_remote_url in local
    assert yaml.safe_load((team.project / "data.dvc").read_text())["outs"][0]["md5"] == md5


# --- two API replicas on the MLflow server ------------------------------------------------------

POLL_S = 3.0  # the replicas' registry poll interval
OUTAGE_S = 10.0  # how long the MLflow server stays down while the replicas serve
DENIED = r"InvalidAccessKeyId|SignatureDoesNotMatch|AccessDenied"
# Generous deadlines (conditions, not speed targets): a replica notices a promotion at its next
# poll; the figures are printed, and benchmarks/ measures serving speed.
SWITCH_DEADLINE_S = 120.0


class Traffic(threading.Thread):
    """A bounded client loop: /predict on every replica in turn, counting what failed."""

    def __init__(self, urls: list[str], max_requests: int = 4000, max_seconds: float = 400) -> None:
        super().__init__(daemon=True)
        self.urls, self.max_requests, self.max_seconds = urls, max_requests, max_seconds
        self.stop = threading.Event()
        # (time, replica, version stamped, label computed, prediction id)
        self.answers: list[tuple[float, str, str, str, str]] = []
        self.failures: list[str] = []
        self.image = IMAGE

    def run(self) -> None:
        started = time.monotonic()
        with httpx.Client(timeout=30) as client:
            while (
                not self.stop.is_set()
                and len(self.answers) + len(self.failures) < self.max_requests
            ):
                if time.monotonic() - started > self.max_seconds:
                    break
                for url in self.urls:
                    files = {"file": ("garment.png", self.image, "image/png")}
                    try:
                        response = client.post(f"{url}/predict", files=files)
                    except httpx.HTTPError as exc:
                        self.failures.append(f"{url}: {type(exc).__name__}: {exc}")
                        continue
                    if response.status_code != 200:
                        self.failures.append(f"{url}: {response.status_code} {response.text[:200]}")
                    else:
                        body = response.json()
                        self.answers.append(
                            (
                                time.monotonic(),
                                url,
                                str(body["model_version"]),
                                str(body["label"]),
                                str(body["prediction_id"]),
                            )
                        )
                time.sleep(0.05)

    def finish(self) -> None:
        self.stop.set()
        self.join(timeout=60)


IMAGE = encode(sample_images(1)[0])


def served_answer(url: str) -> tuple[str, str] | None:
    """(version stamped, label computed) of one /predict answer, None if none came."""
    try:
        response = httpx.post(
            f"{url}/predict", files={"file": ("garment.png", IMAGE, "image/png")}, timeout=10
        )
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    body = response.json()
    return str(body["model_version"]), str(body["label"])


def promote_constant_model(team: Team, class_id: int) -> str:
    """Log a model that answers ``class_id`` for every image into a new run on the MLflow server
    (ONNX included, through the artefact proxy), and pass it through the gate and promotion
    steps the train-flow uses (src/registry.py): the label of an answer tells which version
    computed it."""
    uri = team.stack.mlflow_url
    client = registry.get_client(uri)
    first = client.get_model_version(MODEL_NAME, "1")
    experiment_id = client.get_run(str(first.run_id)).info.experiment_id
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        with mlflow.start_run(experiment_id=experiment_id) as run:
            info = log_classifier(constant_model(class_id))
        log_onnx(client, run.info.run_id, constant_model(class_id))
        # The logged model's URI, as the train-flow registers it.
        new = registry.register_candidate(
            client, MODEL_NAME, model_uri=info.model_uri, run_id=run.info.run_id
        )
    finally:
        mlflow.set_tracking_uri(previous)
    version = str(new.version)
    registry.record_gate_decision(
        client, MODEL_NAME, version, passed=True, reasons=[f"services test: answers {class_id}"]
    )
    registry.promote(client, MODEL_NAME, version)
    return version


def seconds_until_all_answer(urls: list[str], version: str, label: str) -> float:
    """Until every replica's answer is computed by the model that answers ``label`` and stamped
    ``version``."""
    started = time.monotonic()
    wait_until(
        lambda: all(served_answer(url) == (version, label) for url in urls),
        SWITCH_DEADLINE_S,
        0.1,
    )
    return time.monotonic() - started


def start_replicas(team: Team, tmp_path: Path, count: int = 2) -> list[Server]:
    """``count`` uvicorn processes at once, one prediction log (sqlite in ``tmp_path``) for all;
    if one fails to start, the others are stopped."""
    env = team.stack.mlflow_env()
    tracking_uri = env.pop("MLFLOW_TRACKING_URI")
    credentials = env  # the MLflow server's user and password

    def start() -> Server:
        return start_server(
            tmp_path,
            tracking_uri,
            MODEL_NAME,
            SERVE_POLL_INTERVAL_S=str(POLL_S),
            SERVE_RETRY_INTERVAL_S="1",
            MONITOR_STORE_URL=shared_log_url(tmp_path),
            **credentials,
        )

    with ThreadPoolExecutor(count) as pool:
        futures = [pool.submit(start) for _ in range(count)]
    started = [future.result() for future in futures if future.exception() is None]
    for future in futures:
        if future.exception() is not None:
            for server in started:
                stop_server(server)
            future.result()
    return started


def shared_log_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'shared-predictions.db'}"


def ready_failures_while_down(urls: list[str], seconds: float) -> list[str]:
    """Poll /ready on every replica for ``seconds``; return the answers that were not 200."""
    failures: list[str] = []
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        for url in urls:
            try:
                status = httpx.get(f"{url}/ready", timeout=5).status_code
            except httpx.HTTPError as exc:
                failures.append(f"{url}: {type(exc).__name__}")
                continue
            if status != 200:
                failures.append(f"{url}: {status}")
        time.sleep(0.5)
    return failures


def logged_answers(tmp_path: Path, ids: set[str]) -> dict[str, tuple[str, str]]:
    """prediction id -> (version, label) in the shared log, once every id in ``ids`` is there."""
    store = PredictionStore(shared_log_url(tmp_path))
    try:

        def all_there() -> dict[str, tuple[str, str]] | None:
            rows = store.recent_predictions(0)
            logged = {r["prediction_id"]: (r["model_version"], r["label"]) for r in rows}
            assert len(logged) == len(rows), "a prediction id is in the log twice"
            return logged if ids <= set(logged) else None

        return wait_until(all_there, SWITCH_DEADLINE_S, 0.5)
    finally:
        store.close()


def test_two_replicas_follow_promotions_and_ride_out_an_mlflow_outage(
    team: Team, deployment_run: DeploymentRun, tmp_path: Path
) -> None:
    stack = team.stack
    replicas = start_replicas(team, tmp_path)
    urls = [replica.url for replica in replicas]
    traffic = Traffic(urls)
    try:
        first = [served_answer(url) for url in urls]
        assert [answer and answer[0] for answer in first] == ["1", "1"], first
        v1_label = str(first[0] and first[0][1])
        # Two models that answer labels v1 does not give for this image.
        class_ids = [c for c in (7, 8, 0, 1) if CLASS_NAMES[c] != v1_label][:2]
        labels = [CLASS_NAMES[c] for c in class_ids]
        traffic.start()
        # 1. A promotion reaches both replicas: their answers come from the new model.
        v2 = promote_constant_model(team, class_ids[0])
        switch_s = seconds_until_all_answer(urls, v2, labels[0])
        # 2. The MLflow server goes away: both keep serving and stay ready.
        stop_service(stack, "mlflow")
        outage = (time.monotonic(), time.monotonic() + OUTAGE_S)
        not_ready = ready_failures_while_down(urls, OUTAGE_S)
        start_mlflow(stack)
        wait_mlflow(stack)
        # 3. Back: both notice the next promotion again.
        v3 = promote_constant_model(team, class_ids[1])
        recover_s = seconds_until_all_answer(urls, v3, labels[1])
    finally:
        traffic.finish()
        for replica in replicas:
            stop_server(replica)
    assert not_ready == [], f"/ready failed while MLflow was down: {not_ready[:10]}"
    assert traffic.failures == [], f"failed requests: {traffic.failures[:10]}"
    label_of = {"1": v1_label, v2: labels[0], v3: labels[1]}
    wrong = [(v, label) for _, _, v, label, _ in traffic.answers if label_of.get(v) != label]
    assert not wrong, f"answers stamped with a version another model computed: {wrong[:5]}"
    during = [(url, v) for t, url, v, _, _ in traffic.answers if outage[0] <= t <= outage[1]]
    for url in urls:  # each replica answered, with the promoted model, while MLflow was down
        served = {v for u, v in during if u == url}
        assert served == {v2}, f"{url} served {served or 'nothing'} during the outage, not v{v2}"
    check_the_shared_log(tmp_path, traffic, urls)
    print(
        f"switch to v{v2}: {switch_s:.1f} s, to v{v3} after the outage: {recover_s:.1f} s; "
        f"{len(traffic.answers)} answers, {len(during)} during the {OUTAGE_S:.0f} s outage, "
        f"deployment run {deployment_run.seconds:.0f} s"
    )


def check_the_shared_log(tmp_path: Path, traffic: Traffic, urls: list[str]) -> None:
    """Both replicas wrote into the one sqlite prediction log: every answer they gave is there
    once, with the version and label it was given."""
    given = {pid: (v, label) for _, _, v, label, pid in traffic.answers}
    assert len(given) == len(traffic.answers), "two answers share a prediction id"
    logged = logged_answers(tmp_path, set(given))
    assert {pid: logged[pid] for pid in given} == given
    for url in urls:
        assert any(u == url for _, u, _, _, _ in traffic.answers), f"{url} answered nothing"


# --- credentials --------------------------------------------------------------------------------


def test_mlflow_and_prefect_refuse_clients_without_credentials(team: Team) -> None:
    stack = team.stack
    search = f"{stack.mlflow_url}/api/2.0/mlflow/registered-models/search"
    assert httpx.get(search).status_code == 401
    assert httpx.get(search, auth=("stack", "wrong-password")).status_code == 401
    assert httpx.get(search, auth=("stack", stack.mlflow_password)).status_code == 200
    flow_runs = f"{stack.prefect_api_url}/flow_runs/filter"
    assert httpx.post(flow_runs, json={}).status_code == 401
    wrong = {"Authorization": "Basic " + base64.b64encode(b"stack:wrong").decode()}
    assert httpx.post(flow_runs, json={}, headers=wrong).status_code == 401
    assert httpx.post(flow_runs, json={}, headers=stack.prefect_headers()).status_code == 200


def test_s3_refuses_wrong_keys(team: Team, deployment_run: DeploymentRun) -> None:
    import boto3
    from botocore.exceptions import ClientError

    stack = team.stack
    # Any served model file will do (the stack's registry holds several by now).
    onnx_key = next(k for k in bucket_keys(team, MLFLOW_BUCKET) if k.endswith("/model.onnx"))
    original = stack.s3_client().get_object(Bucket=MLFLOW_BUCKET, Key=onnx_key)["Body"].read()
    for key_id, secret in (("AKIAWRONGKEY0000", "wrong"), (stack.aws_key_id, "wrong-secret")):
        intruder = boto3.client(
            "s3",
            endpoint_url=stack.s3_url,
            aws_access_key_id=key_id,
            aws_secret_access_key=secret,
            region_name="us-east-1",
        )
        with pytest.raises(ClientError, match=DENIED):
            intruder.list_objects_v2(Bucket=MLFLOW_BUCKET)
        with pytest.raises(ClientError, match=DENIED):
            intruder.put_object(Bucket=MLFLOW_BUCKET, Key=onnx_key, Body=b"overwritten")
    after = stack.s3_client().get_object(Bucket=MLFLOW_BUCKET, Key=onnx_key)["Body"].read()
    assert after == original, "a client with wrong keys changed the served ONNX file"


# --- the stack's own edge ---------------------------------------------------------------------


def test_the_stack_serves_production_through_its_proxy_and_prometheus_scrapes_it(
    team: Team, deployment_run: DeploymentRun
) -> None:
    stack = team.stack
    # The replicas poll the MLflow server (through its credential check) for Production.
    wait_until(lambda: httpx.get(f"{stack.proxy_url}/ready").status_code == 200, 90, 0.5)
    answer = httpx.post(
        f"{stack.proxy_url}/predict",
        files={"file": ("g.png", encode(sample_images(1)[0]), "image/png")},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text[:300]
    assert httpx.get(f"{stack.proxy_url}/metrics").status_code == 404

    def scraped() -> bool:
        targets = httpx.get(f"{stack.prometheus_url}/api/v1/targets", timeout=5).json()
        active = targets["data"]["activeTargets"]
        return len(active) == len(stack.api_ports) and all(t["health"] == "up" for t in active)

    wait_until(scraped, 90, 0.5)
