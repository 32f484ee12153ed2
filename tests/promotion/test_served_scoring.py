"""The train-flow scores models (candidate, Production, reference profile) from their ONNX file in
ONNX Runtime. For versions registered before the onnx flavour (a pt2 model plus the run's ONNX
file): the same predictions the pt2 archive gave, and a payload planted in the pt2's pickled
member never runs, whoever could write to the artifact store."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
import torch

from src import registry
from src.data.split import PreparedData
from src.evaluate import evaluate_classifier
from src.model_io import log_onnx
from src.monitoring import attachments
from src.promotion import champion_predictions, score_model
from tests.helpers.config import app_config
from tests.helpers.flows import TinyStore
from tests.helpers.legacy_models import load_pt2_classifier, log_pt2_classifier

NAME = "served-scoring"


class Payload:
    """Unpickling this writes ``marker`` (stands for any code an attacker would run)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"open({str(self.marker)!r}, 'w').write('payload ran')",))


def _cnn(seed: int) -> torch.nn.Module:
    """A small CNN whose answers depend on the pixels (argmax ties are unlikely)."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(8, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(7),
        torch.nn.Flatten(),
        torch.nn.Linear(392, 10),
    ).eval()


def _dataset(path: Path, n: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n)
    np.savez(path, x_test=images, y_test=labels, x_val=images, y_val=labels)
    return path


def _register(tiny_store: TinyStore, module: torch.nn.Module, *, onnx: bool = True) -> Any:
    # models:/ URIs resolve through the global registry URI, which an earlier flow test may have
    # pointed at its own store.
    mlflow.set_tracking_uri(tiny_store.tracking_uri)
    mlflow.set_registry_uri(tiny_store.tracking_uri)
    client = registry.get_client(tiny_store.tracking_uri)
    with mlflow.start_run(experiment_id=tiny_store.experiment_id) as run:
        info = log_pt2_classifier(module)  # a version registered before the onnx flavour
        if onnx:
            log_onnx(client, run.info.run_id, module)
    mv = registry.register_candidate(
        client, NAME, model_uri=info.model_uri, run_id=run.info.run_id, tags={}
    )
    return client, client.get_model_version(NAME, str(mv.version))


def _plant_payload(client: Any, version: Any, marker: Path) -> None:
    """Replace the pickled member of the version's pt2 archive by a payload, in place."""
    folder = Path(client.get_model_version_download_uri(NAME, version.version)[len("file://") :])
    archive = folder / "data" / "model.pt2"
    with zipfile.ZipFile(archive) as original:
        members = {name: original.read(name) for name in original.namelist()}
    pickled = [name for name in members if name.endswith("sample_inputs/model.pt")]
    assert pickled, f"no pickled member in {sorted(members)}"
    members[pickled[0]] = pickle.dumps(Payload(marker), protocol=2)
    with zipfile.ZipFile(archive, "w") as rewritten:
        for name, data in members.items():
            rewritten.writestr(name, data)


def _assert_planted_payload_runs(client: Any, version: Any, marker: Path) -> None:
    """The positive control: the member planted in the version's archive does run code when
    unpickled, so the marker's absence above means nothing unpickled it."""
    folder = Path(client.get_model_version_download_uri(NAME, version.version)[len("file://") :])
    with zipfile.ZipFile(folder / "data" / "model.pt2") as archive:
        [member] = [n for n in archive.namelist() if n.endswith("sample_inputs/model.pt")]
        planted = archive.read(member)
    assert not marker.exists()
    pickle.loads(planted)  # the test's own payload, here on purpose
    assert marker.read_text() == "payload ran"


@pytest.mark.parametrize("seed", [0, 1])
def test_scores_from_the_onnx_file_give_the_pt2_archives_predictions(
    tiny_store: TinyStore, tmp_path: Path, seed: int
) -> None:
    client, version = _register(tiny_store, _cnn(seed))
    dataset = _dataset(tmp_path / "d.npz", 500, seed)
    metrics, from_onnx = score_model(client, version.run_id, dataset)
    pt2 = load_pt2_classifier(f"models:/{NAME}/{version.version}")  # trusted: the test's own
    from_pt2 = evaluate_classifier(pt2, dataset).predictions
    np.testing.assert_array_equal(from_onnx, from_pt2)
    assert len(set(from_onnx.tolist())) > 1  # the model's answers depend on the images
    assert metrics["accuracy"] == pytest.approx(
        float(np.mean(from_pt2 == np.load(dataset)["y_test"]))
    )


def test_a_payload_in_productions_pt2_never_runs_when_the_gate_re_scores_it(
    tiny_store: TinyStore, tmp_path: Path
) -> None:
    client, champion = _register(tiny_store, _cnn(2))
    marker = tmp_path / "pwned"
    _plant_payload(client, champion, marker)
    dataset = _dataset(tmp_path / "d.npz", 50, 3)
    prepared = PreparedData.from_file(dataset, data_md5="other-md5", split_hash="other-split")
    predictions, source = champion_predictions(client, champion, prepared, 50)
    assert source == "re-scored on this run's test split" and len(predictions) == 50
    assert not marker.exists(), "the gate unpickled Production's pt2 archive"
    _assert_planted_payload_runs(client, champion, marker)


def test_a_production_without_an_onnx_file_is_not_re_scored_from_its_pt2(
    tiny_store: TinyStore, tmp_path: Path
) -> None:
    client, champion = _register(tiny_store, _cnn(4), onnx=False)
    dataset = _dataset(tmp_path / "d.npz", 20, 5)
    prepared = PreparedData.from_file(dataset, data_md5="m", split_hash="s")
    with pytest.raises(
        ValueError, match=r"cannot be re-scored.*onnx/model\.onnx.*never a pickle or pt2"
    ):
        champion_predictions(client, champion, prepared, 20)


def test_a_payload_in_the_candidates_pt2_never_runs_in_evaluation_or_profiling(
    tiny_store: TinyStore, tmp_path: Path
) -> None:
    """The other two train-flow steps that score the just-logged model read its ONNX file too."""
    client, candidate = _register(tiny_store, _cnn(6))
    marker = tmp_path / "pwned"
    _plant_payload(client, candidate, marker)
    dataset = _dataset(tmp_path / "d.npz", 60, 7)
    _, predictions = score_model(client, candidate.run_id, dataset)  # evaluate_task's scoring
    cfg = app_config(monitor={"reference_sample_size": 50})
    profile = attachments.validation_profile(cfg, client, candidate.run_id, dataset)
    assert len(predictions) == 60 and profile.n == 60
    assert not marker.exists(), "a train-flow step unpickled the candidate's pt2 archive"
    _assert_planted_payload_runs(client, candidate, marker)
