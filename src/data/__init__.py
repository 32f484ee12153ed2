"""The data pipeline as plain functions (no Prefect): fetch, read, validate, version, split.

Heavy dependencies (Great Expectations, DVC, kaggle) are imported only inside the functions
that need them.
"""

from src.data.io import DataFormatError, read_images, read_table
from src.data.sources import DownloadError, FetchedData, TransientDownloadError, fetch_source
from src.data.split import PreparedData, prepare_splits, split_indices
from src.data.validation import DataValidationError, ValidationReport, validate
from src.data.versioning import DataVersion, VersioningError, version_data

__all__ = [
    "DataFormatError",
    "DataValidationError",
    "DataVersion",
    "DownloadError",
    "FetchedData",
    "PreparedData",
    "TransientDownloadError",
    "ValidationReport",
    "VersioningError",
    "fetch_source",
    "prepare_splits",
    "read_images",
    "read_table",
    "split_indices",
    "validate",
    "version_data",
]
