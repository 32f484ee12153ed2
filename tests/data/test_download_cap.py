"""The URL download keeps at most ``data.download_max_bytes`` of a file, announced or not."""

from __future__ import annotations

import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from src.data.sources import DownloadError, TransientDownloadError, fetch_source
from tests.data.test_sources import _Server
from tests.helpers.data import tiny_config

CAP = 1 << 20


@pytest.fixture
def big_site(tmp_path: Path) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    (site / "train-images-idx3-ubyte.gz").write_bytes(os.urandom(3 * CAP))
    return site


def test_a_file_announced_larger_than_the_cap_is_refused_unread(
    big_site: Path, tmp_path: Path
) -> None:
    server = _Server(big_site)
    try:
        cfg = tiny_config(source="url", url_base=server.url, download_max_bytes=CAP)
        with pytest.raises(DownloadError, match=r"larger than data\.download_max_bytes") as caught:
            fetch_source(cfg, tmp_path / "staging", tmp_path, sleep=lambda s: None)
        assert not isinstance(caught.value, TransientDownloadError)  # not retried
        assert len(server.requests) == 1 and "\n" not in str(caught.value)
        assert not list((tmp_path / "staging").glob("*.gz"))
    finally:
        server.close()


class _Unannounced(http.server.BaseHTTPRequestHandler):
    """HTTP/1.0, no Content-Length: the body ends when the connection closes (3 MiB of it)."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        chunk = b"\0" * (64 << 10)
        sent = 0
        try:
            while sent < 3 * CAP:
                self.wfile.write(chunk)
                sent += len(chunk)
        except OSError:  # the client stopped reading
            pass

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def unannounced() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Unannounced)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def test_a_body_without_a_length_is_cut_at_the_cap(unannounced: str, tmp_path: Path) -> None:
    cfg = tiny_config(source="url", url_base=unannounced, download_max_bytes=CAP)
    with pytest.raises(DownloadError, match=r"larger than data\.download_max_bytes"):
        fetch_source(cfg, tmp_path / "staging", tmp_path, sleep=lambda s: None)
    staged = list((tmp_path / "staging").glob("*"))
    assert not [p for p in staged if p.suffix == ".gz"]  # nothing of it is kept
