"""Where the CPU of one ``/predict`` goes: each step of the request path timed on its own.

The steps are the server's own functions, called in process on a real Fashion-MNIST image sent
as a PNG in a multipart body: reading the multipart body, decoding and preprocessing the image
(including the statistics the prediction log keeps), the forward of the served model (1 thread,
batch 1), the answer, stamping it for the prediction log and queueing it, the JSON body, the
request's log line and its metrics. What a request costs in all comes from
:mod:`benchmarks.bench_capacity` (service CPU per request under load); the difference is the
HTTP stack (uvicorn, FastAPI routing and middleware, the kernel's loopback TCP).

    python -m benchmarks.bench_request_parts

Results: markdown on stdout, JSON in ``outputs/benchmarks/bench_request_parts.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from starlette.responses import JSONResponse

from benchmarks.bench_api import load_images, multipart, png_bytes, served_model
from src.config import load_config
from src.preprocessing import ALLOWED_FORMATS
from src.serving.inference import ImageLimits, answers, decode_all
from src.serving.multipart import boundary_of, parse_parts
from src.serving.observability import JsonFormatter, ServingMetrics


def per_call_us(step: Callable[[], Any], seconds: float = 1.0) -> float:
    """Median over 5 rounds of the mean time per call (µs)."""
    step()
    rounds = []
    for _ in range(5):
        calls, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds / 5:
            step()
            calls += 1
        rounds.append((time.perf_counter() - started) / calls * 1e6)
    return sorted(rounds)[2]


def request_steps(model: Any, body: bytes, content_type: str) -> dict[str, Callable[[], Any]]:
    cfg = load_config()
    serve = cfg.serve
    limits = ImageLimits(
        ALLOWED_FORMATS, serve.max_image_pixels, serve.max_image_side, serve.max_batch_pixels
    )
    boundary = boundary_of(content_type)
    parse = lambda: parse_parts(  # noqa: E731
        body, boundary, max_files=1, max_fields=16, max_file_bytes=1 << 22, max_field_bytes=1 << 16
    )
    blob = parse()[0].data
    images = decode_all([blob], [None], limits, None, [])
    probabilities = model.predict_proba(images)
    result = answers(probabilities, model.class_names, model.version, serve.top_k)
    metrics = ServingMetrics()
    formatter = JsonFormatter()
    record = logging.LogRecord("serving", logging.INFO, __file__, 1, "request", None, None)
    record.fields = {"method": "POST", "path": "/predict", "status": 200, "duration_ms": 3.1}

    def observe() -> None:
        metrics.requests.labels(method="POST", path="/predict", status="200").inc()
        metrics.latency.labels(method="POST", path="/predict").observe(0.003)
        metrics.predictions.labels(label="Bag").inc()

    return {
        "multipart body -> parts": parse,
        "PNG decode + preprocessing + input statistics": lambda: decode_all(
            [blob], [None], limits, None, []
        ),
        "forward (ONNX Runtime, 1 thread, batch 1)": lambda: model.predict_proba(images),
        "answer (top-k)": lambda: answers(
            probabilities, model.class_names, model.version, serve.top_k
        ),
        "JSON body": lambda: JSONResponse(result),
        "request log line (JSON)": lambda: formatter.format(record),
        "metrics (3 updates)": observe,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--model-name", default=None)
    parser.add_argument("--output", default="outputs/benchmarks/bench_request_parts.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-parts-") as workdir:
        _registry, model, description = served_model(args, Path(workdir))
        images, _ = load_images(1)
        body, content_type = multipart("file", [png_bytes(images[0])])
        steps = request_steps(model, body, content_type)
        timings = {name: per_call_us(step) for name, step in steps.items()}
    lines = [f"## One /predict, step by step ({description})", "", "| step | µs |", "|---|---|"]
    lines += [f"| {name} | {us:.1f} |" for name, us in timings.items()]
    lines.append(f"| **sum of the steps** | **{sum(timings.values()):.1f}** |")
    print("\n".join(lines))
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"model": description, "steps_us": timings}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
