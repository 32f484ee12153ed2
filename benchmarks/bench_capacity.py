"""How much of the machine the HTTP path uses: ``wrk`` against ``make serve``'s server.

The machine's capacity is defined as cores x the served model's 1-thread ONNX Runtime forward
rate at batch 64, measured in this same run. Then the service is started as ``make serve`` starts
it (``python -m src.serving.cli``: its worker processes, its settings) once per micro-batching
setting (``off``, ``on``, and ``auto``: what the server decides on this CPU), and ``wrk`` (a C
load generator, Debian's ``wrk``) posts real Fashion-MNIST images as PNGs:

* ``/predict``, one image per request, 16 connections (2 wrk threads): req/s against capacity;
* ``/predict``, one connection: p50 / p99 latency;
* ``/predict/batch``, 64 images per request: images/s against capacity.

CPU seconds of the service's processes and of wrk itself are counted per request, and the
forward batch sizes are read back from ``/metrics``. Model: the configured registry's Production
version (else the stand-in of :mod:`benchmarks.bench_api`).

    python -m benchmarks.bench_capacity                # a few minutes
    python -m benchmarks.bench_capacity --seconds 5 --modes off,auto

Results: markdown on stdout, JSON in ``outputs/benchmarks/bench_capacity.json``. Run it on a
quiet machine: everything else running takes cores from the server.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from benchmarks.bench_api import (
    REPO_ROOT,
    BenchRegistry,
    free_port,
    get_status,
    load_images,
    multipart,
    png_bytes,
    served_model,
)

WRK_SCRIPT = Path(__file__).with_name("wrk_post.lua")
BATCH_IMAGES = 64
BODIES = 64  # distinct request bodies wrk cycles through


@dataclass
class WrkResult:
    what: str
    connections: int
    images_per_request: int
    requests: int
    seconds: float
    errors: int
    p50_ms: float
    p99_ms: float
    requests_per_s: float
    images_per_s: float
    service_cpu_ms_per_image: float
    wrk_cpu_ms_per_request: float


@dataclass
class ModeResult:
    mode: str
    workers: int
    micro_batching: str  # what the server reports it uses
    runs: list[WrkResult] = field(default_factory=list)
    forward_batch_sizes: dict[str, float] = field(default_factory=dict)


# --- the raw forward -----------------------------------------------------------------------------
def forward_rate(classifier: Any, batch: int, seconds: float) -> float:
    """Images/s of ``classifier`` (1 thread) on batches of ``batch`` real-shaped inputs."""
    images = np.random.default_rng(0).random((batch, 1, 28, 28), dtype=np.float32)
    for _ in range(3):
        classifier.predict_proba(images)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        classifier.predict_proba(images)
        done += batch
    return done / (time.perf_counter() - started)


# --- the service ---------------------------------------------------------------------------------
def write_bodies(folder: Path, field_name: str, blobs: list[bytes], per_request: int) -> str:
    """``BODIES`` multipart bodies (``per_request`` images each) as 0.bin.. → their boundary."""
    folder.mkdir(parents=True, exist_ok=True)
    boundary = ""
    for index in range(BODIES):
        chosen = [blobs[(index * per_request + k) % len(blobs)] for k in range(per_request)]
        body, content_type = multipart(field_name, chosen)
        boundary = content_type.split("boundary=")[1]
        (folder / f"{index}.bin").write_bytes(body.replace(boundary.encode(), b"BOUNDARY"))
    return "BOUNDARY"


def start_service(registry: BenchRegistry, env: dict[str, str], log: Path) -> tuple[Any, int]:
    port = free_port()
    full_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("SERVE_", "MLFLOW_"))},
        "MLFLOW_TRACKING_URI": registry.tracking_uri,
        "MLFLOW_REGISTERED_MODEL_NAME": registry.name,
        "SERVE_PORT": str(port),
        **env,
    }
    with log.open("ab") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "src.serving.cli"],
            cwd=REPO_ROOT,
            env=full_env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return process, port


def wait_ready(process: Any, port: int, timeout: float = 120) -> None:
    """Until /ready answers 200 twenty times in a row (every worker has its model)."""
    deadline, streak = time.monotonic() + timeout, 0
    while streak < 20:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}; see its log")
        if time.monotonic() > deadline:
            raise TimeoutError("the server was not ready in time; see its log")
        streak = streak + 1 if get_status(port, "/ready") == 200 else 0
        time.sleep(0.05 if streak else 0.25)


def stop_service(process: Any) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        process.wait()


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and its children (uvicorn's workers)."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            continue
    return total


# --- load ----------------------------------------------------------------------------------------
def run_wrk(
    port: int, path: str, bodies: Path, connections: int, seconds: float
) -> tuple[dict[str, Any], float]:
    """One wrk run → (its JSON summary, wrk's own CPU seconds)."""
    threads = min(2, connections)
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds:g}s",
        "--timeout",
        "10s",
        "-s",
        str(WRK_SCRIPT),
        f"http://127.0.0.1:{port}{path}",
        "--",
        str(bodies),
        str(BODIES),
        path,
        "BOUNDARY",
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    wrk_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    match = re.search(r"WRK_JSON (\{.*\})", output)
    if match is None:
        raise RuntimeError(f"wrk printed no summary:\n{output}")
    summary: dict[str, Any] = json.loads(match.group(1))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    summary["non_2xx"] = int(non_2xx.group(1)) if non_2xx else 0
    return summary, wrk_cpu


def measure(
    what: str, process: Any, port: int, path: str, bodies: Path, per_request: int, args: Any
) -> WrkResult:
    connections = 1 if what.endswith("1 connection") else args.connections
    run_wrk(port, path, bodies, connections, 1.0)  # warm the connections and caches
    cpu_before = tree_cpu_seconds(process.pid)
    summary, wrk_cpu = run_wrk(port, path, bodies, connections, args.seconds)
    service_cpu = tree_cpu_seconds(process.pid) - cpu_before
    requests = max(1, int(summary["requests"]))
    errors = sum(
        int(summary[key])
        for key in ("connect_errors", "read_errors", "write_errors", "timeouts", "non_2xx")
    )
    return WrkResult(
        what=what,
        connections=connections,
        images_per_request=per_request,
        requests=requests,
        seconds=float(summary["seconds"]),
        errors=errors,
        p50_ms=float(summary["p50_ms"]),
        p99_ms=float(summary["p99_ms"]),
        requests_per_s=requests / float(summary["seconds"]),
        images_per_s=requests * per_request / float(summary["seconds"]),
        service_cpu_ms_per_image=1000 * service_cpu / (requests * per_request),
        wrk_cpu_ms_per_request=1000 * wrk_cpu / requests,
    )


def metric_values(port: int, name: str) -> dict[str, float]:
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", "/metrics")
    text = connection.getresponse().read().decode()
    connection.close()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name):
            key, _, value = line.rpartition(" ")
            values[key[len(name) :] or "value"] = float(value)
    return values


def served_micro_batching(port: int) -> str:
    """What the server reports for micro-batching (``GET /model``)."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", "/model")
    body = json.loads(connection.getresponse().read())
    connection.close()
    return str(body.get("micro_batching", "unknown"))


def run_mode(
    mode: str, registry: BenchRegistry, bodies: dict[str, Path], args: Any, workers: int = 0
) -> ModeResult:
    """The service with micro-batching ``mode`` (``workers``: 0 = make serve's default)."""
    env = {"SERVE_MICRO_BATCH": mode}
    workers = workers or args.workers
    if workers:
        env["SERVE_WORKERS"] = str(workers)
    label = mode if not workers else f"{mode}, SERVE_WORKERS={workers}"
    log = Path(args.workdir) / f"server-{mode}-{workers}.log"
    process, port = start_service(registry, env, log)
    try:
        wait_ready(process, port)
        workers = len(metric_values(port, "worker_resident_memory_bytes")) or 1
        result = ModeResult(label, workers, served_micro_batching(port))
        result.runs.append(
            measure("/predict, 16 connections", process, port, "/predict", bodies["one"], 1, args)
        )
        result.runs.append(
            measure("/predict, 1 connection", process, port, "/predict", bodies["one"], 1, args)
        )
        result.runs.append(
            measure(
                f"/predict/batch ({BATCH_IMAGES} images), {args.connections} connections",
                process,
                port,
                "/predict/batch",
                bodies["batch"],
                BATCH_IMAGES,
                args,
            )
        )
        result.forward_batch_sizes = metric_values(port, "inference_batch_size")
        return result
    finally:
        stop_service(process)


# --- report --------------------------------------------------------------------------------------
def report_lines(report: dict[str, Any]) -> list[str]:
    capacity = report["capacity_images_per_s"]
    lines = [
        f"## API capacity ({report['cpu']}, {report['cores']} cores, {report['cpu_class']})",
        "",
        f"Model: {report['model']}. Forward, 1 thread: batch 1 "
        f"{report['forward_batch1_images_per_s']:.0f} img/s, batch 64 "
        f"{report['forward_batch64_images_per_s']:.0f} img/s -> capacity {capacity:.0f} img/s "
        f"({report['cores']} cores x batch-64 rate).",
        "",
        "| micro-batching | workers | run | req/s | img/s | x capacity | p50 ms | p99 ms | "
        "errors | service CPU ms/img | wrk CPU ms/req |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mode in report["modes"]:
        for run in mode["runs"]:
            lines.append(
                f"| {mode['mode']} ({mode['micro_batching']}) | {mode['workers']} | {run['what']} "
                f"| {run['requests_per_s']:.0f} | {run['images_per_s']:.0f} "
                f"| {run['images_per_s'] / capacity:.2f} | {run['p50_ms']:.2f} "
                f"| {run['p99_ms']:.2f} | {run['errors']} | {run['service_cpu_ms_per_image']:.2f} "
                f"| {run['wrk_cpu_ms_per_request']:.2f} |"
            )
    return lines


def cpu_class() -> str:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA")
    native = "AVX-512 BF16" if "avx512_bf16" in flags else "AVX2" if "avx2" in flags else "other"
    return f"{native}{f', ONEDNN_MAX_CPU_ISA={isa}' if isa else ''}"


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per wrk run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--modes", default="off,on,auto", help="micro-batching settings to run")
    parser.add_argument("--workers", type=int, default=0, help="0: the server's default")
    parser.add_argument(
        "--one-process", action="store_true", help="also run one worker process (the old way)"
    )
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--model-name", default=None)
    parser.add_argument("--output", default="outputs/benchmarks/bench_capacity.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("error: wrk is not installed; run `make edge-deps` (Debian's wrk)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-capacity-") as workdir:
        args.workdir = workdir
        registry, model, description = served_model(args, Path(workdir))
        rate1 = forward_rate(model.classifier, 1, 3.0)
        rate64 = forward_rate(model.classifier, BATCH_IMAGES, 3.0)
        cores = len(os.sched_getaffinity(0))
        images, _ = load_images(BODIES * BATCH_IMAGES)
        blobs = [png_bytes(image) for image in images]
        bodies = {
            "one": Path(workdir) / "one",
            "batch": Path(workdir) / "batch",
        }
        write_bodies(bodies["one"], "file", blobs, 1)
        write_bodies(bodies["batch"], "files", blobs, BATCH_IMAGES)
        modes = [run_mode(mode, registry, bodies, args) for mode in args.modes.split(",")]
        if args.one_process:  # as before: one process, every forward in a worker thread
            modes.append(run_mode("off", registry, bodies, args, workers=1))
    report = {
        "cpu": cpu_name(),
        "cpu_class": cpu_class(),
        "cores": cores,
        "model": description,
        "forward_batch1_images_per_s": rate1,
        "forward_batch64_images_per_s": rate64,
        "capacity_images_per_s": cores * rate64,
        "modes": [asdict(mode) for mode in modes],
    }
    print("\n".join(report_lines(report)))
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
