"""Log a classifier to MLflow as the ONNX graph the API serves, and load it back as served.

The model is logged with MLflow's ``onnx`` flavour: the version's own folder holds ``model.onnx``,
the graph ONNX Runtime runs for the API, the gate, the evaluation and the monitoring profile
(byte for byte the same file: :mod:`src.served_model` picks it for all of them), and an
``MLmodel`` a person can read: the input signature (``images``, float32 (N, 1, 28, 28)), the
output (``logits``, (N, classes)), the class names and the preprocessing. MLflow's own tools
(``mlflow.pyfunc.load_model``, ``mlflow models serve``) run the same graph through ONNX Runtime;
nothing in a logged model is pickled.

Versions registered before were MLflow ``pt2`` PyTorch models, whose archive holds a pickled
member; they are served, scored and rolled back to from the ONNX graph their run kept beside them
(``onnx/model.onnx``, :func:`log_onnx` writes that layout), never from the pt2.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import mlflow.onnx
import numpy as np
import onnx
import onnxruntime
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import Schema, TensorSpec

from src.labels import CLASS_NAMES
from src.onnx_model import ONNX_MODEL_ARTIFACT, OnnxClassifier, load_onnx_classifier
from src.preprocessing import IMAGE_SIZE, MEAN, STD
from src.served_model import NoServableModel, fetch_served_model

MODEL_ARTIFACT_NAME = "model"
PREPROCESSING_VERSION = "fmnist-gray28-v1"
INPUT_NAME, OUTPUT_NAME = "images", "logits"
# What a reader of MLmodel needs to feed the graph and read its answer.
INPUT_DESCRIPTION = (
    f"{INPUT_NAME}: float32 (N, 1, {IMAGE_SIZE}, {IMAGE_SIZE}), a {IMAGE_SIZE}x{IMAGE_SIZE} "
    f"grayscale garment on a dark background; pixel / 255, then (x - {MEAN}) / {STD}"
)
OUTPUT_DESCRIPTION = (
    f"{OUTPUT_NAME}: float32 (N, classes); argmax indexes class_names, softmax gives the "
    "API's confidences"
)
# The most bytes of a model file read for scoring (the API has serve.max_model_bytes).
MAX_MODEL_BYTES = 1024 * 1024 * 1024


def model_signature(num_classes: int = len(CLASS_NAMES)) -> ModelSignature:
    shape = (-1, 1, IMAGE_SIZE, IMAGE_SIZE)
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), shape, name=INPUT_NAME)]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, num_classes), name=OUTPUT_NAME)]),
    )


def pip_requirements() -> list[str]:
    # Pinned explicitly: MLflow's requirement inference is slow (it imports the model's packages).
    return [
        f"mlflow=={mlflow.__version__}",
        f"onnx=={onnx.__version__}",
        f"onnxruntime=={onnxruntime.__version__}",
        "numpy",
    ]


def model_metadata(
    class_names: tuple[str, ...] | list[str], extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What MLmodel's ``metadata`` says: class names, preprocessing, input and output."""
    return {
        "class_names": list(class_names),
        "preprocessing": PREPROCESSING_VERSION,
        "normalize_mean": MEAN,
        "normalize_std": STD,
        "input": INPUT_DESCRIPTION,
        "output": OUTPUT_DESCRIPTION,
        **(extra or {}),
    }


def log_classifier(
    model: torch.nn.Module,
    *,
    class_names: tuple[str, ...] | list[str] = CLASS_NAMES,
    input_example: np.ndarray | None = None,
    metadata: dict[str, Any] | None = None,
) -> mlflow.models.model.ModelInfo:
    """Export ``model`` (logits out) to ONNX and log it to the active MLflow run as an ``onnx``
    flavour model named ``model``: the file the API will serve once a version of it is Production."""
    if input_example is None:
        input_example = np.zeros((1, 1, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    with tempfile.TemporaryDirectory(prefix="onnx-") as tmp:
        graph = onnx.load_model_from_string(onnx_export_bytes(model, Path(tmp)))
    return mlflow.onnx.log_model(
        graph,
        name=MODEL_ARTIFACT_NAME,
        signature=model_signature(len(class_names)),
        input_example=input_example.astype(np.float32),
        metadata=model_metadata(class_names, metadata),
        pip_requirements=pip_requirements(),
        onnx_execution_providers=["CPUExecutionProvider"],
        # Every weight inside model.onnx: the API refuses a graph with external data.
        save_as_external_data=False,
    )


def onnx_export_bytes(model: torch.nn.Module, folder: Path) -> bytes:
    """``model`` exported to ONNX (:func:`export_onnx`), as bytes; a failure says what to do."""
    try:
        return export_onnx(model, folder / "model.onnx").read_bytes()
    except Exception as exc:
        raise RuntimeError(
            f"ONNX export failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); the "
            "API serves the ONNX graph, so this model cannot be registered. Check that the "
            "network uses only ONNX-exportable layers."
        ) from exc


@dataclass
class LoadedClassifier:
    """A logged model (or checkpoint) loaded back for scoring, plus what names its answers.

    Not the trainer: that is :class:`src.training.module.LitClassifier`."""

    module: torch.nn.Module
    class_names: list[str]
    metadata: dict[str, Any] = field(default_factory=dict)
    model_uri: str = ""

    @torch.inference_mode()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.module(images.to(torch.float32).contiguous())

    def predict_proba(self, images: torch.Tensor) -> np.ndarray:
        """Normalised images (N, 1, 28, 28) → class probabilities (N, C)."""
        return torch.softmax(self.logits(images).float(), dim=1).numpy()

    def predict_proba_batched(self, images: torch.Tensor, batch_size: int = 1024) -> np.ndarray:
        parts = [
            self.predict_proba(images[i : i + batch_size])
            for i in range(0, len(images), batch_size)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, len(self.class_names)), np.float32)


def load_classifier(model_uri: str, tracking_uri: str | None = None) -> OnnxClassifier:
    """The model at ``model_uri`` (``models:/NAME@production``, ``models:/NAME/3``,
    ``models:/m-...``, ``runs:/RUN/model`` or its folder) as served: its ONNX graph in ONNX
    Runtime, the class names from its MLmodel. Nothing is unpickled, so any model is safe here."""
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    run_id = _run_of(client, model_uri)
    classifier = load_served_classifier(client, model_uri, run_id)
    classifier.metadata.setdefault("model_uri", model_uri)
    return classifier


def _run_of(client: MlflowClient, model_uri: str) -> str | None:
    """The run a registered version or logged model came from (``None`` if not told)."""
    try:
        if model_uri.startswith("runs:/"):
            return model_uri[len("runs:/") :].split("/")[0]
        version = _model_version(client, model_uri)
        if version is not None:
            return version.run_id or None
        if model_uri.startswith("models:/m-"):
            return client.get_logged_model(model_uri[len("models:/") :]).source_run_id
    except MlflowException:
        return None
    return None


def _model_version(client: MlflowClient, model_uri: str) -> Any:
    """The registered version ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS`` names, else None."""
    if not model_uri.startswith("models:/") or model_uri.startswith("models:/m-"):
        return None
    rest = model_uri[len("models:/") :]
    if "@" in rest:
        name, alias = rest.split("@", 1)
        return client.get_model_version_by_alias(name, alias)
    name, _, version = rest.rpartition("/")
    return client.get_model_version(name, version) if name and version.isdigit() else None


def model_location(client: MlflowClient, model_uri: str) -> str:
    """Where the files of the model ``model_uri`` names are stored (a version's storage location,
    a logged model's artifact location, or the URI itself when it is already a location)."""
    version = _model_version(client, model_uri)
    if version is not None:
        return str(client.get_model_version_download_uri(version.name, version.version))
    if model_uri.startswith("models:/m-"):
        return str(client.get_logged_model(model_uri[len("models:/") :]).artifact_location)
    if model_uri.startswith("runs:/"):
        run_id, _, path = model_uri[len("runs:/") :].partition("/")
        run = client.get_run(run_id)
        logged = client.search_logged_models(
            [run.info.experiment_id],
            filter_string=f"source_run_id = '{run_id}' AND name = '{path or MODEL_ARTIFACT_NAME}'",
        )
        if logged:  # MLflow 3 keeps a run's logged model outside the run's artifacts
            return str(logged[0].artifact_location)
        return str(run.info.artifact_uri).rstrip("/") + "/" + path
    return model_uri


def _artifact_reader(client: MlflowClient, folder: Path) -> Any:
    """``read(location, path, max_bytes)`` through MLflow's artifact repositories, into ``folder``."""
    tracking_uri = client._tracking_client.tracking_uri
    count = iter(range(1_000_000))

    def read(location: str, path: str, max_bytes: int) -> bytes:
        local = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=location.rstrip("/") + "/" + path,
                dst_path=str(folder / str(next(count))),
                tracking_uri=tracking_uri,
            )
        )
        if not local.is_file() or local.is_symlink():
            raise ValueError(f"{path} is not a regular file")
        if local.stat().st_size > max_bytes:
            raise ValueError(f"{path} is {local.stat().st_size} bytes, over the {max_bytes} limit")
        return local.read_bytes()

    return read


def load_served_classifier(
    client: MlflowClient, model_uri: str | None, run_id: str | None = None
) -> OnnxClassifier:
    """The ONNX graph the API serves for the model ``model_uri`` (a registered version, a logged
    model or their folder; ``run_id``: its run, where versions registered before the onnx flavour
    keep theirs), in ONNX Runtime, checked as the API checks it: read as data (nothing
    unpickled), so a model file that someone with write access to the artifact store replaced
    cannot run code here."""
    if not model_uri and not run_id:
        raise ValueError("no model to score: pass a registered version or a logged model")
    with tempfile.TemporaryDirectory(prefix="served-model-") as tmp:
        try:
            location = model_location(client, model_uri) if model_uri else ""
            run_uri = str(client.get_run(run_id).info.artifact_uri) if run_id else None
            served = fetch_served_model(
                _artifact_reader(client, Path(tmp)), location, run_uri, MAX_MODEL_BYTES
            )
        except NoServableModel:
            raise
        except (MlflowException, OSError) as exc:
            raise NoServableModel(
                f"{model_uri or f'run {run_id}'} is unreadable "
                f"({str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}); "
                "models are scored only from their ONNX graph, never a pickle or pt2: register "
                "models logged by `make train`"
            ) from exc
    names = served.metadata.get("class_names") or list(CLASS_NAMES)
    classifier = load_onnx_classifier(served.model_bytes, names, threads=os.cpu_count() or 1)
    classifier.metadata = {**served.metadata, "served_file": served.origin}
    return classifier


def export_onnx(model: torch.nn.Module, path: Path) -> Path:
    """Export ``model`` (fp32, eval) to ONNX with a dynamic batch dimension (input ``images``).

    The TorchScript-based exporter is much faster for this net than the torch.export-based one
    (the default since torch 2.9), so the latter is only the fallback.
    """
    model = model.to("cpu").float().to(memory_format=torch.contiguous_format).eval()
    example = torch.zeros(2, 1, IMAGE_SIZE, IMAGE_SIZE)
    names = {"input_names": ["images"], "output_names": ["logits"]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                dynamo=False,
                **names,
            )
        except Exception:
            batch = torch.export.Dim("batch", min=1, max=65536)
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamic_shapes={"x": {0: batch}},
                dynamo=True,
                **names,
            )
    return path


def log_onnx(client: MlflowClient, run_id: str, model: torch.nn.Module) -> Path:
    """Export ``model`` into run ``run_id`` as ``onnx/model.onnx``: the layout of the versions
    registered before the onnx flavour (a pt2 model plus this file), which are still served
    from it. The trainer no longer writes it; tests recreate such versions with it."""
    folder, name = ONNX_MODEL_ARTIFACT.rsplit("/", 1)
    path = Path(tempfile.mkdtemp(prefix="onnx-")) / name
    path.write_bytes(onnx_export_bytes(model, path.parent))
    client.log_artifact(run_id, str(path), artifact_path=folder)
    return path
