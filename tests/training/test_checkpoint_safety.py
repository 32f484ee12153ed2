"""Checkpoints are read with the restricted unpickler: a planted pickle payload never runs,
whether it comes in through TRAIN_RESUME_FROM or `evaluate --checkpoint`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from src.evaluate import classifier_from_checkpoint
from src.training.train import train_model
from tests.helpers.training import tiny_config, tiny_prepared


class Payload:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (Path.touch, (str(MARKER),))  # type: ignore[return-value]


MARKER = Path("/nonexistent")


def _planted(tmp_path: Path) -> Path:
    global MARKER
    MARKER = tmp_path / "payload-ran"
    path = tmp_path / "planted.ckpt"
    torch.save({"state_dict": {}, "payload": Payload()}, path, pickle_protocol=2)
    return path


@pytest.mark.integration  # real data: shared_data_dir
def test_resume_from_a_planted_checkpoint_never_runs_it(tmp_path: Path, tiny_npz: Path) -> None:
    planted = _planted(tmp_path)
    cfg = tiny_config(tmp_path / "project", resume_from=str(planted), max_epochs=1)
    with pytest.raises(Exception, match=r"(?i)weights_only|unsupported|global"):
        train_model(tiny_prepared(tiny_npz), cfg)
    assert not MARKER.exists()


def test_evaluate_checkpoint_never_runs_a_planted_payload(tmp_path: Path) -> None:
    planted = _planted(tmp_path)
    with pytest.raises(Exception, match=r"(?i)weights_only|unsupported|global"):
        classifier_from_checkpoint(planted)
    assert not MARKER.exists()
