"""Benchmark the HTTP API against a real uvicorn process on 127.0.0.1.

Measures, on the same real Fashion-MNIST images (PNG-encoded):

* cold start: process spawn → ``/health`` 200 and → ``/ready`` 200 (Production already in the
  registry), and Production promoted → ``/ready`` 200 (server already up, waiting for a model);
* ``POST /predict`` and ``POST /predict/batch`` at concurrency 1, 8 and 32: p50/p99 latency and
  throughput (closed loop, keep-alive connections, for ``--duration`` seconds each);
* the model's raw in-process forward on the same images (already preprocessed tensors): per
  image (batch 1) and batched, with 1 torch thread and with all cores.

The model is the registry's Production model when ``--tracking-uri`` names a registry that has
one; otherwise a ResNet-20-like net (torchvision ``BasicBlock``, widths 16-32-64, 3 blocks per
stage; random weights: the same compute as a trained one) is logged with
``src.model_io.log_classifier`` into a temporary sqlite registry.

    python -m benchmarks.bench_api                    # ~2 minutes
    python -m benchmarks.bench_api --duration 3 --concurrency 1 8 32 --batch-size 64

Results: a markdown table on stdout and JSON in ``outputs/benchmarks/bench_api.json``.
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import io
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_IMAGES = REPO_ROOT.parent / "shared" / "fashion-mnist" / "train-images-idx3-ubyte.gz"


# --- model and data ---------------------------------------------------------------------------
def resnet20() -> Any:
    """CIFAR-style ResNet-20 for 1×28×28 inputs (~0.27 M parameters)."""
    from torch import nn
    from torchvision.models.resnet import BasicBlock

    layers: list[nn.Module] = [
        nn.Conv2d(1, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(inplace=True),
    ]
    inplanes = 16
    for stage, planes in enumerate((16, 32, 64)):
        for block in range(3):
            stride = 2 if stage > 0 and block == 0 else 1
            downsample = None
            if stride != 1 or inplanes != planes:
                downsample = nn.Sequential(
                    nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False),
                    nn.BatchNorm2d(planes),
                )
            layers.append(BasicBlock(inplanes, planes, stride, downsample))
            inplanes = planes
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)]
    return nn.Sequential(*layers).eval()


def load_images(count: int) -> tuple[np.ndarray, str]:
    """``count`` real Fashion-MNIST images (uint8 N×28×28), or synthetic ones without the data."""
    if SHARED_IMAGES.is_file():
        with gzip.open(SHARED_IMAGES, "rb") as handle:
            raw = handle.read(16 + count * 28 * 28)
        images = np.frombuffer(raw[16:], dtype=np.uint8).reshape(-1, 28, 28)
        return images[:count].copy(), f"Fashion-MNIST train images ({SHARED_IMAGES.name})"
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (count, 28, 28), dtype=np.uint8), "synthetic noise images"


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def multipart(field_name: str, blobs: list[bytes]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field_name}"; '
            f'filename="{i}.png"\r\nContent-Type: image/png\r\n\r\n'
        ).encode()
        + blob
        + b"\r\n"
        for i, blob in enumerate(blobs)
    ]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), (
        f"multipart/form-data; boundary={boundary}"
    )


# --- registry and server ------------------------------------------------------------------------
@dataclass
class BenchRegistry:
    tracking_uri: str
    name: str
    source: str | None = None
    run_id: str | None = None


def make_registry(workdir: Path) -> BenchRegistry:
    import mlflow

    from src.model_io import log_classifier

    uri = f"sqlite:///{workdir}/mlflow.db"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        experiment = mlflow.create_experiment("bench-api", (workdir / "art").as_uri())
        with mlflow.start_run(experiment_id=experiment) as run:
            mlflow.log_param("architecture", "resnet20 16-32-64 (random weights)")
            info = log_classifier(resnet20())
        source = mlflow.get_logged_model(info.model_id).artifact_location
    finally:
        mlflow.set_tracking_uri(previous)
    registry = BenchRegistry(uri, "bench-resnet20", source, run.info.run_id)
    promote(registry, register(registry))
    return registry


def _client(registry: BenchRegistry) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=registry.tracking_uri, registry_uri=registry.tracking_uri)


def register(registry: BenchRegistry, name: str | None = None) -> str:
    client = _client(registry)
    name = name or registry.name
    try:
        client.get_registered_model(name)
    except Exception:
        client.create_registered_model(name)
    mv = client.create_model_version(name, source=registry.source, run_id=registry.run_id)
    return str(mv.version)


def promote(registry: BenchRegistry, version: str, name: str | None = None) -> None:
    client = _client(registry)
    name = name or registry.name
    client.set_registered_model_alias(name, "production", version)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        client.transition_model_version_stage(
            name, version, "Production", archive_existing_versions=True
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get_status(port: int, path: str) -> int | None:
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        connection.request("GET", path)
        status = connection.getresponse().status
        connection.close()
        return status
    except OSError:
        return None


def wait_for(port: int, path: str, process: subprocess.Popen[bytes], timeout: float) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if process.poll() is not None:
            raise RuntimeError(f"uvicorn exited with {process.returncode}")
        if get_status(port, path) == 200:
            return time.perf_counter()
        time.sleep(0.02)
    raise TimeoutError(f"{path} not 200 within {timeout} s")


@dataclass
class Server:
    port: int
    process: subprocess.Popen[bytes]
    spawned_at: float

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def start_server(registry: BenchRegistry, name: str, log_path: Path, env: dict[str, str]) -> Server:
    port = free_port()
    full_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("SERVE_", "MLFLOW_"))},
        "MLFLOW_TRACKING_URI": registry.tracking_uri,
        "MLFLOW_REGISTERED_MODEL_NAME": name,
        "SERVE_POLL_INTERVAL_S": "1",
        "SERVE_RETRY_INTERVAL_S": "0.25",
        "SERVE_JSON_LOGS": "true",
        **env,
    }
    command = [sys.executable, "-m", "uvicorn", "src.api:app", "--host", "127.0.0.1"]
    with log_path.open("ab") as log:
        spawned = time.perf_counter()
        process = subprocess.Popen(
            [*command, "--port", str(port)],
            cwd=REPO_ROOT,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return Server(port, process, spawned)


# --- load generation ----------------------------------------------------------------------------
@dataclass
class LoadResult:
    endpoint: str
    concurrency: int
    images_per_request: int
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    requests_per_s: float
    images_per_s: float
    server_cpu_ms_per_image: float


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return float(np.percentile(np.asarray(values), q))


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc), 0 where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_load(
    server_pid: int,
    port: int,
    path: str,
    bodies: list[tuple[bytes, str]],
    images_per_request: int,
    concurrency: int,
    duration: float,
    warmup: float = 1.0,
) -> LoadResult:
    """Closed loop: ``concurrency`` keep-alive clients, each sending the next request as soon
    as the previous answer is read. Latencies after ``warmup`` seconds count."""
    start_at = time.perf_counter() + warmup
    stop_at = start_at + duration
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency

    def client(index: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        i = index
        while True:
            body, content_type = bodies[i % len(bodies)]
            i += 1
            sent = time.perf_counter()
            if sent >= stop_at:
                break
            try:
                connection.request("POST", path, body=body, headers={"Content-Type": content_type})
                response = connection.getresponse()
                response.read()
                ok = response.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            done = time.perf_counter()
            if start_at <= done <= stop_at:  # completed inside the measurement window
                latencies[index].append(done - sent)
                if not ok:
                    errors[index] += 1
        connection.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    time.sleep(max(0.0, start_at - time.perf_counter()))
    cpu_before = process_cpu_seconds(server_pid)
    time.sleep(max(0.0, stop_at - time.perf_counter()))
    cpu_used = process_cpu_seconds(server_pid) - cpu_before
    for thread in threads:
        thread.join()
    flat = [x for per_client in latencies for x in per_client]
    return LoadResult(
        endpoint=path,
        concurrency=concurrency,
        images_per_request=images_per_request,
        requests=len(flat),
        errors=sum(errors),
        seconds=duration,
        p50_ms=percentile(flat, 50) * 1000,
        p99_ms=percentile(flat, 99) * 1000,
        requests_per_s=len(flat) / duration,
        images_per_s=len(flat) * images_per_request / duration,
        server_cpu_ms_per_image=1000 * cpu_used / max(1, len(flat) * images_per_request),
    )


# --- raw in-process forward ---------------------------------------------------------------------
@dataclass
class RawResult:
    what: str
    batch_size: int
    threads: int
    p50_ms: float
    p99_ms: float
    images_per_s: float
    cpu_ms_per_image: float


def raw_forward(
    classifier: Any, tensors: Any, batch_size: int, threads: int, duration: float
) -> RawResult:
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        batches = [tensors[i : i + batch_size] for i in range(0, len(tensors), batch_size)]
        batches = [b for b in batches if len(b) == batch_size] or [tensors[:batch_size]]
        for batch in batches[:3]:
            classifier.predict_proba(batch)
        times: list[float] = []
        cpu_before = time.process_time()
        started = time.perf_counter()
        i = 0
        while time.perf_counter() - started < duration:
            t0 = time.perf_counter()
            classifier.predict_proba(batches[i % len(batches)])
            times.append(time.perf_counter() - t0)
            i += 1
        cpu_used = time.process_time() - cpu_before
    finally:
        torch.set_num_threads(previous)
    return RawResult(
        what="model.predict_proba (preprocessed tensors)",
        batch_size=batch_size,
        threads=threads,
        p50_ms=percentile(times, 50) * 1000,
        p99_ms=percentile(times, 99) * 1000,
        images_per_s=batch_size * len(times) / sum(times),
        cpu_ms_per_image=1000 * cpu_used / (batch_size * len(times)),
    )


def raw_pipeline(classifier: Any, blobs: list[bytes], duration: float) -> RawResult:
    """decode → to_model_image → normalize → forward, one image at a time, no HTTP."""
    import torch

    from src.preprocessing import decode_image, normalize, to_model_image

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    times: list[float] = []
    try:
        cpu_before = time.process_time()
        started = time.perf_counter()
        i = 0
        while time.perf_counter() - started < duration:
            t0 = time.perf_counter()
            array = to_model_image(decode_image(blobs[i % len(blobs)]))
            classifier.predict_proba(normalize(array))
            times.append(time.perf_counter() - t0)
            i += 1
        cpu_used = time.process_time() - cpu_before
    finally:
        torch.set_num_threads(previous)
    return RawResult(
        what="decode + preprocess + forward in process (no HTTP)",
        batch_size=1,
        threads=1,
        p50_ms=percentile(times, 50) * 1000,
        p99_ms=percentile(times, 99) * 1000,
        images_per_s=len(times) / sum(times),
        cpu_ms_per_image=1000 * cpu_used / len(times),
    )


# --- main -----------------------------------------------------------------------------------------
@dataclass
class Report:
    machine: dict[str, Any]
    model: str
    images: str
    cold_start: dict[str, float] = field(default_factory=dict)
    http: list[LoadResult] = field(default_factory=list)
    raw: list[RawResult] = field(default_factory=list)


def markdown(report: Report, batch_size: int) -> str:
    lines = [
        f"Machine: {report.machine['cpus']} CPUs, load average before the run "
        f"{report.machine['load_before']}, after {report.machine.get('load_after')}; "
        f"model: {report.model}; images: {report.images}.",
        "",
        "| cold start | seconds |",
        "|---|---:|",
    ]
    lines += [f"| {k} | {v:.2f} |" for k, v in report.cold_start.items()]
    lines += [
        "",
        "| endpoint | concurrency | images/request | p50 ms | p99 ms | requests/s | images/s "
        "| server CPU ms/image | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r.endpoint} | {r.concurrency} | {r.images_per_request} | {r.p50_ms:.1f} | "
        f"{r.p99_ms:.1f} | {r.requests_per_s:.1f} | {r.images_per_s:.0f} | "
        f"{r.server_cpu_ms_per_image:.2f} | {r.errors} |"
        for r in report.http
    ]
    lines += [
        "",
        "| raw in-process | batch | torch threads | p50 ms | p99 ms | images/s | CPU ms/image |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r.what} | {r.batch_size} | {r.threads} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | "
        f"{r.images_per_s:.0f} | {r.cpu_ms_per_image:.2f} |"
        for r in report.raw
    ]
    raw_batch = [r for r in report.raw if r.batch_size == batch_size]
    http_batch = [r for r in report.http if r.endpoint == "/predict/batch"]
    single = [r for r in report.http if r.endpoint == "/predict" and r.concurrency == 1]
    if single:
        lines += ["", f"/predict p50 at concurrency 1: {single[0].p50_ms:.1f} ms (target ≤ 15 ms)."]
    if raw_batch and http_batch:
        best_raw = max(raw_batch, key=lambda r: r.images_per_s)
        best_http = max(http_batch, key=lambda r: r.images_per_s)
        cheapest_raw = min(r.cpu_ms_per_image for r in raw_batch)
        cheapest_http = min(r.server_cpu_ms_per_image for r in http_batch)
        lines += [
            f"/predict/batch best throughput {best_http.images_per_s:.0f} images/s "
            f"(concurrency {best_http.concurrency}) vs best raw batched forward "
            f"{best_raw.images_per_s:.0f} images/s (batch {batch_size}, "
            f"{best_raw.threads} thread(s)): {best_http.images_per_s / best_raw.images_per_s:.2f}× "
            "(target ≥ 0.8×).",
            f"CPU cost per image: raw batched forward {cheapest_raw:.2f} ms, /predict/batch "
            f"{cheapest_http:.2f} ms (server process, everything included): "
            f"{cheapest_raw / cheapest_http:.2f}× the raw efficiency.",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_api", description=__doc__)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per scenario")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--batch-size", type=int, default=64, help="images per batch request")
    parser.add_argument("--tracking-uri", help="use this registry's Production model")
    parser.add_argument("--model-name", default="clothing-classifier")
    parser.add_argument(
        "--server-env", nargs="*", default=[], help="extra KEY=VALUE for the server (SERVE_*)"
    )
    parser.add_argument(
        "--output", type=Path, default=REPO_ROOT / "outputs/benchmarks/bench_api.json"
    )
    args = parser.parse_args(argv)
    server_env = dict(item.split("=", 1) for item in args.server_env)

    images, images_text = load_images(max(256, args.batch_size * 4))
    blobs = [png_bytes(image) for image in images]
    workdir = Path(tempfile.mkdtemp(prefix="bench-api-"))
    log_path = workdir / "uvicorn.log"
    report = Report(
        machine={
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        },
        model="",
        images=images_text,
    )

    if args.tracking_uri:
        registry = BenchRegistry(args.tracking_uri, args.model_name)
        report.model = f"{args.model_name} (Production of {args.tracking_uri})"
    else:
        print("logging a ResNet-20 (16-32-64) to a temporary registry ...", file=sys.stderr)
        registry = make_registry(workdir)
        report.model = "ResNet-20-like (BasicBlock 16-32-64, 3 blocks/stage), random weights"

    # The same model in this process, for the raw forward (loaded the way the server loads it).
    from src.preprocessing import normalize
    from src.serving.model_store import ModelStore

    store = ModelStore(registry.tracking_uri, registry.name, poll_interval_s=1, retry_interval_s=1)
    ref = store.resolve_production()
    if ref is None:
        raise SystemExit(f"no Production version of {registry.name} at {registry.tracking_uri}")
    classifier = store.load(ref).classifier
    tensors = normalize(images)
    raw_seconds = min(args.duration, 3.0)
    thread_counts = sorted({1, os.cpu_count() or 1})

    def measure_raw(batch_sizes: tuple[int, ...], label: str) -> None:
        for threads in thread_counts:
            for batch_size in batch_sizes:
                result = raw_forward(classifier, tensors, batch_size, threads, raw_seconds)
                result.what += label
                report.raw.append(result)
                print(asdict(result), file=sys.stderr)

    # Cold start with Production already in the registry.
    server = start_server(registry, registry.name, log_path, server_env)
    try:
        health_at = wait_for(server.port, "/health", server.process, 120)
        ready_at = wait_for(server.port, "/ready", server.process, 120)
        report.cold_start["spawn → /health 200"] = health_at - server.spawned_at
        report.cold_start["spawn → /ready 200 (model loaded)"] = ready_at - server.spawned_at
        print(f"server ready on port {server.port}", file=sys.stderr)
        pid = server.process.pid

        single_bodies = [multipart("file", [blob]) for blob in blobs]
        batch_bodies = [
            multipart("files", blobs[i : i + args.batch_size])
            for i in range(0, len(blobs) - args.batch_size + 1, args.batch_size)
        ]
        # Raw numbers are taken right beside the HTTP ones: the machine's load drifts.
        report.raw.append(raw_pipeline(classifier, blobs, raw_seconds))
        measure_raw((1,), "")
        for concurrency in args.concurrency:
            result = run_load(
                pid, server.port, "/predict", single_bodies, 1, concurrency, args.duration
            )
            report.http.append(result)
            print(asdict(result), file=sys.stderr)
        measure_raw((args.batch_size,), ", before the batch runs")
        for concurrency in args.concurrency:
            result = run_load(
                pid,
                server.port,
                "/predict/batch",
                batch_bodies,
                args.batch_size,
                concurrency,
                args.duration,
            )
            report.http.append(result)
            print(asdict(result), file=sys.stderr)
        measure_raw((args.batch_size,), ", after the batch runs")
    finally:
        server.stop()

    # Cold start once the registry answers: server up and waiting, then Production appears.
    if not args.tracking_uri and registry.source is not None:
        late_name = registry.name + "-late"
        version = register(registry, late_name)
        server = start_server(registry, late_name, log_path, server_env)
        try:
            wait_for(server.port, "/health", server.process, 120)
            time.sleep(3)  # let startup finish; the server polls every 0.25 s while empty
            promoted_at = time.perf_counter()
            promote(registry, version, late_name)
            ready_at = wait_for(server.port, "/ready", server.process, 60)
            report.cold_start["Production promoted → /ready 200 (server waiting)"] = (
                ready_at - promoted_at
            )
        finally:
            server.stop()

    report.machine["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    text = markdown(report, args.batch_size)
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps(
            {
                "machine": report.machine,
                "model": report.model,
                "images": report.images,
                "cold_start_s": report.cold_start,
                "http": [asdict(r) for r in report.http],
                "raw": [asdict(r) for r in report.raw],
                "markdown": text,
                "median_http_p50_ms": statistics.median(r.p50_ms for r in report.http),
            },
            indent=2,
        )
    )
    print(f"\nwritten to {args.output}; server log {log_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
