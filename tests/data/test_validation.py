from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from src.config.data import DataConfig
from src.data.io import arrays_to_table
from src.data.validation import DataValidationError, validate


def _table(tiny: tuple[np.ndarray, np.ndarray]) -> pd.DataFrame:
    return arrays_to_table(*tiny).astype({"pixel1": "int64"})


def test_valid_tiny_table_passes_and_saves_json(
    tmp_path: Path, tiny: tuple[np.ndarray, np.ndarray], cfg: DataConfig
) -> None:
    report = validate(arrays_to_table(*tiny), cfg, output_dir=tmp_path, result_name="tiny")
    assert report.success and report.n_rows == 200 and len(report.results) == 13
    saved = json.loads((tmp_path / "tiny.json").read_text())
    assert saved["success"] is True
    assert set(saved["great_expectations"]) == {"table", "pixel_types", "rows", "classes"}
    assert "# Data validation PASSED" in report.markdown
    assert "expect_column_values_to_be_between | rows.pixel_max | pass" in report.markdown


def _set(row: int, col: str, value: object) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def edit(table: pd.DataFrame) -> pd.DataFrame:
        table = table.astype({col: "float64"})
        table.loc[row, col] = value
        return table

    return edit


def _rename(table: pd.DataFrame) -> pd.DataFrame:
    return table.rename(columns={"pixel5": "px5"})


def _relabel_to_class_0(table: pd.DataFrame) -> pd.DataFrame:
    rows = table.index[table["label"] == 1][:15]
    table.loc[rows, "label"] = 0  # class 0: 35/200 = 17.5 %, class 1: 2.5 %
    return table


def _too_many_rows(table: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([table] * 6, ignore_index=True)  # 1200 rows > max_rows 1000


CASES = [
    ("pixel above 255", _set(17, "pixel300", 256), "rows.pixel_max", "row 17 pixel300=256"),
    ("negative pixel", _set(3, "pixel1", -1), "rows.pixel_min", "row 3 pixel1=-1"),
    (
        "fractional pixel",
        _set(42, "pixel784", 12.5),
        "rows.pixel_non_integer",
        "row 42 pixel784=12.5",
    ),
    ("null pixel", _set(9, "pixel77", np.nan), "rows.pixel_nulls", "row 9 pixel77=nan"),
    ("label out of range", _set(5, "label", 10), "rows.label", "row 5: label=10"),
    ("null label", _set(6, "label", np.nan), "rows.label", "expect_column_values_to_not_be_null"),
    ("renamed column", _rename, "table", "column 5: 'px5' (expected 'pixel5')"),
    ("class imbalance", _relabel_to_class_0, "classes.share", "class 0: 17.50% (35 rows)"),
    (
        "row count",
        _too_many_rows,
        "rows",
        "expect_table_row_count_to_be_between(rows): observed 1200",
    ),
]


@pytest.mark.parametrize(("case", "edit", "target", "needle"), CASES, ids=[c[0] for c in CASES])
def test_each_failure_mode_is_named(
    case: str,
    edit: Callable[[pd.DataFrame], pd.DataFrame],
    target: str,
    needle: str,
    tiny: tuple[np.ndarray, np.ndarray],
    cfg: DataConfig,
    tmp_path: Path,
) -> None:
    table = edit(arrays_to_table(*tiny))
    with pytest.raises(DataValidationError) as caught:
        validate(table, cfg, output_dir=tmp_path)
    message = str(caught.value)
    assert needle in message
    assert target in {f.target for f in caught.value.report.failures}
    assert "DATA_SOURCE=/path/to/folder" in message
    saved = json.loads((tmp_path / "validation.json").read_text())
    assert saved["success"] is False
    assert "FAILED" in caught.value.report.markdown


def _set_int(row: int, col: str, value: int) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """Edit the integer table a CSV gives (every column int64), keeping it integer."""

    def edit(table: pd.DataFrame) -> pd.DataFrame:
        table = table.astype("int64")
        table.loc[row, col] = value
        assert table[col].dtype == np.int64
        return table

    return edit


# Every bad value an integer column can hold (a CSV without blanks reads as int64).
INT_CASES = [
    ("pixel 256", _set_int(17, "pixel300", 256), "rows.pixel_max", "row 17 pixel300=256"),
    (
        "pixel far above",
        _set_int(4, "pixel2", 2**40),
        "rows.pixel_max",
        "row 4 pixel2=1099511627776",
    ),
    ("pixel -1", _set_int(3, "pixel1", -1), "rows.pixel_min", "row 3 pixel1=-1"),
    ("pixel far below", _set_int(8, "pixel9", -300), "rows.pixel_min", "row 8 pixel9=-300"),
    ("label 10", _set_int(5, "label", 10), "rows.label", "row 5: label=10"),
    ("label -1", _set_int(6, "label", -1), "rows.label", "row 6: label=-1"),
]


@pytest.mark.parametrize(
    ("case", "edit", "target", "needle"), INT_CASES, ids=[c[0] for c in INT_CASES]
)
def test_each_bad_value_is_named_in_an_integer_table(
    case: str,
    edit: Callable[[pd.DataFrame], pd.DataFrame],
    target: str,
    needle: str,
    tiny: tuple[np.ndarray, np.ndarray],
    cfg: DataConfig,
) -> None:
    table = edit(arrays_to_table(*tiny))
    assert all(dtype == np.int64 for dtype in table.dtypes)
    with pytest.raises(DataValidationError) as caught:
        validate(table, cfg)
    assert [f.target for f in caught.value.report.failures] == [target]
    assert needle in str(caught.value)


def test_messages_show_exact_values(tiny: tuple[np.ndarray, np.ndarray], cfg: DataConfig) -> None:
    table = _set(11, "pixel20", 255.0000001)(arrays_to_table(*tiny))
    with pytest.raises(DataValidationError) as caught:
        validate(table, cfg)
    assert "row 11 pixel20=255.0000001" in str(caught.value)
    assert [f.target for f in caught.value.report.failures] == [
        "rows.pixel_non_integer",
        "rows.pixel_max",
    ]


def _booleans(table: pd.DataFrame) -> pd.DataFrame:
    table["pixel5"] = table["pixel5"] > 0  # True/False: would pass every range check as 0/1
    return table


def _text(table: pd.DataFrame) -> pd.DataFrame:
    table["pixel9"] = table["pixel9"].astype(str)  # "0", "17", ...: digits, but text
    return table


def _all_booleans(table: pd.DataFrame) -> pd.DataFrame:
    for column in table.columns[1:]:
        table[column] = table[column] > 127
    return table


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (_booleans, "column pixel5: boolean"),
        (_text, "column pixel9: text"),
        (_all_booleans, "column pixel1: boolean"),
    ],
    ids=["one boolean column", "one text column", "all boolean"],
)
def test_non_numeric_pixel_columns_are_refused(
    edit: Callable[[pd.DataFrame], pd.DataFrame],
    needle: str,
    tiny: tuple[np.ndarray, np.ndarray],
    cfg: DataConfig,
) -> None:
    with pytest.raises(DataValidationError) as caught:
        validate(edit(arrays_to_table(*tiny)), cfg)
    failures = caught.value.report.failures
    assert "pixel_types.kind" in {f.target for f in failures}
    assert needle in str(caught.value)


def test_duplicate_policy(tiny: tuple[np.ndarray, np.ndarray], cfg: DataConfig) -> None:
    images, labels = (a.copy() for a in tiny)
    # Two same-label duplicates (1 % of rows) are tolerated at max_duplicate_fraction 5 %.
    same = [i for i in range(1, 200) if labels[i] == labels[0]][:2]
    images[same] = images[0]
    report = validate(arrays_to_table(images, labels), cfg)
    assert report.success
    assert report.stats["duplicate_rows"] == 2 and report.stats["duplicate_groups"] == 1
    # ...but not above the threshold.
    strict = cfg.model_copy(update={"max_duplicate_fraction": 0.005})
    with pytest.raises(
        DataValidationError, match=r"image_group.*2 duplicate image rows \(1\.0000%\)"
    ):
        validate(arrays_to_table(images, labels), strict)
    # An identical image with a different label fails whatever the threshold.
    other = next(i for i in range(1, 200) if labels[i] != labels[0])
    images[other] = images[0]
    with pytest.raises(DataValidationError) as caught:
        validate(arrays_to_table(images, labels), cfg)
    assert [f.target for f in caught.value.report.failures] == ["rows.duplicate_label_conflict"]
    assert f"{other} (label {labels[other]})" in str(caught.value)
