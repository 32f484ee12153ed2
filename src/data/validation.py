"""Great Expectations 1.x validation of the raw training table, fast enough for every pixel.

A naive suite (one expectation per pixel column, 784 of them) is far too slow on 60,000 rows
(``benchmarks/bench_validation.py`` measures this module; the README holds the figures).
Instead numpy reduces the 784 pixels of each row to a compact *row profile* (min, max, null count,
non-integer count, exact duplicate-image group, duplicate flags) and GX runs its expectations on
that profile (one row per raw row, so the row count is checked there too), on a 10-row class table
and on the raw table's header (column names and order). Every pixel is still checked: a single
bad pixel moves its row's min/max/null/non-integer value, which fails the expectation, and the
error names the row, the pixel column and the value.

Duplicate policy (identical images):
    * Identical images *with the same label* are tolerated while the redundant copies stay at or
      below ``cfg.max_duplicate_fraction`` of the rows (GX
      ``expect_column_proportion_of_unique_values_to_be_between`` on the image group, min
      ``1 - max_duplicate_fraction``). They are kept (they are genuine samples) and the split puts
      every copy of an image into the same part, so none leaks between train/val/test.
    * Identical images with *different* labels are label noise that no model can get right: any
      such group fails validation (``duplicate_label_conflict``) and the error lists the rows.
    * The published training set holds no byte-identical images (measured: 60,000 distinct
      images); the ~43 "duplicate pairs" folklore concerns near-duplicates or train/test overlap.
      The checks stay in place for other sources and future releases.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from src.config.data import DataConfig
from src.data.io import COLUMNS, N_PIXELS
from src.data.split import image_groups
from src.labels import NUM_CLASSES

SUITE_NAME = "fashion-mnist-train"
_EXAMPLES = 5


class DataValidationError(ValueError):
    """The data failed one or more expectations; ``report`` holds the details."""

    def __init__(self, message: str, report: ValidationReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class ExpectationOutcome:
    expectation: str  # e.g. expect_column_values_to_be_between
    target: str  # "rows.pixel_max", "table", "classes.share"
    success: bool
    observed: str  # one-line description of what was found
    unexpected_count: int = 0
    examples: list[str] = field(default_factory=list)


@dataclass
class ValidationReport:
    success: bool
    n_rows: int
    results: list[ExpectationOutcome]
    elapsed_s: float
    stats: dict[str, Any]
    json_path: Path | None = None
    markdown: str = ""

    @property
    def failures(self) -> list[ExpectationOutcome]:
        return [r for r in self.results if not r.success]

    def failure_message(self) -> str:
        parts = []
        for failed in self.failures:
            examples = f" e.g. {'; '.join(failed.examples[:3])}" if failed.examples else ""
            parts.append(f"{failed.expectation}({failed.target}): {failed.observed}{examples}")
        where = f" (full result: {self.json_path})" if self.json_path else ""
        return (
            f"Data validation failed ({len(parts)} of {len(self.results)} expectations): "
            + " | ".join(parts)
            + f"{where}; fix the data or point DATA_SOURCE=/path/to/folder at intact files."
        )


# --- the row profile ----------------------------------------------------------------------------


@dataclass
class Profile:
    rows: pd.DataFrame  # one row per image
    classes: pd.DataFrame  # one row per class 0..9
    pixels: np.ndarray  # the raw (N, 784) pixel block (for naming bad pixels)
    stats: dict[str, Any]


NUMERIC_KINDS = ("integer", "float")


def column_kind(dtype: Any) -> str:
    """``integer``, ``float``, ``boolean`` or ``text`` (anything else is named by its dtype)."""
    if pd.api.types.is_bool_dtype(dtype):
        return "boolean"
    if pd.api.types.is_integer_dtype(dtype):
        return "integer"
    if pd.api.types.is_float_dtype(dtype):
        return "float"
    if pd.api.types.is_object_dtype(dtype) or pd.api.types.is_string_dtype(dtype):
        return "text"
    return str(dtype)


def pixel_types(table: pd.DataFrame) -> pd.DataFrame:
    """One row per pixel column: its name and :func:`column_kind`."""
    block = table.iloc[:, 1 : 1 + N_PIXELS]
    return pd.DataFrame(
        {"column": list(block.columns), "kind": [column_kind(d) for d in block.dtypes]}
    )


def _numeric_block(table: pd.DataFrame) -> np.ndarray:
    block = table.iloc[:, 1 : 1 + N_PIXELS]
    if all(column_kind(d) in NUMERIC_KINDS for d in block.dtypes):
        return block.to_numpy()
    # Non-numeric cells become NaN (and so count as nulls); io rejects such CSVs earlier.
    return block.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)


def image_group_ids(pixels: np.ndarray) -> np.ndarray:
    """Exact duplicate-image group ids over the pixel block (see :func:`src.data.split.image_groups`)."""
    if pixels.dtype != np.uint8:
        as_float = pixels.astype(np.float64, copy=False)
        fits = (
            np.isfinite(as_float).all()
            and (as_float == np.round(as_float)).all()
            and (pixels.size == 0 or (as_float.min() >= 0 and as_float.max() <= 255))
        )
        if not fits:  # invalid values: group on the exact float bytes (slow path, bad data only)
            void = np.ascontiguousarray(as_float).view(np.dtype((np.void, 8 * pixels.shape[1])))
            return np.unique(void.ravel(), return_inverse=True)[1].ravel().astype(np.int64)
        pixels = as_float.astype(np.uint8)
    return image_groups(pixels)


def build_profile(table: pd.DataFrame) -> Profile:
    """Reduce each row's 784 pixels to min/max/nulls/non-integers/hash (numpy, vectorised)."""
    n = len(table)
    pixels = _numeric_block(table)
    labels = pd.to_numeric(table.iloc[:, 0], errors="coerce").to_numpy(dtype=np.float64)
    if pixels.shape[1] == 0 or n == 0:
        pix_min = pix_max = np.full(n, np.nan)
        nulls = non_int = np.zeros(n, dtype=np.int64)
    elif np.issubdtype(pixels.dtype, np.integer):
        pix_min = pixels.min(axis=1).astype(np.float64)
        pix_max = pixels.max(axis=1).astype(np.float64)
        nulls = non_int = np.zeros(n, dtype=np.int64)
    else:
        values = pixels.astype(np.float64, copy=False)
        missing = np.isnan(values)
        nulls = missing.sum(axis=1)
        non_int = ((values != np.floor(values)) & ~missing).sum(axis=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows -> NaN min/max
            pix_min = np.nanmin(values, axis=1)
            pix_max = np.nanmax(values, axis=1)
    codes = image_group_ids(pixels) if n else np.zeros(0, dtype=np.int64)
    group_sizes = np.bincount(codes)[codes] if n else np.zeros(0, dtype=np.int64)
    label_keys = pd.Series(labels).fillna(-1).to_numpy()
    distinct_labels = (
        pd.DataFrame({"g": codes, "y": label_keys}).groupby("g")["y"].nunique().to_numpy()
        if n
        else np.zeros(0, dtype=np.int64)
    )
    conflict = distinct_labels[codes] > 1 if n else np.zeros(0, dtype=bool)
    rows = pd.DataFrame(
        {
            "label": labels,
            "pixel_min": pix_min,
            "pixel_max": pix_max,
            "pixel_nulls": nulls.astype(np.int64),
            "pixel_non_integer": non_int.astype(np.int64),
            "image_group": codes,
            "duplicate_count": group_sizes.astype(np.int64),
            "duplicate_label_conflict": conflict,
        }
    )
    in_range = labels[np.isfinite(labels)]
    counts = np.array([(in_range == c).sum() for c in range(NUM_CLASSES)], dtype=np.int64)
    classes = pd.DataFrame(
        {"label": np.arange(NUM_CLASSES), "count": counts, "share": counts / max(n, 1)}
    )
    n_groups = int(codes.max()) + 1 if n else 0
    stats = {
        "rows": n,
        "columns": int(table.shape[1]),
        "distinct_images": n_groups,
        "duplicate_rows": n - n_groups,
        "duplicate_groups": int((np.bincount(codes) > 1).sum()) if n else 0,
        "conflicting_duplicate_rows": int(conflict.sum()),
        "class_counts": {int(c): int(k) for c, k in zip(classes["label"], counts, strict=True)},
        "pixel_column_kinds": {
            str(name): column_kind(dtype)
            for name, dtype in table.iloc[:, 1 : 1 + N_PIXELS].dtypes.items()
            if column_kind(dtype) not in NUMERIC_KINDS
        },
    }
    return Profile(rows=rows, classes=classes, pixels=pixels, stats=stats)


# --- Great Expectations -------------------------------------------------------------------------


def _suites(cfg: DataConfig) -> dict[str, Any]:
    import great_expectations as gx
    import great_expectations.expectations as gxe

    labels = list(range(NUM_CLASSES))
    return {
        "table": gx.ExpectationSuite(
            name=f"{SUITE_NAME}-table",
            expectations=[
                gxe.ExpectTableColumnsToMatchOrderedList(column_list=COLUMNS),
            ],
        ),
        # Pixels are numbers: a boolean column would pass every range check as 0/1, and text
        # would be coerced; both are refused by type, before any value is looked at.
        "pixel_types": gx.ExpectationSuite(
            name=f"{SUITE_NAME}-pixel-types",
            expectations=[
                gxe.ExpectColumnValuesToBeInSet(column="kind", value_set=list(NUMERIC_KINDS)),
            ],
        ),
        "rows": gx.ExpectationSuite(
            name=f"{SUITE_NAME}-rows",
            expectations=[
                gxe.ExpectTableRowCountToBeBetween(min_value=cfg.min_rows, max_value=cfg.max_rows),
                gxe.ExpectColumnValuesToNotBeNull(column="label"),
                gxe.ExpectColumnValuesToBeInSet(column="label", value_set=labels),
                gxe.ExpectColumnValuesToBeBetween(column="pixel_nulls", min_value=0, max_value=0),
                gxe.ExpectColumnValuesToBeBetween(
                    column="pixel_non_integer", min_value=0, max_value=0
                ),
                gxe.ExpectColumnValuesToBeBetween(column="pixel_min", min_value=0, max_value=255),
                gxe.ExpectColumnValuesToBeBetween(column="pixel_max", min_value=0, max_value=255),
                gxe.ExpectColumnProportionOfUniqueValuesToBeBetween(
                    column="image_group", min_value=1.0 - cfg.max_duplicate_fraction, max_value=1.0
                ),
                gxe.ExpectColumnValuesToBeInSet(
                    column="duplicate_label_conflict", value_set=[False]
                ),
            ],
        ),
        "classes": gx.ExpectationSuite(
            name=f"{SUITE_NAME}-classes",
            expectations=[
                gxe.ExpectTableRowCountToEqual(value=NUM_CLASSES),
                gxe.ExpectColumnValuesToBeBetween(
                    column="share", min_value=cfg.class_share_min, max_value=cfg.class_share_max
                ),
            ],
        ),
    }


def _import_gx() -> None:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations  # noqa: F401


def _run_gx(frames: dict[str, pd.DataFrame], cfg: DataConfig) -> dict[str, Any]:
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_pandas("fashion-mnist")
    results: dict[str, Any] = {}
    for name, suite in _suites(cfg).items():
        batch_definition = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe(
            "all"
        )
        batch = batch_definition.get_batch(batch_parameters={"dataframe": frames[name]})
        results[name] = batch.validate(suite, result_format="SUMMARY")
    return results


# --- turning GX results into readable outcomes --------------------------------------------------


def _pixel_examples(profile: Profile, rows: list[int], kind: str) -> list[str]:
    out = []
    for row in rows[:_EXAMPLES]:
        values = profile.pixels[row].astype(np.float64, copy=False)
        if kind == "nulls":
            bad = np.flatnonzero(np.isnan(values))
        elif kind == "non_integer":
            bad = np.flatnonzero((values != np.floor(values)) & ~np.isnan(values))
        else:
            bad = np.flatnonzero((values < 0) | (values > 255))
        if bad.size:
            col = int(bad[0])
            out.append(f"row {row} pixel{col + 1}={exact(profile.pixels[row][col])}")
        else:
            out.append(f"row {row}")
    return out


def _outcome(suite: str, res: Any, profile: Profile) -> ExpectationOutcome:
    config = res.expectation_config
    kwargs = dict(config.kwargs)
    column = kwargs.get("column")
    target = f"{suite}.{column}" if column else suite
    result = dict(res.result or {})
    count = int(result.get("unexpected_count") or 0)
    indices = [int(i) for i in (result.get("partial_unexpected_index_list") or [])]
    values = list(result.get("partial_unexpected_list") or [])
    examples: list[str] = []
    exception = (res.exception_info or {}).get("exception_message") if res.exception_info else None
    if res.success:
        observed = "ok"
        if "observed_value" in result:
            value = result["observed_value"]
            shown = f"{len(value)} columns" if isinstance(value, list) else f"{value}"
            observed = f"ok (observed {shown})"
    elif exception:
        observed = f"could not be evaluated: {exception}"
    elif "observed_value" in result:
        observed = f"observed {result['observed_value']}"
        if config.type == "expect_table_columns_to_match_ordered_list":
            found = list(result["observed_value"])
            wrong = [
                f"column {i}: {a!r} (expected {b!r})"
                for i, (a, b) in enumerate(zip(found, COLUMNS, strict=False))
                if a != b
            ]
            observed = f"{len(found)} columns, expected {len(COLUMNS)} (label, pixel1..pixel784)"
            examples = wrong[:_EXAMPLES]
        elif config.type == "expect_column_proportion_of_unique_values_to_be_between":
            dup = profile.stats["duplicate_rows"]
            observed = (
                f"{dup} duplicate image rows ({dup / max(profile.stats['rows'], 1):.4%}) exceed "
                f"max_duplicate_fraction {1 - float(kwargs['min_value']):.4%}"
            )
            examples = _duplicate_examples(profile, conflicting=False)
        elif suite == "classes":
            shares = profile.classes
            bad = shares[
                (shares["share"] < kwargs.get("min_value", 0))
                | (shares["share"] > kwargs.get("max_value", 1))
            ]
            examples = [
                f"class {int(r.label)}: {r.share:.2%} ({int(r.count)} rows)"
                for r in bad.itertuples()
            ]
    else:
        observed = f"{count} unexpected rows"
        kind = {
            "pixel_nulls": "nulls",
            "pixel_non_integer": "non_integer",
            "pixel_min": "range",
            "pixel_max": "range",
        }.get(str(column))
        if kind:
            examples = _pixel_examples(profile, indices, kind)
        elif column == "duplicate_label_conflict":
            examples = _duplicate_examples(profile, conflicting=True)
        elif suite == "pixel_types":
            observed = f"{count} pixel columns are not numbers (integer or float)"
            examples = [f"column {name}: {kind}" for name, kind in _non_numeric(profile)]
        else:
            examples = [
                f"row {i}: {column}={exact(v)}" for i, v in zip(indices, values, strict=False)
            ][:_EXAMPLES]
        if suite == "classes":
            bad = profile.classes[
                (profile.classes["share"] < kwargs.get("min_value", 0))
                | (profile.classes["share"] > kwargs.get("max_value", 1))
            ]
            observed = f"{len(bad)} classes outside {kwargs.get('min_value'):.0%}..{kwargs.get('max_value'):.0%}"
            examples = [
                f"class {int(r.label)}: {r.share:.2%} ({int(r.count)} rows)"
                for r in bad.itertuples()
            ]
    return ExpectationOutcome(config.type, target, bool(res.success), observed, count, examples)


def exact(value: Any) -> str:
    """A value as it is, never rounded: 256, -1, 12.5, 255.0000001, nan; a non-number as its repr."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return str(int(value))
    if not isinstance(value, (float, np.floating)):
        return repr(value)
    number = float(value)
    return str(int(number)) if number.is_integer() else repr(number)


def _non_numeric(profile: Profile) -> list[tuple[str, str]]:
    kinds = profile.stats.get("pixel_column_kinds", {})
    return [(name, kind) for name, kind in kinds.items() if kind not in NUMERIC_KINDS][:_EXAMPLES]


def _duplicate_examples(profile: Profile, *, conflicting: bool) -> list[str]:
    rows = profile.rows
    mask = rows["duplicate_count"] > 1
    if conflicting:
        mask &= rows["duplicate_label_conflict"]
    groups = rows[mask].groupby("image_group", sort=False)
    out = []
    for _, group in list(groups)[:_EXAMPLES]:
        members = ", ".join(
            f"{i} (label {lab:g})" for i, lab in zip(group.index, group["label"], strict=True)
        )
        out.append(f"identical rows {members}")
    return out


def _markdown(report: ValidationReport) -> str:
    stats = report.stats
    status = "PASSED" if report.success else "FAILED"
    lines = [
        f"# Data validation {status}",
        "",
        f"{report.n_rows} rows, {stats.get('distinct_images')} distinct images, "
        f"{stats.get('duplicate_rows')} duplicate rows, validated in {report.elapsed_s:.2f} s.",
        "",
        "| expectation | target | result | observed | examples |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in report.results:
        examples = "; ".join(r.examples[:3]).replace("|", "\\|")
        lines.append(
            f"| {r.expectation} | {r.target} | {'pass' if r.success else '**FAIL**'} | "
            f"{r.observed.replace('|', '/')} | {examples} |"
        )
    counts = stats.get("class_counts", {})
    if counts:
        lines += ["", "Class counts: " + ", ".join(f"{k}: {v}" for k, v in counts.items())]
    return "\n".join(lines) + "\n"


def validate(
    table: pd.DataFrame,
    cfg: DataConfig,
    *,
    output_dir: Path | None = None,
    result_name: str = "validation",
    raise_on_failure: bool = True,
) -> ValidationReport:
    """Validate the raw ``label, pixel1..pixel784`` table with Great Expectations.

    Saves the GX results plus a summary as ``output_dir/<result_name>.json`` (when given) and
    raises :class:`DataValidationError` naming each failed expectation with example rows/values
    unless ``raise_on_failure=False``.
    """
    _import_gx()  # a one-off import, not part of the validation time
    start = time.perf_counter()
    table = table.reset_index(drop=True)
    profile = build_profile(table)
    # The column schema is a property of the header: GX checks it on a zero-row view of the raw
    # table (GX checking every one of the 785 columns of every row is slow); the profile has one
    # row per raw row.
    frames = {
        "table": table.iloc[:0],
        "pixel_types": pixel_types(table),
        "rows": profile.rows,
        "classes": profile.classes,
    }
    gx_results = _run_gx(frames, cfg)
    outcomes = [
        _outcome(suite, res, profile)
        for suite, suite_result in gx_results.items()
        for res in suite_result.results
    ]
    report = ValidationReport(
        success=all(o.success for o in outcomes),
        n_rows=len(table),
        results=outcomes,
        elapsed_s=time.perf_counter() - start,
        stats=profile.stats,
    )
    report.markdown = _markdown(report)
    if output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
        path = output_dir / f"{result_name}.json"
        payload = {
            "success": report.success,
            "n_rows": report.n_rows,
            "elapsed_s": report.elapsed_s,
            "stats": report.stats,
            "outcomes": [o.__dict__ for o in outcomes],
            "great_expectations": {k: v.to_json_dict() for k, v in gx_results.items()},
        }
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(payload, indent=1, default=str))
        tmp.replace(path)
        report.json_path = path
    if not report.success and raise_on_failure:
        raise DataValidationError(report.failure_message(), report)
    return report
