"""What the prediction log costs: ``/predict`` throughput with the log on vs off.

Two real uvicorn processes serve the same model: one logging every answer (sqlite in a temporary
folder, the default store), one with ``MONITOR_LOG_PREDICTIONS=false``. They are measured in
alternating rounds (only one under load at a time, so the machine's drifting load hits both
alike); the figure is the median of the per-round ratios. The model and the load generator are
``benchmarks/bench_api.py``'s (a random-weight ResNet-20 unless ``--tracking-uri`` names a
registry with a Production model).

    python -m benchmarks.bench_prediction_log                 # ~1 minute
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
    make_registry,
    multipart,
    png_bytes,
    run_load,
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
        "rows_logged": _count(store),
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
    parser.add_argument("--tracking-uri", help="use this registry's Production model")
    parser.add_argument("--model-name", default="clothing-classifier")
    parser.add_argument(
        "--output", type=Path, default=REPO_ROOT / "outputs/benchmarks/bench_prediction_log.json"
    )
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench-log-"))
    if args.tracking_uri:
        registry = BenchRegistry(args.tracking_uri, args.model_name)
        model = f"{args.model_name} (Production of {args.tracking_uri})"
    else:
        registry = make_registry(workdir)
        model = "ResNet-20-like (BasicBlock 16-32-64), random weights"
    report = {"model": model, **_measure(args, registry, workdir)}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1))
    predict = report["predict_throughput_ratio_on_vs_off"]
    batch = report["batch_throughput_ratio_on_vs_off"]
    print(
        f"/predict throughput with the log on / off: {predict:.3f} (cost {1 - predict:.1%}); "
        f"/predict/batch: {batch:.3f}; {report['rows_logged']} rows logged; model: {model}"
    )
    print(f"details: {args.output}")
    return 0 if predict >= 0.9 else 1


if __name__ == "__main__":
    raise SystemExit(main())
