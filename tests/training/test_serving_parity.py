"""Train/serve parity through the code each side runs: the training datamodule's test batch and
what the API hands the served model, for the same images sent as PNG files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from src.training.data import FashionDataModule
from tests.helpers.api import ModelSources
from tests.helpers.serving import served_inputs


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.integration  # real data: shared_data_dir
def test_the_served_input_is_the_training_batch(
    tiny_npz: Path, tmp_path: Path, model_sources: ModelSources
) -> None:
    with np.load(tiny_npz) as data:
        images, labels = data["x_test"][:8], data["y_test"][:8]
    path = tmp_path / "eight.npz"
    np.savez(
        path,
        **{
            f"{k}_{s}": v
            for s in ("train", "val", "test")
            for k, v in (("x", images), ("y", labels))
        },
    )
    datamodule = FashionDataModule(path, eval_batch_size=8)
    datamodule.setup()
    batch, batch_labels = next(iter(datamodule.test_dataloader()))
    assert torch.equal(batch_labels, torch.as_tensor(labels))
    served = served_inputs(model_sources, [_png(image) for image in images])
    torch.testing.assert_close(torch.from_numpy(served), batch.float(), rtol=0, atol=0)
