"""A served model file reaches nothing outside itself: tensors stored as external data and custom
operators are refused, and the API process serves from an empty folder of its own, never the one
it was started in (``make serve`` starts in the repo root, beside ``.stack/env.sh``).

The exfiltration model names ``.stack/env.sh`` as the external data of an initializer that becomes
its logits: ONNX Runtime resolves that name against the working folder, so, served, it would answer
the file's first bytes as confidences."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from src.labels import CLASS_NAMES
from src.onnx_model import ModelLoadError, check_model_bytes, load_onnx_classifier
from tests.helpers.api import Registry, encode, sample_images, wait_until
from tests.helpers.onnx_graphs import (
    add_onnx_version,
    check,
    custom_op_model,
    exfiltration_model,
    external_in_loop_body_model,
)

SECRET = b"export AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI-exfil-canary-0123456789\n"
GOOD_PNG = encode(sample_images(1)[0])


@pytest.fixture
def secret_folder(tmp_path: Path) -> Path:
    """A folder like the repo root after `make stack`: it holds the stack's password file."""
    folder = tmp_path / "repo"
    (folder / ".stack").mkdir(parents=True)
    (folder / ".stack" / "env.sh").write_bytes(SECRET)
    return folder


def test_the_attack_graphs_are_valid_onnx_apart_from_what_they_reach(
    secret_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(secret_folder)  # where the checker finds the external file
    for model in (exfiltration_model(), custom_op_model()):
        check(model)  # so what refuses them is the reach check, not a parse error


def test_without_the_check_onnx_runtime_reads_the_working_folder(
    secret_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The threat is real: a bare session, run from the folder, answers the secret's bytes."""
    import onnxruntime as ort

    monkeypatch.chdir(secret_folder)
    session = ort.InferenceSession(exfiltration_model(), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"images": np.zeros((1, 1, 28, 28), np.float32)})[0]
    assert bytes(logits[0].astype(np.uint8)) == SECRET[:10]


def test_the_empty_external_data_folder_alone_stops_the_read(
    secret_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second safeguard on its own: with the byte check switched off, the session resolves
    external-data names in the process's private empty folder, not the working one, so the
    exfiltration model cannot open its file (the test above shows that it would from there)."""
    from src import onnx_model

    monkeypatch.setattr(onnx_model, "check_model_bytes", lambda model_bytes: None)
    monkeypatch.chdir(secret_folder)
    with pytest.raises(ModelLoadError, match="not a valid ONNX model") as caught:
        load_onnx_classifier(exfiltration_model(), CLASS_NAMES, threads=1)
    assert SECRET[:10].decode() not in str(caught.value)
    assert list(onnx_model.empty_folder().iterdir()) == []


@pytest.mark.parametrize(
    ("model", "named"),
    [
        (lambda: exfiltration_model(), "external file '.stack/env.sh'"),
        (lambda: exfiltration_model("mlflow.db"), "external file 'mlflow.db'"),
        (lambda: external_in_loop_body_model(".stack/env.sh"), "tensor 'h'"),
        (custom_op_model, "custom operator com.example::ReadFile"),
    ],
)
def test_a_graph_that_reaches_outside_its_file_is_refused(
    model: Any, named: str, secret_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(secret_folder)
    with pytest.raises(ModelLoadError, match="reaches outside its file") as caught:
        load_onnx_classifier(model(), CLASS_NAMES, threads=1)
    assert named in str(caught.value)
    assert SECRET[:10].decode() not in str(caught.value)


def test_a_graph_exported_by_the_trainer_passes(registry: Registry) -> None:
    folder = Path(registry.sources.varied.uri[len("file://") :])  # the logged onnx-flavour model
    check_model_bytes((folder / "model.onnx").read_bytes())


@pytest.mark.integration  # a real server: server_factory
def test_the_exfiltration_model_promoted_on_a_running_server_leaks_nothing(
    registry: Registry, server_factory: Any, secret_folder: Path
) -> None:
    registry.add_production("tshirt")
    server = server_factory(
        registry.tracking_uri, registry.name, cwd=secret_folder, SERVE_POLL_INTERVAL_S="0.2"
    )
    # The server left the folder it was started in for an empty one of its own.
    workdir = Path(os.readlink(f"/proc/{server.process.pid}/cwd"))
    assert workdir != secret_folder and list(workdir.iterdir()) == []
    version = add_onnx_version(registry, exfiltration_model(".stack/env.sh", 10), "exfil")
    registry.promote(version)

    def reported() -> Any:
        body = httpx.get(server.url + "/ready", timeout=5).json()
        return f"Production v{version} failed to load" in body.get("reason", "") and body

    body = wait_until(reported, timeout=60)
    assert body["model_version"] == "1" and "external file '.stack/env.sh'" in body["reason"]
    answer = httpx.post(
        server.url + "/predict", files={"file": ("x.png", GOOD_PNG, "image/png")}, timeout=10
    ).json()
    assert answer["model_version"] == "1" and answer["label"] == "T-shirt/top"
    assert "external file" in httpx.get(server.url + "/model", timeout=5).json()["load_error"]
    log = "\n".join(server.log_lines())
    assert SECRET[:10].decode() not in log and "wJalrXUtnFEMI" not in log
