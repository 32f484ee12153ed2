"""DATA_DVC_REMOTE_ENDPOINT_URL: the endpoint of an S3-compatible store reaches DVC's local config
(no store needed: only the configuration is checked)."""

from __future__ import annotations

from pathlib import Path

from src.config import load_config
from src.data.versioning import _ensure_remote, _repo, init_repo


def _remote_after(root: Path, environ: dict[str, str]) -> dict[str, str]:
    cfg = load_config(environ=environ).data
    with _repo(root) as repo:
        _ensure_remote(repo, root, cfg)
    with _repo(root) as repo:
        return dict(repo.config["remote"][cfg.dvc_remote_name])


def test_endpoint_setting_is_written_to_the_local_config(tmp_path: Path) -> None:
    root = tmp_path / "project"
    root.mkdir()
    init_repo(root, "local", str(tmp_path / "dvc-remote"))
    environ = {
        "DATA_DVC_REMOTE_NAME": "s3",
        "DATA_DVC_REMOTE_URL": "s3://dvc-store/clothing-classifier",
        "DATA_DVC_REMOTE_ENDPOINT_URL": "http://127.0.0.1:9",
    }
    remote = _remote_after(root, environ)
    assert remote["url"] == "s3://dvc-store/clothing-classifier"
    assert remote["endpointurl"] == "http://127.0.0.1:9"
    local = (root / ".dvc" / "config.local").read_text()
    assert "endpointurl = http://127.0.0.1:9" in local
    assert "127.0.0.1:9" not in (root / ".dvc" / "config").read_text()  # the committed file

    # Without the setting, an endpoint someone configured by hand is left alone.
    del environ["DATA_DVC_REMOTE_ENDPOINT_URL"]
    assert _remote_after(root, environ)["endpointurl"] == "http://127.0.0.1:9"
