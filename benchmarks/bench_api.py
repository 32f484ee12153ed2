"""Benchmark the HTTP API against a real uvicorn process on 127.0.0.1, on the model it serves.

The model is what ``make serve`` would serve: the Production version of the configured registry
(``configs/mlflow.yaml``, by default the embedded ``sqlite:///mlflow.db``). Only without one, a
stand-in with the default architecture and test-time augmentation (``src.model.build_model`` on the
``train`` section of ``configs/``, random weights: the same compute) is logged with the trainer's own
``log_classifier`` (the onnx flavour) and promoted with ``src.registry`` into a temporary registry. The report names the
model (name, version, TTA, runtime, threads). Measured, on the same PNG-encoded images:

* cold start: process spawn → ``/health`` 200 and → ``/ready`` 200 (median of three spawns);
* ``POST /predict`` (p50/p99, concurrency 1 and 8) and ``POST /predict/batch`` (images/s);
* the raw batched forward in process with the SAME runtime, session options and parallelism as
  the server (ONNX Runtime, ``inference_threads`` per forward, one forward per core at once), and
  the batch/raw ratio;
* memory: peak RSS growth of the server during one worst-case ``/predict`` and one worst-case
  ``/predict/batch`` (the largest bodies and decoded pixels the limits allow);
* ``/predict`` p50/p99 while two worst-case batches are in flight;
* the multipart reader against python-multipart's tokenizer and Starlette's whole form path (µs per file).

    python -m benchmarks.bench_api                 # a few minutes
    python -m benchmarks.bench_api --duration 3 --tracking-uri sqlite:///mlflow.db

Results: a markdown report on stdout and JSON in ``outputs/benchmarks/bench_api.json``.
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
from collections.abc import AsyncGenerator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_IMAGES = REPO_ROOT.parent / "shared" / "fashion-mnist" / "train-images-idx3-ubyte.gz"


# --- model and data ---------------------------------------------------------------------------
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


# --- server -----------------------------------------------------------------------------------
@dataclass
class BenchRegistry:
    tracking_uri: str
    name: str


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


# --- the model that is served -------------------------------------------------------------------
def standin_registry(workdir: Path) -> BenchRegistry:
    """The default architecture + TTA (random weights), logged and promoted by the product's code."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from src.config import load_config
    from src.model import build_model
    from src.model_io import log_classifier
    from src.registry import promote_candidate, register_candidate

    cfg = load_config().train
    model = build_model(cfg).eval()
    uri = f"sqlite:///{workdir}/mlflow.db"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        experiment = mlflow.create_experiment("bench-api", (workdir / "art").as_uri())
        with mlflow.start_run(experiment_id=experiment) as run:
            mlflow.log_params({"network": cfg.network, "flip_tta": cfg.flip_tta})
            info = log_classifier(model, metadata={"flip_tta": cfg.flip_tta})
        source = mlflow.get_logged_model(info.model_id).artifact_location
    finally:
        mlflow.set_tracking_uri(previous)
    name = f"stand-in-{cfg.network}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    version = register_candidate(client, name, model_uri=source, run_id=run.info.run_id).version
    promote_candidate(client, name, str(version), passed=True, reasons=["benchmark stand-in"])
    return BenchRegistry(uri, name)


def served_model(args: argparse.Namespace, workdir: Path) -> tuple[BenchRegistry, Any, str]:
    """(registry, loaded model, description): Production of the configured registry, else the
    stand-in."""
    from src.config import load_config
    from src.serving.model_store import ModelStore

    cfg = load_config()
    registry = BenchRegistry(
        args.tracking_uri or cfg.tracking_uri, args.model_name or cfg.mlflow.registered_model_name
    )
    threads = cfg.serve.inference_threads
    store = ModelStore(
        registry.tracking_uri, registry.name, poll_interval_s=1, retry_interval_s=1, threads=threads
    )
    label = "Production"
    if not store.check_once():
        print(
            f"no loadable Production model ({store.status.reason}); using the stand-in",
            file=sys.stderr,
        )
        registry = standin_registry(workdir)
        store = ModelStore(
            registry.tracking_uri,
            registry.name,
            poll_interval_s=1,
            retry_interval_s=1,
            threads=threads,
        )
        if not store.check_once():
            raise SystemExit(f"the stand-in did not load: {store.status.reason}")
        label = "stand-in (random weights, default architecture)"
    model = store.current
    assert model is not None
    text = (
        f"{model.name} v{model.version} [{label}], flip TTA "
        f"{'on' if model.flip_tta else 'off' if model.flip_tta is False else 'unknown'}, "
        f"{model.classifier.runtime}, {threads} thread(s) per forward"
    )
    return registry, model, text


# --- raw in-process forward ---------------------------------------------------------------------
@dataclass
class RawResult:
    what: str
    batch_size: int
    parallel: int
    threads: int
    images_per_s: float
    cpu_ms_per_image: float


def raw_forward(
    model: Any, images: np.ndarray, batch_size: int, parallel: int, duration: float
) -> RawResult:
    """``parallel`` threads each running the served session on batches of ``batch_size``, as the
    server does (one forward per slot, ``inference_threads`` each)."""
    from src.preprocessing import normalize_array

    batches = [
        normalize_array(images[i : i + batch_size])
        for i in range(0, len(images) - batch_size + 1, batch_size)
    ]
    for batch in batches[:2]:
        model.predict_proba(batch)
    counts = [0] * parallel
    stop_at = time.perf_counter() + duration

    def worker(index: int) -> None:
        i = index
        while time.perf_counter() < stop_at:
            model.predict_proba(batches[i % len(batches)])
            counts[index] += batch_size
            i += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(parallel)]
    started, cpu_before = time.perf_counter(), time.process_time()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_before
    return RawResult(
        "session.run on normalised batches",
        batch_size,
        parallel,
        model.classifier.threads,
        sum(counts) / elapsed,
        1000 * cpu / max(1, sum(counts)),
    )


# --- worst-case requests and memory -------------------------------------------------------------
def compressible_png(side: int, mode: str = "RGBA") -> bytes:
    """A ``side``² image that compresses to little (a large decode from a small body)."""
    from PIL import Image

    gradient = np.tile(np.arange(side, dtype=np.uint8), (side, 1))
    image = Image.fromarray(gradient).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def worst_case_bodies(serve: Any) -> dict[str, tuple[bytes, str]]:
    """The largest body and decoded pixels the limits allow, for each endpoint."""
    side = int(serve.max_image_pixels**0.5)
    big = compressible_png(side)
    padding = max(0, serve.max_image_bytes - len(big) - 1024)
    single = big + bytes(padding)  # trailing bytes after IEND are read and ignored
    count = max(1, serve.max_batch_pixels // (side * side) - 1)  # leave room for the fillers
    small = png_bytes(np.zeros((28, 28), np.uint8))
    room = serve.max_batch_bytes - count * len(big) - 256 * 1024
    fillers = max(0, min(serve.max_batch_files - count, 240))
    filler = small + bytes(max(0, room // max(1, fillers) - len(small) - 200))
    blobs = [big] * count + [filler] * fillers
    return {"/predict": multipart("file", [single]), "/predict/batch": multipart("files", blobs)}


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def post(port: int, path: str, body: tuple[bytes, str], timeout: float = 120) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("POST", path, body=body[0], headers={"Content-Type": body[1]})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def peak_rss_growth(pid: int, port: int, path: str, body: tuple[bytes, str]) -> tuple[float, int]:
    """(MiB of peak RSS growth over the baseline during one request, its status)."""
    baseline = rss_bytes(pid)
    peak = baseline
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_bytes(pid))
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        status = post(port, path, body)
    finally:
        done.set()
        sampler.join()
    return (peak - baseline) / 2**20, status


def predict_while_batches_run(
    port: int, single: list[tuple[bytes, str]], batch: tuple[bytes, str], duration: float
) -> dict[str, float]:
    """/predict p50/p99 while two worst-case batches are kept in flight."""
    stop = threading.Event()
    batch_statuses: list[int] = []

    def batches() -> None:
        while not stop.is_set():
            batch_statuses.append(post(port, "/predict/batch", batch))

    runners = [threading.Thread(target=batches) for _ in range(2)]
    for runner in runners:
        runner.start()
    time.sleep(1.0)
    latencies: list[float] = []
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    stop_at = time.perf_counter() + duration
    i = 0
    while time.perf_counter() < stop_at:
        body, content_type = single[i % len(single)]
        i += 1
        sent = time.perf_counter()
        connection.request("POST", "/predict", body=body, headers={"Content-Type": content_type})
        connection.getresponse().read()
        latencies.append(time.perf_counter() - sent)
    stop.set()
    for runner in runners:
        runner.join()
    return {
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "requests": float(len(latencies)),
        "batches_done": float(len(batch_statuses)),
    }


# --- multipart ----------------------------------------------------------------------------------
def multipart_parsers(blobs: list[bytes], repeats: int = 50) -> dict[str, float]:
    """µs per file on one batch body: this project's reader, python-multipart's tokenizer alone,
    and Starlette's whole form path (tokenizer + spooled UploadFiles read back), which is what
    the API would use without the reader."""
    from python_multipart.multipart import MultipartParser

    from src.serving.multipart import boundary_of, parse_parts

    body, content_type = multipart("files", blobs)
    boundary = boundary_of(content_type)

    def ours() -> None:
        parse_parts(
            body,
            boundary,
            max_files=len(blobs),
            max_fields=16,
            max_file_bytes=10**7,
            max_field_bytes=65536,
        )

    def theirs() -> None:
        chunks: list[bytes] = []
        parser = MultipartParser(boundary, {"on_part_data": lambda d, s, e: chunks.append(d[s:e])})
        parser.write(body)
        parser.finalize()

    def starlette_form() -> None:
        # What FastAPI's UploadFile path does: parse, spool each file, read it back.
        import anyio
        from starlette.datastructures import Headers, UploadFile
        from starlette.formparsers import MultiPartParser

        async def stream() -> AsyncGenerator[bytes, None]:
            yield body

        async def parse() -> None:
            headers = Headers({"content-type": content_type})
            form = await MultiPartParser(headers, stream(), max_files=len(blobs)).parse()
            for _, value in form.multi_items():
                if isinstance(value, UploadFile):
                    await value.read()
            await form.close()

        anyio.run(parse)

    result = {}
    parsers = (
        ("project reader", ours),
        ("python-multipart", theirs),
        ("starlette form (UploadFile)", starlette_form),
    )
    for name, parse in parsers:
        started = time.perf_counter()
        for _ in range(repeats):
            parse()
        result[name] = (time.perf_counter() - started) / repeats / len(blobs) * 1e6
    return result


# --- report -------------------------------------------------------------------------------------
@dataclass
class Report:
    machine: dict[str, Any]
    model: str
    images: str
    cold_start_s: dict[str, float] = field(default_factory=dict)
    http: list[LoadResult] = field(default_factory=list)
    raw: list[RawResult] = field(default_factory=list)
    memory_mib: dict[str, float] = field(default_factory=dict)
    under_batches: dict[str, float] = field(default_factory=dict)
    multipart_us_per_file: dict[str, float] = field(default_factory=dict)
    batch_rounds: list[tuple[float, float]] = field(default_factory=list)  # (http, raw) img/s


def summary(report: Report, batch_size: int) -> list[str]:
    """The figures the README quotes, one line each."""
    single = {r.concurrency: r for r in report.http if r.endpoint == "/predict"}
    batch = max(
        (r for r in report.http if r.endpoint == "/predict/batch"),
        key=lambda r: r.images_per_s,
        default=None,
    )
    raw = max(report.raw, key=lambda r: r.images_per_s, default=None)
    lines = [
        f"- model: {report.model}",
        f"- images: {report.images}",
        f"- machine: {report.machine}",
    ]
    lines += [f"- cold start {k}: {v:.2f} s" for k, v in report.cold_start_s.items()]
    lines += [
        f"- /predict concurrency {c}: p50 {r.p50_ms:.1f} ms, p99 {r.p99_ms:.1f} ms, "
        f"{r.requests_per_s:.0f} req/s, errors {r.errors}"
        for c, r in single.items()
    ]
    if batch is not None and raw is not None:
        lines.append(
            f"- /predict/batch best round ({batch_size}/request, concurrency {batch.concurrency}): "
            f"{batch.images_per_s:.0f} img/s; raw batched forward best round ({raw.parallel} "
            f"parallel × {raw.threads} thread, batch {raw.batch_size}): {raw.images_per_s:.0f} "
            f"img/s; CPU per image: server "
            f"{batch.server_cpu_ms_per_image:.2f} ms (everything included), raw "
            f"{raw.cpu_ms_per_image:.2f} ms (ratio {raw.cpu_ms_per_image / batch.server_cpu_ms_per_image:.2f}x)"
        )
    if report.batch_rounds:
        ratios = [http / raw for http, raw in report.batch_rounds]
        lines.append(
            f"- /predict/batch vs raw in {len(ratios)} alternating rounds: "
            + ", ".join(f"{h:.0f}/{r:.0f}" for h, r in report.batch_rounds)
            + f" img/s; ratios {', '.join(f'{x:.2f}' for x in ratios)}; "
            f"median {statistics.median(ratios):.2f}x"
        )
    lines += [
        f"- raw {r.what}: batch {r.batch_size}, {r.parallel} parallel × {r.threads} thread: "
        f"{r.images_per_s:.0f} img/s"
        for r in report.raw
    ]
    lines += [
        f"- peak RSS growth, worst-case {k}: {v:.1f} MiB" for k, v in report.memory_mib.items()
    ]
    if report.under_batches:
        u = report.under_batches
        lines.append(
            f"- /predict while two worst-case batches run: p50 {u['p50_ms']:.1f} ms, "
            f"p99 {u['p99_ms']:.1f} ms ({u['requests']:.0f} requests, "
            f"{u['batches_done']:.0f} batches done)"
        )
    lines += [f"- multipart {k}: {v:.1f} µs/file" for k, v in report.multipart_us_per_file.items()]
    return lines


def cold_starts(
    registry: BenchRegistry, log_path: Path, env: dict[str, str], spawns: int = 3
) -> dict[str, float]:
    health, ready = [], []
    for _ in range(spawns):
        server = start_server(registry, registry.name, log_path, env)
        try:
            health.append(wait_for(server.port, "/health", server.process, 120) - server.spawned_at)
            ready.append(wait_for(server.port, "/ready", server.process, 120) - server.spawned_at)
        finally:
            server.stop()
    return {
        "spawn -> /health 200 (median)": statistics.median(health),
        "spawn -> /ready 200 (median)": statistics.median(ready),
        "spawn -> /ready 200 (max)": max(ready),
    }


BATCH_ROUNDS = 3


def measure_http(
    report: Report, server: Server, blobs: list[bytes], args: argparse.Namespace, model: Any
) -> None:
    pid, port = server.process.pid, server.port
    singles = [multipart("file", [blob]) for blob in blobs]
    batches = [
        multipart("files", blobs[i : i + args.batch_size])
        for i in range(0, len(blobs) - args.batch_size + 1, args.batch_size)
    ]
    for concurrency in (1, 8):
        report.http.append(run_load(pid, port, "/predict", singles, 1, concurrency, args.duration))
    images = np.stack([np.asarray(load_png(b)) for b in blobs])
    slots = os.cpu_count() or 1
    report.raw.append(raw_forward(model, images, args.batch_size, 1, min(args.duration, 3.0)))
    # Batch vs raw in alternating rounds, so a drift in the machine's speed hits both alike;
    # the ratio reported is the median of the rounds' ratios.
    for _ in range(BATCH_ROUNDS):
        http = run_load(pid, port, "/predict/batch", batches, args.batch_size, 8, args.duration)
        raw = raw_forward(model, images, args.batch_size, slots, args.duration)
        report.http.append(http)
        report.raw.append(raw)
        report.batch_rounds.append((http.images_per_s, raw.images_per_s))


def load_png(blob: bytes) -> Any:
    from PIL import Image

    return Image.open(io.BytesIO(blob)).convert("L")


def measure_limits(
    report: Report, server: Server, blobs: list[bytes], args: argparse.Namespace
) -> None:
    from src.config import load_config

    worst = worst_case_bodies(load_config().serve)
    for path, body in worst.items():
        growth, status = peak_rss_growth(server.process.pid, server.port, path, body)
        report.memory_mib[f"{path} (status {status}, {len(body[0]) / 2**20:.1f} MiB body)"] = growth
    singles = [multipart("file", [blob]) for blob in blobs]
    report.under_batches = predict_while_batches_run(
        server.port, singles, worst["/predict/batch"], args.duration
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_api", description=__doc__)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per scenario")
    parser.add_argument("--batch-size", type=int, default=64, help="images per batch request")
    parser.add_argument("--tracking-uri", help="registry (default: the configured one)")
    parser.add_argument("--model-name", help="registered model (default: the configured one)")
    parser.add_argument(
        "--output", type=Path, default=REPO_ROOT / "outputs/benchmarks/bench_api.json"
    )
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench-api-"))
    log_path = workdir / "uvicorn.log"
    registry, model, model_text = served_model(args, workdir)
    images, images_text = load_images(max(256, args.batch_size * 4))
    blobs = [png_bytes(image) for image in images]
    report = Report(
        machine={
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_before": os.getloadavg()[0],
        },
        model=model_text,
        images=images_text,
    )
    print(f"model: {model_text}", file=sys.stderr)
    report.cold_start_s = cold_starts(registry, log_path, {})
    server = start_server(registry, registry.name, log_path, {})
    try:
        wait_for(server.port, "/ready", server.process, 120)
        measure_http(report, server, blobs, args, model)
        measure_limits(report, server, blobs, args)
    finally:
        server.stop()
    report.multipart_us_per_file = multipart_parsers(blobs[: args.batch_size])
    report.machine["load_after"] = os.getloadavg()[0]
    lines = summary(report, args.batch_size)
    print("\n".join(lines))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({**asdict(report), "summary": lines}, indent=2, default=str))
    print(f"\nwritten to {args.output}; server log {log_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
