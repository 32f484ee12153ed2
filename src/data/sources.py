"""Fetch the raw training set into a staging folder: Kaggle, the public IDX mirror, or a folder.

``DATA_SOURCE`` (``cfg.source``) picks the source:

* ``kaggle``: ``zalando-research/fashionmnist`` / ``fashion-mnist_train.csv`` through the ``kaggle``
  package (credentials from ``KAGGLE_USERNAME``/``KAGGLE_KEY`` or ``~/.kaggle/kaggle.json``). The
  CSV has no published md5, so its *content* (labels + pixels) is checked against the content
  md5 of the published IDX files (:func:`content_md5`).
* ``url``: ``train-images-idx3-ubyte.gz`` and ``train-labels-idx1-ubyte.gz`` from ``cfg.url_base``,
  each checked against its published md5; transient network errors are retried.
* anything else: a folder (relative paths are taken from the project root) holding the IDX files
  (gzip or raw) or the Kaggle CSV; its files are copied into staging as they are.

The network parts are injectable (``transport``): a ``requests.Session``-like object for ``url``,
a zero-argument factory returning an authenticated ``KaggleApi``-like object for ``kaggle``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import requests

from src.config.data import DataConfig
from src.data.io import IDX_IMAGES, IDX_LABELS, KAGGLE_CSV, data_files, read_images
from src.hashing import file_md5

# Published md5s of the original Fashion-MNIST training files.
KNOWN_MD5: dict[str, str] = {
    f"{IDX_IMAGES}.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    f"{IDX_LABELS}.gz": "25c81989df183df01b3e8a0aad5dffbe",
}
# content_md5() of those files: the same 60,000 (label, image) pairs in any file format/order.
KNOWN_CONTENT_MD5 = "46ca87cdd4746afbdd912a840d51368c"
OFFICIAL_KAGGLE_DATASET = "zalando-research/fashionmnist"

WAY_OUT = "use local files with DATA_SOURCE=/path/to/folder (e.g. ../shared/fashion-mnist)"
COMPLETE_MARKER = ".complete.json"
_CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """The data could not be fetched, and trying again will not help."""


class TransientDownloadError(DownloadError):
    """A network failure that may go away: the only download error worth retrying."""


@dataclass(frozen=True)
class FetchedData:
    """Raw files staged for validation."""

    folder: Path
    files: dict[str, str]  # file name -> md5
    source: str
    verified: bool = False  # matched the published md5s / content md5
    notes: list[str] = field(default_factory=list)


def content_md5(images: np.ndarray, labels: np.ndarray) -> str:
    """A format- and order-independent md5 of the (label, image) pairs.

    Each pair is hashed (blake2b of the label byte + 784 pixel bytes); the sorted digests are
    md5-ed. The IDX files and the Kaggle CSV of the same data therefore give the same value.
    """
    flat = np.ascontiguousarray(images, dtype=np.uint8).reshape(len(images), -1)
    label_bytes = np.asarray(labels, dtype=np.uint8).reshape(-1, 1)
    rows = np.ascontiguousarray(np.hstack([label_bytes, flat]))
    digests = sorted(hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in rows)
    return hashlib.md5(b"".join(digests)).hexdigest()


def resolve_source(source: str, root: Path) -> str | Path:
    """``"kaggle"``, ``"url"``, or the absolute folder path a local source names."""
    if source in ("kaggle", "url"):
        return source
    path = Path(source).expanduser()
    return path if path.is_absolute() else (root / path).resolve()


def _reset_dir(folder: Path) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)


def _finish(folder: Path, source: str, verified: bool, notes: list[str]) -> FetchedData:
    files = {p.name: file_md5(p) for p in data_files(folder)}
    (folder / COMPLETE_MARKER).write_text(
        json.dumps({"source": source, "files": files, "verified": verified}, indent=2)
    )
    return FetchedData(folder=folder, files=files, source=source, verified=verified, notes=notes)


def load_staged(folder: Path) -> FetchedData | None:
    """A previously completed staging folder whose files still have their md5s, else None."""
    marker = folder / COMPLETE_MARKER
    try:
        meta = json.loads(marker.read_text())
        files = {str(k): str(v) for k, v in meta["files"].items()}
        if all(file_md5(folder / name) == md5 for name, md5 in files.items()):
            return FetchedData(folder, files, str(meta["source"]), bool(meta.get("verified")))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return None


# --- local folder -------------------------------------------------------------------------------


def _fetch_folder(folder: Path, staging_dir: Path) -> FetchedData:
    if not folder.is_dir():
        raise DownloadError(
            f"DATA_SOURCE folder {folder} does not exist; set DATA_SOURCE=/path/to/folder "
            "holding the IDX files or the Kaggle CSV (or 'url' / 'kaggle')."
        )
    sources = data_files(folder)
    _reset_dir(staging_dir)
    for path in sources:
        shutil.copyfile(path, staging_dir / path.name)
    files = {p.name: file_md5(staging_dir / p.name) for p in sources}
    verified = bool(files) and all(KNOWN_MD5.get(n) == m for n, m in files.items())
    note = (
        "files match the published Fashion-MNIST md5s"
        if verified
        else "local files (not the published release md5s)"
    )
    return _finish(staging_dir, str(folder), verified, [note])


# --- HTTP mirror --------------------------------------------------------------------------------

_TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}


def _download_one(
    session: Any,
    url: str,
    dest: Path,
    expected_md5: str | None,
    cfg: DataConfig,
    sleep: Callable[[float], None],
) -> str:
    attempts = cfg.download_retries + 1
    last: str = ""
    for attempt in range(1, attempts + 1):
        try:
            with session.get(url, stream=True, timeout=cfg.timeout_s) as response:
                status = int(response.status_code)
                if status in _TRANSIENT_STATUS:
                    raise _Transient(f"HTTP {status}")
                if status >= 400:
                    raise DownloadError(f"{url}: HTTP {status}; check data.url_base or {WAY_OUT}.")
                digest = _stream_to(response, dest, url, cfg.download_max_bytes)
        except (
            requests.ConnectionError,
            requests.Timeout,
            requests.exceptions.ChunkedEncodingError,
            _Transient,
        ) as exc:
            last = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".strip()
            if attempt < attempts:
                sleep(cfg.retry_delay_s * attempt)
            continue
        except requests.RequestException as exc:
            raise DownloadError(f"{url}: {type(exc).__name__}: {exc}; {WAY_OUT}.") from exc
        md5 = digest.hexdigest()
        if expected_md5 is not None and md5 != expected_md5:
            dest.unlink(missing_ok=True)
            raise DownloadError(
                f"{url}: md5 {md5} does not match the published {expected_md5} (wrong or corrupt "
                f"file); check data.url_base or {WAY_OUT}."
            )
        return md5
    dest.unlink(missing_ok=True)
    raise TransientDownloadError(
        f"Cannot download {url} after {attempts} tries ({last}); no network? {WAY_OUT}."
    )


class _Transient(Exception):
    pass


def _stream_to(response: Any, dest: Path, url: str, max_bytes: int) -> Any:
    """Write the body to ``dest`` (md5 on the way), at most ``max_bytes`` of it: a larger body,
    announced or not, is refused and nothing of it is kept."""
    declared = response.headers.get("Content-Length")
    too_big = DownloadError(
        f"{url}: the file is larger than data.download_max_bytes ({max_bytes} bytes); check "
        f"data.url_base (or raise DATA_DOWNLOAD_MAX_BYTES), or {WAY_OUT}."
    )
    if declared is not None and declared.strip().isdigit() and int(declared) > max_bytes:
        raise too_big
    digest = hashlib.md5()
    size = 0
    try:
        with dest.open("wb") as handle:
            for chunk in response.iter_content(chunk_size=_CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise too_big
                handle.write(chunk)
                digest.update(chunk)
    except DownloadError:
        dest.unlink(missing_ok=True)
        raise
    if declared is not None and declared.strip() != str(size):
        raise _Transient(f"truncated transfer ({size} of {declared} bytes)")
    return digest


def _fetch_url(
    cfg: DataConfig, staging_dir: Path, session: Any, sleep: Callable[[float], None]
) -> FetchedData:
    _reset_dir(staging_dir)
    own_session = session is None
    session = requests.Session() if own_session else session
    try:
        for name, md5 in KNOWN_MD5.items():
            url = cfg.url_base.rstrip("/") + "/" + name
            _download_one(session, url, staging_dir / name, md5, cfg, sleep)
    finally:
        if own_session:
            session.close()
    return _finish(staging_dir, "url", True, [f"downloaded from {cfg.url_base}, md5 verified"])


# --- Kaggle -------------------------------------------------------------------------------------


def kaggle_credentials_present(
    environ: dict[str, str] | None = None, home: Path | None = None
) -> bool:
    """Whether the kaggle package will find credentials (env vars or ``kaggle.json``)."""
    env = os.environ if environ is None else environ
    if env.get("KAGGLE_USERNAME") and env.get("KAGGLE_KEY"):
        return True
    if env.get("KAGGLE_API_TOKEN"):
        return True
    home = Path.home() if home is None else home
    candidates = [home / ".kaggle" / "kaggle.json", home / ".config" / "kaggle" / "kaggle.json"]
    if env.get("KAGGLE_CONFIG_DIR"):
        candidates.insert(0, Path(env["KAGGLE_CONFIG_DIR"]) / "kaggle.json")
    return any(p.is_file() for p in candidates)


def _default_kaggle_api() -> Any:
    if not kaggle_credentials_present():
        raise DownloadError(
            "No Kaggle credentials (set KAGGLE_USERNAME and KAGGLE_KEY, or create "
            f"~/.kaggle/kaggle.json); or {WAY_OUT}."
        )
    try:
        # Imported here only: `import kaggle` authenticates as a side effect.
        from kaggle.api.kaggle_api_extended import KaggleApi

        api = KaggleApi()
        api.authenticate()
    except (Exception, SystemExit) as exc:
        raise DownloadError(
            f"Kaggle authentication failed ({type(exc).__name__}); check the credentials or {WAY_OUT}."
        ) from exc
    return api


def _kaggle_error(exc: Exception) -> DownloadError:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    network = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)
    if isinstance(exc, network) or status in _TRANSIENT_STATUS:
        return TransientDownloadError(
            f"Kaggle download failed ({type(exc).__name__}{f' HTTP {status}' if status else ''}); "
            f"no network? {WAY_OUT}."
        )
    if status in (401, 403):
        return DownloadError(
            f"Kaggle refused the credentials (HTTP {status}; accept the data set's rules on "
            f"kaggle.com or fix KAGGLE_USERNAME/KAGGLE_KEY); or {WAY_OUT}."
        )
    return DownloadError(f"Kaggle download failed ({type(exc).__name__}: {exc}); {WAY_OUT}.")


def _fetch_kaggle(
    cfg: DataConfig,
    staging_dir: Path,
    api_factory: Callable[[], Any] | None,
    sleep: Callable[[float], None],
) -> FetchedData:
    api = (api_factory or _default_kaggle_api)()
    _reset_dir(staging_dir)
    attempts = cfg.download_retries + 1
    for attempt in range(1, attempts + 1):
        try:
            api.dataset_download_file(
                cfg.kaggle_dataset, cfg.kaggle_file, path=str(staging_dir), force=True, quiet=True
            )
            break
        except Exception as exc:
            error = _kaggle_error(exc)
            if not isinstance(error, TransientDownloadError):
                raise error from exc
            if attempt == attempts:
                raise TransientDownloadError(f"{error} (after {attempts} tries)") from exc
            sleep(cfg.retry_delay_s * attempt)
    # Large files come wrapped in a zip ("<file>.zip"); unwrap it.
    for archive in sorted(staging_dir.glob("*.zip")):
        try:
            with zipfile.ZipFile(archive) as zipped:
                member = next(
                    (m for m in zipped.namelist() if Path(m).name == cfg.kaggle_file), None
                )
                if member is None:
                    raise DownloadError(
                        f"{archive.name} from Kaggle lacks {cfg.kaggle_file}; {WAY_OUT}."
                    )
                with zipped.open(member) as src, (staging_dir / cfg.kaggle_file).open("wb") as dst:
                    shutil.copyfileobj(src, dst, _CHUNK)
        except zipfile.BadZipFile as exc:
            raise DownloadError(
                f"{archive.name} from Kaggle is not a valid zip; {WAY_OUT}."
            ) from exc
        archive.unlink()
    if not (staging_dir / cfg.kaggle_file).is_file():
        raise DownloadError(f"Kaggle returned no {cfg.kaggle_file}; {WAY_OUT}.")
    notes = [f"downloaded {cfg.kaggle_dataset}/{cfg.kaggle_file} from Kaggle"]
    verified = False
    if cfg.kaggle_dataset == OFFICIAL_KAGGLE_DATASET and cfg.kaggle_file == KAGGLE_CSV:
        images, labels = read_images(staging_dir)
        found = content_md5(images, labels)
        if found != KNOWN_CONTENT_MD5:
            raise DownloadError(
                f"Kaggle {cfg.kaggle_file}: content md5 {found} does not match the published "
                f"training set ({KNOWN_CONTENT_MD5}); {WAY_OUT}."
            )
        verified = True
        notes.append("content md5 matches the published IDX files")
    return _finish(staging_dir, "kaggle", verified, notes)


def fetch_source(
    cfg: DataConfig,
    staging_dir: Path,
    root: Path,
    *,
    transport: Any = None,
    sleep: Callable[[float], None] = time.sleep,
) -> FetchedData:
    """Stage the raw files of ``cfg.source`` into ``staging_dir`` (emptied first).

    ``transport``: for ``url`` a ``requests.Session``-like object (``.get(url, stream=True,
    timeout=...)``); for ``kaggle`` a zero-argument factory returning a ``KaggleApi``-like object
    (``.dataset_download_file(dataset, file_name, path=..., force=..., quiet=...)``). None uses
    the real network. Raises :class:`TransientDownloadError` for network failures (retry-worthy)
    and :class:`DownloadError` for everything else.
    """
    source = resolve_source(cfg.source, root)
    if source == "url":
        return _fetch_url(cfg, staging_dir, transport, sleep)
    if source == "kaggle":
        return _fetch_kaggle(cfg, staging_dir, transport, sleep)
    assert isinstance(source, Path)
    return _fetch_folder(source, staging_dir)
