"""Where a hot swap's memory goes: RSS, the C heap (glibc's ``mallinfo2``), Python's own
allocations (tracemalloc) and ONNX Runtime's arena around repeated model swaps, one hypothesis
at a time, each in a fresh process (the C heap's state is process-wide).

Each process serves the stand-in model (the default architecture and TTA, random weights: the
served compute) the way a replica does: two threads forward single images and batches of 4
without pause, and every swap loads the same model anew, as a reload does (the model checked
and opened, warmed up, the micro-batch probe of 16 images), in a thread of its own (anyio's
worker threads come and go), then replaces the served one. After each swap and a collection:
RSS, the C heap's in-use / free / mapped bytes, Python's traced bytes, and whether any old
session is still alive; during each load, the peak RSS (sampled every ``peak_rss`` interval).

    python -m benchmarks.bench_swap_memory               # every configuration, 20 swaps each
    python -m benchmarks.bench_swap_memory --swaps 40 --configs before pinned

JSON in ``outputs/benchmarks/bench_swap_memory.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
NAMES = [str(i) for i in range(10)]
PROBE_BATCH = 16  # serve.micro_batch_max: the batch ``micro_batch: auto`` times at load
TRAFFIC_BATCHES = (1, 4)  # the soak's single images and batches
PINNED_LIMIT_MIB = 20.0  # the fix's RSS growth over all the swaps, at most
# name -> (what it tests, extra environment)
CONFIGS: dict[str, tuple[str, dict[str, str]]] = {
    "before": ("glibc and ONNX Runtime defaults (the code before the fix)", {}),
    "arena-max-2": ("MALLOC_ARENA_MAX=2: fewer glibc heaps", {"MALLOC_ARENA_MAX": "2"}),
    "ort-no-arena": ("ONNX Runtime's CPU arena off (enable_cpu_mem_arena=False)", {}),
    "ort-shared-arena": ("one ONNX Runtime arena for the process, shared by the sessions", {}),
    "trim": ("malloc_trim(0) after each swap", {}),
    "pinned": ("glibc's mmap threshold pinned at 128 KiB (the fix, as the API does)", {}),
}


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def export_standin(folder: Path) -> Path:
    from src.config import load_config
    from src.model import build_model
    from src.model_io import export_onnx

    return export_onnx(build_model(load_config().train).eval(), folder / "model.onnx")


# --- one configuration, in its own process ------------------------------------------------------
def configure(config: str) -> None:
    """Apply ``config``'s change to this process (before any model is loaded)."""
    import onnxruntime as ort

    import src.onnx_model as onnx_model
    from src.serving.native_memory import pin_mmap_threshold

    if config == "pinned" and not pin_mmap_threshold():
        raise SystemExit("pinning the mmap threshold needs glibc")
    if config in ("ort-no-arena", "ort-shared-arena"):
        if config == "ort-shared-arena":
            info = ort.OrtMemoryInfo(
                "Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
            )
            ort.create_and_register_allocator(info, None)
        original = onnx_model._session_options

        def options(threads: int) -> ort.SessionOptions:
            chosen = original(threads)
            if config == "ort-no-arena":
                chosen.enable_cpu_mem_arena = False
            else:
                chosen.add_session_config_entry("session.use_env_allocators", "1")
            return chosen

        onnx_model._session_options = options


def load(model_bytes: bytes) -> Any:
    """What a reload does with the fetched bytes: check, open, warm up, probe the batch."""
    from src.onnx_model import load_onnx_classifier
    from src.serving.batching import batch_speedup
    from src.serving.model_store import BoundedForward

    classifier = load_onnx_classifier(bytes(bytearray(model_bytes)), NAMES, threads=1)
    batch_speedup(BoundedForward(classifier, 30.0), PROBE_BATCH, (1, 28, 28))
    return classifier


@contextlib.contextmanager
def peak_rss(every_s: float = 0.005) -> Iterator[list[float]]:
    peak = [rss_mib()]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(every_s):
            peak[0] = max(peak[0], rss_mib())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        stop.set()
        thread.join()
        peak[0] = max(peak[0], rss_mib())


def heap() -> dict[str, float]:
    from src.serving.native_memory import heap_stats

    stats = heap_stats()
    return {} if stats is None else stats.__dict__.copy()


def child(config: str, model_path: Path, swaps: int, settle_s: float) -> dict[str, Any]:
    configure(config)
    model_bytes = model_path.read_bytes()
    trim: Callable[[], None] = lambda: None  # noqa: E731
    if config == "trim":
        libc = ctypes.CDLL("libc.so.6")
        trim = lambda: libc.malloc_trim(0)  # noqa: E731
    served: list[Any] = [load(model_bytes)]
    stop = threading.Event()

    def traffic(batch: int) -> None:
        images = np.random.default_rng(batch).random((batch, 1, 28, 28), dtype=np.float32)
        while not stop.is_set():
            served[0].predict_proba(images)

    threads = [threading.Thread(target=traffic, args=(b,)) for b in TRAFFIC_BATCHES]
    for thread in threads:
        thread.start()
    tracemalloc.start()
    time.sleep(2 * settle_s)
    gc.collect()
    start = {"rss_mib": rss_mib(), "python_mib": tracemalloc.get_traced_memory()[0] / 2**20}
    start |= heap()
    rows, sessions = [], []
    try:
        for index in range(swaps):
            before = rss_mib()
            with peak_rss() as peak, ThreadPoolExecutor(1) as loader:
                new = loader.submit(load, model_bytes).result()
            old, served[0] = served[0], new
            sessions.append(weakref.ref(old.session))
            del old, new
            time.sleep(settle_s)  # the traffic goes on with the new model
            gc.collect()
            trim()
            row = {
                "swap": index + 1,
                "rss_mib": rss_mib(),
                "load_peak_over_before_mib": peak[0] - before,
                "python_mib": tracemalloc.get_traced_memory()[0] / 2**20,
                "old_sessions_alive": sum(ref() is not None for ref in sessions),
            }
            rows.append(row | heap())
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    return {"config": config, "start": start, "swaps": rows}


# --- ONNX Runtime's own allocator statistics ----------------------------------------------------
def ort_arena_mib(model_path: Path) -> dict[str, float]:
    """The CPU arena of one session (ONNX Runtime's verbose log: "Total allocated bytes") after
    the warm-up, the batch probe and the soak's traffic, and whether it grows on repeats."""
    import onnxruntime as ort

    from src.onnx_model import _session_options

    options = _session_options(1)
    options.log_severity_level = 0
    ort.set_default_logger_severity(0)  # the arena logs through the default logger
    stages = {
        "warm-up (1, 2)": (1, 2),
        "probe (16)": (PROBE_BATCH,),
        "traffic (1, 4) x 50": (1, 4) * 50,
    }
    found: dict[str, float] = {}
    with tempfile.TemporaryFile("w+") as log:
        saved = os.dup(2)
        os.dup2(log.fileno(), 2)
        try:
            session = ort.InferenceSession(
                str(model_path), options, providers=["CPUExecutionProvider"]
            )
            for stage, batches in stages.items():
                for batch in batches:
                    session.run(None, {"images": np.zeros((batch, 1, 28, 28), np.float32)})
                sys.stderr.flush()
                log.seek(0)
                totals = re.findall(r"Total allocated bytes: (\d+)", log.read())
                found[stage] = int(totals[-1]) / 2**20 if totals else 0.0
            del session
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            ort.set_default_logger_severity(3)
    return found


# --- the report -------------------------------------------------------------------------------
def run_config(config: str, model_path: Path, swaps: int, settle_s: float) -> dict[str, Any]:
    env = {**os.environ, **CONFIGS[config][1]}
    argv = [sys.executable, "-m", "benchmarks.bench_swap_memory", "--child", config]
    argv += ["--model", str(model_path), "--swaps", str(swaps), "--settle-s", str(settle_s)]
    done = subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise SystemExit(f"configuration {config} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def summary(results: list[dict[str, Any]], arena: dict[str, float]) -> list[str]:
    lines = [
        "| configuration | RSS growth after swap 1 / half / last (MiB) | C heap free at the end (MiB) | "
        "C heap in use, growth (MiB) | Python traced, growth (MiB) | load peak over RSS before, max (MiB) | old sessions alive |",
        "|---|---|---|---|---|---|---|",
    ]
    for result in results:
        start, rows = result["start"], result["swaps"]
        growth = [row["rss_mib"] - start["rss_mib"] for row in rows]
        half = growth[len(growth) // 2 - 1]
        last = rows[-1]
        lines.append(
            f"| {result['config']}: {CONFIGS[result['config']][0]} | "
            f"{growth[0]:+.1f} / {half:+.1f} / {growth[-1]:+.1f} | "
            f"{last.get('free_mib', float('nan')):.1f} | "
            f"{last.get('in_use_mib', float('nan')) - start.get('in_use_mib', float('nan')):+.1f} | "
            f"{last['python_mib'] - start['python_mib']:+.2f} | "
            f"{max(row['load_peak_over_before_mib'] for row in rows):.1f} | "
            f"{last['old_sessions_alive']} |"
        )
    lines.append("")
    lines.append(
        "ONNX Runtime's arena of one session (its own count, MiB): "
        + ", ".join(f"after {stage}: {mib:.1f}" for stage, mib in arena.items())
    )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_swap_memory", description=__doc__
    )
    parser.add_argument("--swaps", type=int, default=20)
    parser.add_argument("--settle-s", type=float, default=0.5, help="traffic after each swap")
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--model", type=Path, help="an ONNX model (default: the stand-in)")
    parser.add_argument("--child", choices=list(CONFIGS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.model, args.swaps, args.settle_s)))
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-swap-") as tmp:
        model_path = args.model or export_standin(Path(tmp))
        arena = ort_arena_mib(model_path)
        results = [run_config(c, model_path, args.swaps, args.settle_s) for c in args.configs]
    failed = checks(results)
    print("\n".join(summary(results, arena)))
    print("Checks: " + ("; ".join(failed) if failed else "all passed"))
    out = REPO_ROOT / "outputs" / "benchmarks" / "bench_swap_memory.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"ort_arena_mib": arena, "results": results}, indent=2))
    return 1 if failed else 0


def checks(results: list[dict[str, Any]]) -> list[str]:
    """No old session alive after any swap; the fix keeps RSS within ``PINNED_LIMIT_MIB``."""
    failed = []
    for result in results:
        rows = result["swaps"]
        if rows[-1]["old_sessions_alive"]:
            failed.append(f"{result['config']}: an old session is still alive after the swaps")
        growth = max(row["rss_mib"] for row in rows) - result["start"]["rss_mib"]
        if result["config"] == "pinned" and growth > PINNED_LIMIT_MIB:
            failed.append(f"pinned: RSS grew {growth:.1f} MiB (limit {PINNED_LIMIT_MIB:g})")
    return failed


if __name__ == "__main__":
    raise SystemExit(main())
