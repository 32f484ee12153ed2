"""The real HTTP and Kaggle code paths against fakes: a local HTTP server, a fake Kaggle API."""

from __future__ import annotations

import http.server
import sys
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from src.config.data import DataConfig
from src.data.io import KAGGLE_CSV, write_csv, write_idx
from src.data.sources import (
    KNOWN_MD5,
    DownloadError,
    TransientDownloadError,
    content_md5,
    fetch_source,
    kaggle_credentials_present,
)
from tests.helpers.data import tiny_config


class _Server:
    """Serves files from ``folder``; the first ``fail_first`` GETs get HTTP 503 or a dropped line."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.fail_first = 0
        self.failure = "503"
        self.requests: list[str] = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, directory=str(server.folder), **kwargs)

            def do_GET(self) -> None:
                server.requests.append(self.path)
                if len(server.requests) <= server.fail_first:
                    if server.failure == "503":
                        self.send_error(503)
                    else:  # announce a body, then hang up halfway
                        self.send_response(200)
                        self.send_header("Content-Length", "1000")
                        self.end_headers()
                        self.wfile.write(b"x" * 10)
                    return
                super().do_GET()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def mirror(shared_data_dir: Path) -> Iterator[_Server]:
    server = _Server(shared_data_dir)
    yield server
    server.close()


@pytest.mark.integration  # real data: shared_data_dir
def test_url_download_real_http_path(mirror: _Server, tmp_path: Path) -> None:
    cfg = tiny_config(source="url", url_base=mirror.url)
    fetched = fetch_source(cfg, tmp_path / "staging", tmp_path)
    assert fetched.files == KNOWN_MD5 and fetched.verified and fetched.source == "url"
    assert sorted(p.name for p in fetched.folder.glob("*.gz")) == sorted(KNOWN_MD5)


@pytest.mark.integration  # real data: shared_data_dir
@pytest.mark.parametrize("failure", ["503", "dropped"])
def test_url_transient_errors_are_retried(mirror: _Server, tmp_path: Path, failure: str) -> None:
    mirror.fail_first, mirror.failure = 2, failure
    waits: list[float] = []
    cfg = tiny_config(source="url", url_base=mirror.url, retry_delay_s=0.5)
    fetched = fetch_source(cfg, tmp_path / "staging", tmp_path, sleep=waits.append)
    assert fetched.files == KNOWN_MD5
    assert waits == [0.5, 1.0]  # two failures of the first file, backing off
    assert len(mirror.requests) == 4  # 2 failed + 2 files


@pytest.mark.integration  # real data: shared_data_dir
def test_url_gives_up_with_one_line_error(mirror: _Server, tmp_path: Path) -> None:
    mirror.fail_first = 100
    session = requests.Session()  # an injected Session-like transport
    cfg = tiny_config(source="url", url_base=mirror.url, download_retries=2)
    with pytest.raises(TransientDownloadError) as caught:
        fetch_source(cfg, tmp_path / "staging", tmp_path, transport=session, sleep=lambda s: None)
    message = str(caught.value)
    assert "after 3 tries" in message and "DATA_SOURCE=/path/to/folder" in message
    assert "\n" not in message
    assert len(mirror.requests) == 3


def test_url_no_network(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cfg = tiny_config(source="url", url_base=f"http://127.0.0.1:{port}/", download_retries=1)
    with pytest.raises(
        TransientDownloadError,
        match=r"no network\? use local files with DATA_SOURCE=/path/to/folder",
    ):
        fetch_source(cfg, tmp_path / "staging", tmp_path, sleep=lambda s: None)


def test_url_md5_mismatch_and_404_are_not_retried(
    tmp_path: Path, tiny: tuple[np.ndarray, np.ndarray]
) -> None:
    write_idx(tmp_path / "site", *tiny)  # right names, wrong bytes
    server = _Server(tmp_path / "site")
    try:
        cfg = tiny_config(source="url", url_base=server.url)
        with pytest.raises(DownloadError, match="does not match the published 8d4fb7e6") as caught:
            fetch_source(cfg, tmp_path / "staging", tmp_path, sleep=lambda s: None)
        assert not isinstance(caught.value, TransientDownloadError)
        assert len(server.requests) == 1
        (tmp_path / "site" / "train-images-idx3-ubyte.gz").unlink()
        with pytest.raises(DownloadError, match="HTTP 404"):
            fetch_source(cfg, tmp_path / "staging", tmp_path, sleep=lambda s: None)
    finally:
        server.close()


# --- Kaggle -------------------------------------------------------------------------------------


class FakeKaggleApi:
    """Implements the one KaggleApi method the code calls, like kaggle 2.x: large files zipped."""

    def __init__(self, csv: Path, errors: list[Exception] | None = None) -> None:
        self.csv = csv
        self.errors = list(errors or [])
        self.calls: list[tuple[str, str, str]] = []

    def dataset_download_file(
        self,
        dataset: str,
        file_name: str,
        path: str | None = None,
        force: bool = False,
        quiet: bool = True,
    ) -> bool:
        self.calls.append((dataset, file_name, str(path)))
        if self.errors:
            raise self.errors.pop(0)
        with zipfile.ZipFile(Path(str(path)) / f"{file_name}.zip", "w") as archive:
            archive.write(self.csv, file_name)
        return True


def _http_error(status: int) -> requests.HTTPError:
    response = requests.Response()
    response.status_code = status
    return requests.HTTPError(f"{status}", response=response)


@pytest.fixture
def kaggle_csv(tmp_path: Path, tiny: tuple[np.ndarray, np.ndarray]) -> Path:
    return write_csv(tmp_path / "src" / KAGGLE_CSV, *tiny)


def test_kaggle_download_unzips_and_retries(kaggle_csv: Path, tmp_path: Path) -> None:
    api = FakeKaggleApi(kaggle_csv, errors=[requests.ConnectionError("reset"), _http_error(503)])
    cfg = tiny_config(source="kaggle", kaggle_dataset="someone/fashion-copy")
    fetched = fetch_source(
        cfg, tmp_path / "staging", tmp_path, transport=lambda: api, sleep=lambda s: None
    )
    assert [c[:2] for c in api.calls] == [("someone/fashion-copy", KAGGLE_CSV)] * 3
    assert list(fetched.files) == [KAGGLE_CSV] and not fetched.verified
    assert (fetched.folder / KAGGLE_CSV).read_bytes() == kaggle_csv.read_bytes()
    assert not list(fetched.folder.glob("*.zip"))


def test_kaggle_official_dataset_checks_content_md5(kaggle_csv: Path, tmp_path: Path) -> None:
    cfg = tiny_config(source="kaggle")  # zalando-research/fashionmnist: content must match
    with pytest.raises(DownloadError, match=r"content md5 .* does not match the published"):
        fetch_source(
            cfg, tmp_path / "staging", tmp_path, transport=lambda: FakeKaggleApi(kaggle_csv)
        )


def test_kaggle_refused_credentials_not_retried(kaggle_csv: Path, tmp_path: Path) -> None:
    api = FakeKaggleApi(kaggle_csv, errors=[_http_error(403)])
    cfg = tiny_config(source="kaggle")
    with pytest.raises(
        DownloadError, match=r"Kaggle refused the credentials.*DATA_SOURCE=/path/to/folder"
    ) as caught:
        fetch_source(
            cfg, tmp_path / "staging", tmp_path, transport=lambda: api, sleep=lambda s: None
        )
    assert not isinstance(caught.value, TransientDownloadError) and len(api.calls) == 1


def test_kaggle_offline_is_transient(kaggle_csv: Path, tmp_path: Path) -> None:
    api = FakeKaggleApi(kaggle_csv, errors=[requests.ConnectionError("offline")] * 3)
    cfg = tiny_config(source="kaggle", download_retries=2)
    with pytest.raises(TransientDownloadError, match="after 3 tries"):
        fetch_source(
            cfg, tmp_path / "staging", tmp_path, transport=lambda: api, sleep=lambda s: None
        )


def test_kaggle_without_credentials_never_imports_kaggle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_CONFIG_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setitem(sys.modules, "kaggle", None)  # any import attempt would raise ImportError
    with pytest.raises(DownloadError) as caught:
        fetch_source(tiny_config(source="kaggle"), tmp_path / "staging", tmp_path)
    message = str(caught.value)
    assert "No Kaggle credentials" in message and "DATA_SOURCE=/path/to/folder" in message
    assert "\n" not in message
    (tmp_path / ".kaggle").mkdir()
    (tmp_path / ".kaggle" / "kaggle.json").write_text('{"username": "u", "key": "k"}')
    assert kaggle_credentials_present(environ={}, home=tmp_path)
    assert kaggle_credentials_present(
        environ={"KAGGLE_USERNAME": "u", "KAGGLE_KEY": "k"}, home=tmp_path / "x"
    )
    assert not kaggle_credentials_present(environ={}, home=tmp_path / "x")


# --- local folders ------------------------------------------------------------------------------


def test_folder_source_relative_to_root(
    tmp_path: Path, tiny: tuple[np.ndarray, np.ndarray]
) -> None:
    write_idx(tmp_path / "raw-files", *tiny)
    (tmp_path / "raw-files" / "README.md").write_text("not data")
    cfg: DataConfig = tiny_config(source="raw-files")
    fetched = fetch_source(cfg, tmp_path / "out" / "staging", tmp_path)
    assert sorted(fetched.files) == ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]
    assert not fetched.verified  # not the published files
    with pytest.raises(DownloadError, match="does not exist; set DATA_SOURCE=/path/to/folder"):
        fetch_source(tiny_config(source="nowhere"), tmp_path / "staging", tmp_path)


def test_content_md5_ignores_format_and_order(tiny: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = tiny
    order = np.random.default_rng(1).permutation(len(labels))
    assert content_md5(images, labels) == content_md5(images[order], labels[order])
    changed = labels.copy()
    changed[0] = (changed[0] + 1) % 10
    assert content_md5(images, labels) != content_md5(images, changed)
