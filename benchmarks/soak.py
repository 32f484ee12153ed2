"""Soak: the whole edge under steady mixed traffic for a long time (``make soak``).

An MLflow server (sqlite store, its own artefact proxy) holds a model with the default
architecture and test-time augmentation (random weights: the same compute), exported and
promoted by the product's own code. deployments/stack.py starts two API replicas following it,
nginx in front of them and Prometheus. Then:

1. capacity: ``wrk`` posts single images through the proxy as fast as it can (``--capacity-s``);
2. the soak: three ``wrk`` processes at about half that capacity, 70 % single images, 20 %
   batches, 10 % bad or hostile requests (no image, no form, a header over the proxy's cap,
   ``/metrics``, a path escape), in segments of ``--segment-s``; a promotion every
   ``--promote-every-min`` minutes (as often as every segment) and one registry outage (the
   MLflow server stopped for ``--outage-s`` and started again) half-way;
3. the checks: no 5xx and no socket error, every answered prediction logged (written + dropped =
   answered, dropped 0), RSS growth of each replica after the warm-up ``<= 50 MiB`` and no upward
   trend (the mean RSS of the last third of the segments after the warm-up within 5 MiB of the
   middle third's), p50/p99 per segment (each segment labelled with what happened in it), the
   machine named. Each segment records each replica's RSS at its end and its peak (sampled every
   ``RSS_SAMPLE_S``: a promotion's transient, two models loaded at once).

    python -m benchmarks.soak                   # the default length, on a quiet machine
    python -m benchmarks.soak --promote-every-min 2   # the default length, a swap every 2nd segment
    python -m benchmarks.soak --minutes 2       # the short form: proves it works, measures little

Results: a markdown report on stdout and JSON in ``outputs/benchmarks/soak.json``; exit 1 when a
check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.bench_api import load_images, png_bytes
from deployments import stack as stack_module
from deployments.edge import binary
from deployments.stack import Stack

REPO_ROOT = Path(__file__).resolve().parents[1]
LUA = Path(__file__).resolve().parent / "soak.lua"
BOUNDARY = "soakboundary"
BATCH_IMAGES = 4
MIX = {"single": 0.7, "batch": 0.2, "bad": 0.1}  # shares of the requests
CONNECTIONS = {"single": 4, "batch": 2, "bad": 1}
RSS_LIMIT_MIB = 50.0
RSS_TREND_LIMIT_MIB = 5.0  # last third's mean RSS over the middle third's
RSS_SAMPLE_S = 0.25
MODEL_NAME = "soak-model"


# --- the registry -------------------------------------------------------------------------------
@dataclass
class Registry:
    folder: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        argv = [str(Path(sys.executable).parent / "mlflow"), "server"]
        argv += ["--backend-store-uri", f"sqlite:///{self.folder}/mlflow.db"]
        argv += ["--artifacts-destination", str(self.folder / "artifacts"), "--serve-artifacts"]
        argv += ["--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        env = {
            **os.environ,
            **stack_module.QUIET_ENV,
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        }
        with (self.folder / "mlflow.log").open("ab") as log:
            self.process = subprocess.Popen(
                argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + 120
        while not _ok(f"{self.url}/health"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the MLflow server did not start; see {self.folder}/mlflow.log")
            time.sleep(0.3)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)


def _ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def log_standin(url: str) -> tuple[str, str]:
    """The default architecture + TTA (random weights) logged with the trainer's code: (model
    source, run id)."""
    import mlflow

    from src.config import load_config
    from src.model import build_model
    from src.model_io import log_classifier

    cfg = load_config().train
    model = build_model(cfg).eval()
    mlflow.set_tracking_uri(url)
    experiment = mlflow.create_experiment("soak")
    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.log_params({"flip_tta": cfg.flip_tta})
        info = log_classifier(model, metadata={"flip_tta": cfg.flip_tta})
    return info.model_uri, run.info.run_id


def promote_new_version(url: str, source: str, run_id: str) -> str:
    from src.registry import get_client, promote, record_gate_decision, register_candidate

    client = get_client(url)
    version = str(register_candidate(client, MODEL_NAME, model_uri=source, run_id=run_id).version)
    record_gate_decision(client, MODEL_NAME, version, passed=True, reasons=["soak"])
    promote(client, MODEL_NAME, version)
    return version


# --- traffic ------------------------------------------------------------------------------------
def write_bodies(folder: Path) -> None:
    images, _ = load_images(64)
    pngs = [png_bytes(image) for image in images]

    def form(field_name: str, blobs: list[bytes]) -> bytes:
        parts = [
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{field_name}"; '
            f'filename="{i}.png"\r\nContent-Type: image/png\r\n\r\n'.encode()
            + blob
            + b"\r\n"
            for i, blob in enumerate(blobs)
        ]
        return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()

    (folder / "single.body").write_bytes(form("file", pngs[:1]))
    (folder / "batch.body").write_bytes(form("files", pngs[1 : 1 + BATCH_IMAGES]))
    (folder / "bad.body").write_bytes(form("file", [b"this is not an image"]))


def wrk(folder: Path, url: str, cls: str, seconds: float, delay_ms: float) -> subprocess.Popen[str]:
    connections = CONNECTIONS[cls]
    argv = [binary("wrk"), "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s"]
    argv += ["--timeout", "30s", "-s", str(LUA), url]
    env = {
        **os.environ,
        "SOAK_DIR": str(folder),
        "SOAK_CLASS": cls,
        "SOAK_DELAY_MS": str(round(delay_ms)),
    }
    return subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def wrk_result(process: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = process.communicate(timeout=600)
    match = re.search(r"^SOAK-RESULT (\{.*\})$", out, flags=re.MULTILINE)
    if process.returncode != 0 or match is None:
        raise SystemExit(f"wrk failed (exit {process.returncode}):\n{out[-2000:]}")
    result: dict[str, Any] = json.loads(match.group(1))
    return result


def capacity(folder: Path, url: str, seconds: float) -> float:
    """Single-image requests per second through the proxy, as fast as 8 connections go."""
    argv = [binary("wrk"), "-t2", "-c8", f"-d{max(1, round(seconds))}s", "-s", str(LUA), url]
    env = {**os.environ, "SOAK_DIR": str(folder), "SOAK_CLASS": "single", "SOAK_DELAY_MS": "0"}
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600).stdout
    match = re.search(r"^SOAK-RESULT (\{.*\})$", out, flags=re.MULTILINE)
    if match is None:
        raise SystemExit(f"wrk failed:\n{out[-2000:]}")
    result = json.loads(match.group(1))
    return float(result["requests"]) / (result["duration_us"] / 1e6)


def pacing(single_capacity: float, load: float) -> dict[str, float]:
    """Per-connection delay (ms) of each class so that the image work is ``load`` × capacity
    (a batch image costs about one single image)."""
    images_per_request = MIX["single"] + MIX["batch"] * BATCH_IMAGES
    requests_per_s = load * single_capacity / images_per_request
    return {cls: CONNECTIONS[cls] * 1000.0 / (share * requests_per_s) for cls, share in MIX.items()}


# --- measurements -------------------------------------------------------------------------------
def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def counters(url: str) -> dict[str, float]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()
    names = ("written", "dropped")
    found = {
        name: float(m.group(1))
        for name in names
        if (m := re.search(rf"^prediction_log_records_{name}_total (\S+)$", text, re.M))
    }
    depth = re.search(r"^prediction_log_queue_depth (\S+)$", text, re.M)
    found["queue"] = float(depth.group(1)) if depth else 0.0
    # Images the replica classified and answered (a client that stops mid-request still got one).
    answers = re.findall(r"^predictions_total\{[^}]*\} (\S+)$", text, re.M)
    found["answered"] = sum(float(value) for value in answers)
    return found


def log_totals(stack: Stack) -> dict[str, float]:
    """Written and dropped records of all replicas, once their queues are empty."""
    deadline = time.monotonic() + 60
    while True:
        each = [counters(url) for url in stack.api_urls]
        if all(c["queue"] == 0 for c in each) or time.monotonic() > deadline:
            return {k: sum(c.get(k, 0.0) for c in each) for k in ("written", "dropped", "answered")}
        time.sleep(0.5)


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown CPU",
    )
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


@dataclass
class Segment:
    index: int
    phase: str
    event: str
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    rss_mib: list[float] = field(default_factory=list)  # each replica's, at the segment's end
    peak_rss_mib: list[float] = field(default_factory=list)  # each replica's highest sample
    event_s: float | None = None


@dataclass
class Plan:
    segments: int
    segment_s: float
    warmup_segments: int
    promote_every: int  # segments
    outage_segment: int

    def event(self, index: int) -> str:
        if index == self.outage_segment:
            return "registry restart"
        # The second segment of every ``promote_every`` after the warm-up (every one when 1).
        soak_index = index - self.warmup_segments
        if soak_index >= 0 and soak_index % self.promote_every == min(1, self.promote_every - 1):
            return "promotion"
        return ""


def make_plan(args: argparse.Namespace) -> Plan:
    total_s = args.minutes * 60
    segment_s = args.segment_s or min(60.0, max(10.0, total_s / 6))
    segments = max(4, round(total_s / segment_s))
    warmup = max(1, round(args.warmup_min * 60 / segment_s)) if args.minutes > 5 else 1
    promote_every = max(1, round(args.promote_every_min * 60 / segment_s))
    return Plan(segments, segment_s, warmup, promote_every, (segments + warmup) // 2)


class PeakRss:
    """Each of ``pids``' highest RSS, sampled every ``RSS_SAMPLE_S`` while the block runs."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.peaks = [0.0] * len(pids)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while True:
            self.peaks = [
                max(p, rss_mib(pid)) for p, pid in zip(self.peaks, self.pids, strict=True)
            ]
            if self._stop.wait(RSS_SAMPLE_S):
                return

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def replica_pids(ctx: SoakContext) -> list[int]:
    return [ctx.stack.pids[f"api-{i + 1}"] for i in range(len(ctx.stack.api_ports))]


def run_segment(segment: Segment, plan: Plan, ctx: SoakContext, delays: dict[str, float]) -> None:
    with PeakRss(replica_pids(ctx)) as peaks:
        run_traffic(segment, plan, ctx, delays)
    segment.rss_mib = [rss_mib(pid) for pid in replica_pids(ctx)]
    segment.peak_rss_mib = peaks.peaks


def run_traffic(segment: Segment, plan: Plan, ctx: SoakContext, delays: dict[str, float]) -> None:
    processes = {
        cls: wrk(ctx.bodies, ctx.stack.proxy_url, cls, plan.segment_s, delays[cls]) for cls in MIX
    }
    started = time.monotonic()
    if segment.event:
        time.sleep(plan.segment_s / 4)
        segment.event_s = time.monotonic() - started
        if segment.event == "promotion":
            ctx.versions.append(promote_new_version(ctx.registry.url, *ctx.model))
        else:
            ctx.registry.stop()
            time.sleep(ctx.outage_s)
            ctx.registry.start()
    segment.results = {cls: wrk_result(process) for cls, process in processes.items()}


@dataclass
class SoakContext:
    stack: Stack
    registry: Registry
    bodies: Path
    model: tuple[str, str]  # (source, run id) every promotion registers again
    outage_s: float
    versions: list[str] = field(default_factory=list)


def answered_images(segments: list[Segment]) -> int:
    total = 0
    for segment in segments:
        total += int(segment.results["single"]["statuses"].get("200", 0))
        total += BATCH_IMAGES * int(segment.results["batch"]["statuses"].get("200", 0))
    return total


def server_errors(segments: list[Segment]) -> dict[str, int]:
    """5xx answers and socket errors of the prediction classes, summed over the segments."""
    found: dict[str, int] = {}
    for segment in segments:
        for cls, result in segment.results.items():
            for status, count in result["statuses"].items():
                if status.startswith("5"):
                    found[f"{cls} {status}"] = found.get(f"{cls} {status}", 0) + int(count)
            if cls != "bad":  # hostile requests may be cut off by the proxy on purpose
                for kind, count in result["errors"].items():
                    if count:
                        found[f"{cls} socket {kind}"] = found.get(f"{cls} socket {kind}", 0) + count
    return found


def checks(report: dict[str, Any]) -> list[str]:
    failed = []
    if report["server_errors"]:
        failed.append(f"5xx or socket errors: {report['server_errors']}")
    log = report["prediction_log"]
    if log["written"] + log["dropped"] != log["answered"]:
        failed.append(f"written + dropped != answered: {log}")
    if log["dropped"]:
        failed.append(f"{log['dropped']:.0f} records dropped")
    worst = max(report["rss_growth_after_warmup_mib"])
    if worst > RSS_LIMIT_MIB:
        failed.append(f"RSS grew {worst:.1f} MiB after the warm-up (limit {RSS_LIMIT_MIB})")
    trend = [t for t in report["rss_trend_mib"] if t is not None]
    if trend and max(trend) > RSS_TREND_LIMIT_MIB:
        failed.append(
            f"RSS trends upward: the last third's mean is {max(trend):.1f} MiB over the middle "
            f"third's (limit {RSS_TREND_LIMIT_MIB}): something stays after a swap; find what with "
            "python -m benchmarks.bench_swap_memory"
        )
    return failed


def rss_trend(rss: list[float]) -> float | None:
    """Mean of the last third of ``rss`` minus the mean of the middle third (``None`` when there
    are too few segments to have thirds)."""
    third = len(rss) // 3
    if third == 0:
        return None
    middle = rss[len(rss) - 2 * third : len(rss) - third]
    last = rss[len(rss) - third :]
    return sum(last) / third - sum(middle) / third


def summary(report: dict[str, Any]) -> list[str]:
    lines = [
        f"# Soak: {report['minutes']} min through the proxy, {report['machine']}",
        "",
        f"Capacity (single images, 8 connections): {report['capacity_rps']:.0f} req/s; "
        f"soak load {report['load']:.0%} of it. Versions promoted: {report['promoted']}.",
        "",
        "| segment | phase | event | single p50/p99 ms | batch p50/p99 ms | req/s (single, batch, bad) | 5xx | RSS MiB at the end (peak), replicas |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for seg in report["segments"]:
        r = seg["results"]
        rates = ", ".join(f"{r[c]['requests'] / (r[c]['duration_us'] / 1e6):.0f}" for c in MIX)
        fivexx = sum(int(n) for c in MIX for s, n in r[c]["statuses"].items() if s.startswith("5"))
        lines.append(
            f"| {seg['index']} | {seg['phase']} | {seg['event'] or '-'} | "
            f"{r['single']['p50_ms']:.1f} / {r['single']['p99_ms']:.1f} | "
            f"{r['batch']['p50_ms']:.1f} / {r['batch']['p99_ms']:.1f} | {rates} | {fivexx} | "
            + " / ".join(
                f"{m:.0f} ({p:.0f})"
                for m, p in zip(seg["rss_mib"], seg["peak_rss_mib"], strict=True)
            )
            + " |"
        )
    log = report["prediction_log"]
    lines += [
        "",
        f"5xx / socket errors: {report['server_errors'] or 'none'}. Prediction log: "
        f"{log['answered']:.0f} answered by the replicas ({log['answered_seen_by_clients']} "
        f"seen by wrk, which drops its last requests in flight), {log['written']:.0f} written, "
        f"{log['dropped']:.0f} dropped.",
        "RSS growth after the warm-up per replica: "
        + ", ".join(f"{g:.1f} MiB" for g in report["rss_growth_after_warmup_mib"])
        + f" (limit {RSS_LIMIT_MIB:.0f}); last third's mean over the middle third's: "
        + ", ".join("-" if t is None else f"{t:+.1f} MiB" for t in report["rss_trend_mib"])
        + f" (limit {RSS_TREND_LIMIT_MIB:.0f}).",
        "Checks: " + ("all passed" if not report["failed"] else "; ".join(report["failed"])),
    ]
    return lines


def soak(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    plan = make_plan(args)
    registry = Registry(workdir / "registry", stack_module.free_ports(1)[0])
    registry.folder.mkdir()
    registry.start()
    try:
        model = log_standin(registry.url)
        first = promote_new_version(registry.url, *model)
        env = {"MLFLOW_REGISTERED_MODEL_NAME": MODEL_NAME, "SERVE_POLL_INTERVAL_S": "2"}
        with stack_module.running_edge(workdir / "edge", registry.url, replica_env=env) as stack:
            ctx = SoakContext(stack, registry, workdir / "bodies", model, args.outage_s, [first])
            ctx.bodies.mkdir()
            write_bodies(ctx.bodies)
            _wait_ready(stack)
            return run_plan(args, plan, ctx)
    finally:
        registry.stop()


def _wait_ready(stack: Stack) -> None:
    deadline = time.monotonic() + 180
    while not all(_ok(f"{url}/ready") for url in stack.api_urls):
        if time.monotonic() > deadline:
            raise SystemExit(f"the replicas never became ready; see {stack.root}/api-*.log")
        time.sleep(0.5)


def run_plan(args: argparse.Namespace, plan: Plan, ctx: SoakContext) -> dict[str, Any]:
    capacity_rps = capacity(ctx.bodies, ctx.stack.proxy_url, args.capacity_s)
    delays = pacing(capacity_rps, args.load)
    before = log_totals(ctx.stack)
    segments = []
    for index in range(plan.segments):
        phase = "warm-up" if index < plan.warmup_segments else "soak"
        segment = Segment(index, phase, plan.event(index))
        run_segment(segment, plan, ctx, delays)
        segments.append(segment)
        print(f"segment {index} ({phase}, {segment.event or 'steady'}) done", file=sys.stderr)
    after = log_totals(ctx.stack)
    warm = segments[plan.warmup_segments - 1].rss_mib
    growth = [
        max(seg.rss_mib[i] for seg in segments[plan.warmup_segments - 1 :]) - warm[i]
        for i in range(len(warm))
    ]
    report: dict[str, Any] = {
        "minutes": args.minutes,
        "machine": machine(),
        "capacity_rps": capacity_rps,
        "load": args.load,
        "promoted": ctx.versions,
        "segments": [asdict(seg) for seg in segments],
        "server_errors": server_errors(segments),
        "prediction_log": {
            "answered": after["answered"] - before["answered"],
            "answered_seen_by_clients": answered_images(segments),
            "written": after["written"] - before["written"],
            "dropped": after["dropped"] - before["dropped"],
        },
        "rss_growth_after_warmup_mib": growth,
        "rss_trend_mib": [
            rss_trend([seg.rss_mib[i] for seg in segments[plan.warmup_segments :]])
            for i in range(len(warm))
        ],
    }
    report["failed"] = checks(report)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=30.0, help="length of the soak")
    parser.add_argument("--segment-s", type=float, help="segment length (default: 60 s or less)")
    parser.add_argument("--warmup-min", type=float, default=2.0)
    parser.add_argument("--promote-every-min", type=float, default=5.0)
    parser.add_argument("--outage-s", type=float, default=10.0, help="registry down this long")
    parser.add_argument("--capacity-s", type=float, default=10.0)
    parser.add_argument("--load", type=float, default=0.5, help="share of the measured capacity")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        report = soak(args, Path(tmp))
    print("\n".join(summary(report)))
    out = REPO_ROOT / "outputs" / "benchmarks" / "soak.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    return 1 if report["failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
