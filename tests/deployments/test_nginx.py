"""The proxy's configuration renders from configs/ and nginx accepts it; nothing is left blank."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from deployments import edge
from src.config import load_config


def rendered(tmp_path: Path, **edge_settings: object) -> tuple[Path, str]:
    cfg = load_config(overrides={"edge": edge_settings} if edge_settings else None, environ={})
    front = edge.MlflowFront(18100, 18101, tmp_path / "mlflow.htpasswd")
    front.htpasswd.write_text(edge.htpasswd_line("stack", "a-password"))
    text = edge.nginx_config(
        cfg.edge,
        cfg.serve,
        prefix=tmp_path,
        public_port=18000,
        api_ports=[18001, 18002],
        mlflow=front,
    )
    return edge.write_nginx(tmp_path, text), text


@pytest.mark.integration  # runs Debian's binary (make edge-deps)
def test_nginx_accepts_the_rendered_configuration(tmp_path: Path) -> None:
    conf, text = rendered(tmp_path, client_header_timeout_s=7)
    result = subprocess.run(
        [*edge.nginx_argv(conf, tmp_path), "-t"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "{{" not in text
    assert "client_header_timeout 7s;" in text
    assert "server 127.0.0.1:18001 " in text and "server 127.0.0.1:18002 " in text
    serve = load_config(environ={}).serve
    assert f"client_max_body_size {serve.max_batch_bytes};" in text
    # /predict takes one image: its own, smaller limit.
    single = re.search(r"location = /predict \{\s*client_max_body_size (\d+);", text)
    assert single and int(single.group(1)) == serve.max_image_request_bytes < serve.max_batch_bytes


def test_a_placeholder_without_a_value_is_an_error() -> None:
    with pytest.raises(edge.EdgeError, match="port"):
        edge.render("listen {{port}};", {})


def test_the_htpasswd_entry_is_salted_sha1() -> None:
    password = "correct-horse-battery"
    first, second = edge.htpasswd_line("u", password), edge.htpasswd_line("u", password)
    assert first.startswith("u:{SSHA}") and first != second and password not in first
