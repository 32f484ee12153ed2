"""Run every benchmark, one after another, each in its own process (``make benchmarks``).

    python -m benchmarks.run_all [--only bench_api bench_validation]

Run it on a quiet machine: the figures are wall-clock times. Each benchmark prints its own report
(and writes JSON under ``outputs/benchmarks/`` where it does); this runner only sequences them and
says which ones failed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

BENCHMARKS_DIR = Path(__file__).resolve().parent


def discover() -> list[str]:
    """Every ``benchmarks/bench_*.py`` module, in name order."""
    return sorted(path.stem for path in BENCHMARKS_DIR.glob("bench_*.py"))


def run_one(name: str) -> tuple[int, float]:
    started = time.perf_counter()
    print(f"=== {name} ===", flush=True)
    code = subprocess.call([sys.executable, "-m", f"benchmarks.{name}"])
    return code, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run_all", description=__doc__)
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these benchmarks")
    args = parser.parse_args(argv)
    names = discover()
    unknown = sorted(set(args.only or []) - set(names))
    if unknown:
        print(f"error: unknown benchmark(s) {unknown}; choose from {names}.", file=sys.stderr)
        return 2
    failed = []
    for name in args.only or names:
        code, seconds = run_one(name)
        print(f"=== {name}: {'ok' if code == 0 else f'FAILED (exit {code})'} in {seconds:.0f} s")
        if code != 0:
            failed.append(name)
    if failed:
        print(f"Failed: {', '.join(failed)}; rerun one with python -m benchmarks.<name>.")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
