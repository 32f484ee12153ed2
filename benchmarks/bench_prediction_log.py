"""What the prediction log costs: ``/predict`` throughput with the log on vs off.

Two real uvicorn processes serve the same model: one logging every answer (sqlite in a temporary
folder, the default store), one with ``MONITOR_LOG_PREDICTIONS=false``. They are measured in
alternating rounds (only one under load at a time, so the machine's drifting load hits both
alike); the figure is the median of the per-round ratios. The model and the load generator are
``benchmarks/bench_api.py``'s (a random-weight ResNet-20 unless ``--tracking-uri`` names a
registry with a Production model).

    python -m benchmarks.bench_prediction_log
    python -m benchmarks.bench_prediction_log --rounds 5 --duration 5 --concurrency 8

Target: the log costs at most 10 % of /predict throughput. Results in
``outputs/benchmarks/bench_prediction_log.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks.bench_api import (
    REPO_ROOT,
    BenchRegistry,
    load_images,
    multipart,
    png_bytes,
    run_load,
    served_model,
    start_server,
    wait_for,
)


def _measure(args: argparse.Namespace, registry: BenchRegistry, workdir: Path) -> dict[str, Any]:
    images, images_text = load_images(256)
    bodies = [multipart("file", [png_bytes(image)]) for image in images]
    batch = [
        multipart("files", [png_bytes(image) for image in images[i : i + 64]])
        for i in range(0, 256, 64)
    ]
    store = workdir / "predictions.db"
    settings = {
        "log on": {"MONITOR_STORE_URL": f"sqlite:///{store}"},
        "log off": {"MONITOR_LOG_PREDICTIONS": "false"},
    }
    servers = {
        name: start_server(registry, registry.name, workdir / f"{name}.log", env)
        for name, env in settings.items()
    }
    rounds: list[dict[str, Any]] = []
    try:
        for server in servers.values():
            wait_for(server.port, "/ready", server.process, 180)
        for index in range(args.rounds):
            # Alternate which goes first, so neither always meets the same machine state.
            order = list(servers) if index % 2 == 0 else list(reversed(servers))
            result: dict[str, Any] = {}
            for name in order:
                server = servers[name]
                single = run_load(
                    server.process.pid,
                    server.port,
                    "/predict",
                    bodies,
                    1,
                    args.concurrency,
                    args.duration,
                )
                batched = run_load(
                    server.process.pid,
                    server.port,
                    "/predict/batch",
                    batch,
                    64,
                    4,
                    args.duration,
                )
                result[name] = {"predict": asdict(single), "batch": asdict(batched)}
            rounds.append(result)
            print(
                json.dumps({k: v["predict"]["requests_per_s"] for k, v in result.items()}),
                file=sys.stderr,
            )
    finally:
        for server in servers.values():
            server.stop()

    def ratio(endpoint: str, key: str) -> float:
        # Median over rounds of log-on / log-off, each round measured back to back.
        return statistics.median(
            r["log on"][endpoint][key] / r["log off"][endpoint][key] for r in rounds
        )

    return {
        "images": images_text,
        "concurrency": args.concurrency,
        "duration_s": args.duration,
        "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "rounds": rounds,
        "predict_throughput_ratio_on_vs_off": ratio("predict", "requests_per_s"),
        "batch_throughput_ratio_on_vs_off": ratio("batch", "images_per_s"),
        "predict_server_cpu_per_request_ratio_on_vs_off": ratio(
            "predict", "server_cpu_ms_per_image"
        ),
        "rows_logged": _count(store),
    }


def in_process_cost(workdir: Path, answers: int = 20000) -> dict[str, float]:
    """CPU per answer, measured in this process: the request path (``record``: id, flag,
    queue) and everything including the writer thread's batched inserts. Unlike throughput,
    CPU time per answer is little affected by other load on the machine."""
    import time
    from types import SimpleNamespace

    import numpy as np

    from src.config import load_config
    from src.monitoring.answers import PredictionMonitor, build_writer
    from src.monitoring.inputs import describe_input

    cfg = load_config(
        overrides={"monitor": {"store_url": f"sqlite:///{workdir / 'inproc.db'}"}}, environ={}
    )
    monitor = PredictionMonitor(cfg, build_writer(cfg))
    assert monitor.writer is not None
    monitor.writer.start()
    monitor.writer.store()  # connected
    model = SimpleNamespace(version="1", tags={"low_confidence_threshold": "0.5"})
    image = SimpleNamespace(width=28, height=28, mode="L")
    array = np.zeros((28, 28), dtype=np.uint8)
    top = [{"label": "Shirt", "probability": 0.7}, {"label": "Coat", "probability": 0.2}]
    cpu_start = time.process_time()
    describe_total = record_total = 0.0
    for _ in range(answers):
        started = time.thread_time()
        info = describe_input(image, array, False)  # type: ignore[arg-type]
        described = time.thread_time()
        monitor.record(
            model,
            [info],
            [{"label": "Shirt", "class_id": 6, "confidence": 0.7, "top_k": top}],
        )
        record_total += time.thread_time() - described
        describe_total += described - started
    monitor.writer.flush(timeout=120)
    cpu_all = time.process_time() - cpu_start
    monitor.writer.close()
    return {
        "answers": answers,
        "describe_input_us": 1e6 * describe_total / answers,
        "record_us": 1e6 * record_total / answers,
        "all_cpu_incl_writer_us": 1e6 * cpu_all / answers,
    }


def _count(path: Path) -> int:
    import sqlite3

    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM predictions").fetchone()[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_prediction_log", description=__doc__
    )
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--tracking-uri", help="registry (default: the configured one)")
    parser.add_argument("--model-name", help="registered model (default: the configured one)")
    parser.add_argument(
        "--output", type=Path, default=REPO_ROOT / "outputs/benchmarks/bench_prediction_log.json"
    )
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench-log-"))
    # The model make serve would serve: Production of the configured registry, else the stand-in.
    registry, _, model = served_model(args, workdir)
    report: dict[str, Any] = {"model": model, "in_process": in_process_cost(workdir)}
    print(json.dumps(report["in_process"]), file=sys.stderr)
    report.update(_measure(args, registry, workdir))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1))
    predict = report["predict_throughput_ratio_on_vs_off"]
    batch = report["batch_throughput_ratio_on_vs_off"]
    print(
        f"/predict throughput with the log on / off: {predict:.3f} (cost {1 - predict:.1%}); "
        f"/predict/batch: {batch:.3f}; {report['rows_logged']} rows logged; model: {model}"
    )
    cost = report["in_process"]
    print(
        f"CPU per answer in-process: describe_input {cost['describe_input_us']:.1f} us, "
        f"record {cost['record_us']:.1f} us, all incl. the writer's inserts "
        f"{cost['all_cpu_incl_writer_us']:.1f} us; server CPU per /predict on/off: "
        f"{report['predict_server_cpu_per_request_ratio_on_vs_off']:.3f}"
    )
    print(f"details: {args.output}")
    return 0 if predict >= 0.9 else 1


if __name__ == "__main__":
    raise SystemExit(main())
