"""Validation time of the full 60,000-image training table (acceptance: <= 5 s, every pixel checked).

    python -m benchmarks.bench_validation [--data ../shared/fashion-mnist] [--repeats 3] [--naive]

Times reading the IDX files, the one-off Great Expectations import, and ``src.data.validation.
validate`` (numpy row profile + GX suites) on the full table. ``--naive`` also times the naive
suite, one ``expect_column_values_to_be_between(0, 255)`` + ``..._to_not_be_null`` per pixel
column (1,568 expectations on the raw table), for comparison (the README reports the figures).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from src.config import PROJECT_ROOT, load_config
from src.data.io import PIXEL_COLUMNS, read_table
from src.data.validation import validate


def naive_validation(table: object) -> tuple[bool, float]:
    import great_expectations as gx
    import great_expectations.expectations as gxe
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = (
        context.data_sources.add_pandas("naive")
        .add_dataframe_asset("raw")
        .add_batch_definition_whole_dataframe("all")
        .get_batch(batch_parameters={"dataframe": table})
    )
    expectations: list[gxe.Expectation] = []
    for column in PIXEL_COLUMNS:
        expectations.append(
            gxe.ExpectColumnValuesToBeBetween(column=column, min_value=0, max_value=255)
        )
        expectations.append(gxe.ExpectColumnValuesToNotBeNull(column=column))
    suite = gx.ExpectationSuite(name="naive", expectations=expectations)
    start = time.perf_counter()
    result = batch.validate(suite)
    return bool(result.success), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, default=PROJECT_ROOT.parent / "shared" / "fashion-mnist"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--naive", action="store_true", help="also time the per-column suite (slow)"
    )
    args = parser.parse_args()
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

    start = time.perf_counter()
    table = read_table(args.data)
    read_s = time.perf_counter() - start
    start = time.perf_counter()
    import great_expectations  # noqa: F401

    import_s = time.perf_counter() - start
    cfg = load_config().data
    times = []
    for _ in range(args.repeats):
        report = validate(table, cfg)
        times.append(report.elapsed_s)
    rows = [
        ("read IDX gz (60,000 x 785)", read_s, ""),
        ("import great_expectations (once)", import_s, ""),
        (
            f"validate(): profile + {len(report.results)} GX expectations",
            min(times),
            f"median {statistics.median(times):.2f} s of {args.repeats}; success={report.success}",
        ),
    ]
    if args.naive:
        ok, naive_s = naive_validation(table)
        rows.append(("naive suite: 1,568 per-column expectations", naive_s, f"success={ok}"))
    else:
        rows.append(
            ("naive suite: 1,568 per-column expectations", float("nan"), "not run (add --naive)")
        )
    print(f"{'step':<48} {'seconds':>8}  notes")
    print("-" * 90)
    for name, seconds, note in rows:
        print(f"{name:<48} {seconds:>8.2f}  {note}")
    print(f"\nacceptance (<= 5 s for the full table): {'PASS' if min(times) <= 5.0 else 'FAIL'}")


if __name__ == "__main__":
    main()
