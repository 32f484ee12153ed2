"""The served form of a model: the ONNX graph the trainer logs with every run
(``onnx/model.onnx``), run by ONNX Runtime. The API serves it; the train-flow scores candidate and
Production with it, so what is gated is what is served and no registry artifact is unpickled.

An ONNX file is a protobuf of operators and weights: loading it parses data and runs no code from
the file, unlike MLflow's pickle flavour or the pickled member of a pt2 archive. What a graph can
still reach outside itself is refused before ONNX Runtime sees it (:func:`check_model_bytes`):

* *external data*: a tensor may name a file whose bytes become its values; ONNX Runtime resolves
  the name against the process's working folder, so a registered graph could read e.g. the stack's
  password file and answer it back as confidences. Any tensor stored outside the file is refused,
  and sessions are given an empty folder to resolve such names in, besides;
* *custom operators*: only the standard domains (and the model's own functions built from them)
  are accepted; no custom-op library is ever registered here.

Warm-up runs under a time limit (ONNX Runtime's terminate flag), so a graph that loops for ever
(a ``Loop`` of 10^12 iterations) fails to load instead of hanging the reload.
"""

from __future__ import annotations

import atexit
import contextlib
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from src.preprocessing import IMAGE_SIZE

# Where each run keeps the form of its model that the API serves (ONNX: data, never code).
ONNX_MODEL_ARTIFACT = "onnx/model.onnx"
RUNTIME = f"onnxruntime {ort.__version__}"
# The ONNX operator sets ONNX Runtime implements itself; anything else is a custom operator.
STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})
DEFAULT_WARMUP_TIMEOUT_S = 30.0
# ONNX Runtime resolves external-data names of a model loaded from bytes against this folder.
EXTERNAL_DATA_FOLDER_KEY = "session.model_external_initializers_file_folder_path"


class ModelLoadError(RuntimeError):
    """The model file is not a usable classifier; the message says why."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


# --- what a model file may contain ------------------------------------------------------------
def _is_external(tensor: Any) -> bool:
    return bool(tensor.data_location == 1 or len(tensor.external_data))  # 1 = EXTERNAL


def _external_name(tensor: Any) -> str:
    location = next((e.value for e in tensor.external_data if e.key == "location"), "?")
    return f"tensor {tensor.name!r} stored in the external file {location[:100]!r}"


def _attribute_tensors(node: Any) -> Iterator[Any]:
    for attribute in node.attribute:
        if attribute.HasField("t"):
            yield attribute.t
        yield from attribute.tensors
        for sparse in [attribute.sparse_tensor, *attribute.sparse_tensors]:
            yield sparse.values
            yield sparse.indices


def _attribute_graphs(node: Any) -> Iterator[Any]:
    for attribute in node.attribute:
        if attribute.HasField("g"):
            yield attribute.g
        yield from attribute.graphs


def _graph_tensors(graph: Any) -> Iterator[Any]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices


def _node_problems(nodes: Any, local_functions: set[tuple[str, str]]) -> Iterator[str]:
    for node in nodes:
        if node.domain not in STANDARD_DOMAINS and (node.domain, node.op_type) not in (
            local_functions
        ):
            yield f"custom operator {node.domain}::{node.op_type}"
        yield from (_external_name(t) for t in _attribute_tensors(node) if _is_external(t))
        for subgraph in _attribute_graphs(node):  # Loop, If and Scan bodies
            yield from _graph_problems(subgraph, local_functions)


def _graph_problems(graph: Any, local_functions: set[tuple[str, str]]) -> Iterator[str]:
    yield from (_external_name(t) for t in _graph_tensors(graph) if _is_external(t))
    yield from _node_problems(graph.node, local_functions)


def _problems(model: Any) -> Iterator[str]:
    """Every external tensor and custom operator of ``model``, subgraphs and functions included."""
    local_functions = {(f.domain, f.name) for f in model.functions}
    yield from _graph_problems(model.graph, local_functions)
    for info in model.training_info:
        yield from _graph_problems(info.initialization, local_functions)
        yield from _graph_problems(info.algorithm, local_functions)
    for function in model.functions:
        yield from _node_problems(function.node, local_functions)


def check_model_bytes(model_bytes: bytes) -> None:
    """Refuse a model that reaches outside its own bytes: any tensor stored as external data, any
    operator outside the standard ONNX domains. Parsed with ``onnx``, external data not loaded."""
    import onnx  # imported with the first model, not at the API's start

    try:
        model = onnx.load_model_from_string(model_bytes)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise ModelLoadError(f"not a valid ONNX model ({_first_line(exc)})") from exc
    problems = list(dict.fromkeys(_problems(model)))
    if problems:
        shown = "; ".join(problems[:3]) + (f" (and {len(problems) - 3} more)" * (len(problems) > 3))
        raise ModelLoadError(
            f"the ONNX model reaches outside its file, refused: {shown}; export it again with "
            "every weight inside the file and only standard ONNX operators"
        )


# --- the session ------------------------------------------------------------------------------
_empty_folder_lock = threading.Lock()
_empty_folder: Path | None = None


def empty_folder() -> Path:
    """A private, empty folder of this process (removed at exit): where a session resolves
    external-data names, should one ever get past :func:`check_model_bytes`."""
    global _empty_folder
    with _empty_folder_lock:
        if _empty_folder is None or not _empty_folder.is_dir():
            _empty_folder = Path(tempfile.mkdtemp(prefix="onnx-no-external-data-"))
            atexit.register(_remove_folder, _empty_folder)
        return _empty_folder


def _remove_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):
        folder.rmdir()


def _session_options(threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle worker threads would spin on the cores that decode the next request's images.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry(EXTERNAL_DATA_FOLDER_KEY, str(empty_folder()))
    options.log_severity_level = 3
    return options


@dataclass
class OnnxClassifier:
    """An ONNX Runtime session over normalised images (N, 1, 28, 28) → class probabilities."""

    session: ort.InferenceSession
    class_names: list[str]
    threads: int
    input_name: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def runtime(self) -> str:
        return RUNTIME

    def logits(self, images: np.ndarray, run_options: ort.RunOptions | None = None) -> np.ndarray:
        batch = np.ascontiguousarray(images, dtype=np.float32)
        output = self.session.run(None, {self.input_name: batch}, run_options)[0]
        return np.asarray(output, dtype=np.float32)

    def predict_proba(
        self, images: np.ndarray, run_options: ort.RunOptions | None = None
    ) -> np.ndarray:
        logits = self.logits(images, run_options)
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities: np.ndarray = shifted / shifted.sum(axis=1, keepdims=True)
        return probabilities

    def predict_proba_batched(self, images: Any, batch_size: int = 1024) -> np.ndarray:
        """:meth:`predict_proba` over a whole split (numpy or torch images), in batches."""
        array = np.asarray(images, dtype=np.float32)
        parts = [
            self.predict_proba(array[i : i + batch_size]) for i in range(0, len(array), batch_size)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, len(self.class_names)), np.float32)


def predict_within(classifier: OnnxClassifier, images: np.ndarray, limit_s: float) -> np.ndarray:
    """``classifier.predict_proba(images)``, terminated (ModelLoadError) after ``limit_s``."""
    options = ort.RunOptions()
    fired = threading.Event()

    def terminate() -> None:
        fired.set()
        options.terminate = True

    timer = threading.Timer(limit_s, terminate)
    timer.daemon = True
    timer.start()
    try:
        return classifier.predict_proba(images, options)
    except Exception as exc:
        if fired.is_set():
            raise ModelLoadError(
                f"the ONNX model did not answer a warm-up batch within {limit_s:.3g} s (stopped); "
                "a served graph must answer in a bounded time (no endless Loop)"
            ) from exc
        raise
    finally:
        timer.cancel()


def _open_session(model_bytes: bytes, threads: int) -> ort.InferenceSession:
    check_model_bytes(model_bytes)
    try:
        return ort.InferenceSession(
            model_bytes, sess_options=_session_options(threads), providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # ORT raises its own exception types for unparsable files
        raise ModelLoadError(f"not a valid ONNX model ({_first_line(exc)})") from exc


def load_onnx_classifier(
    model_bytes: bytes,
    class_names: Sequence[str],
    *,
    threads: int,
    warmup_timeout_s: float = DEFAULT_WARMUP_TIMEOUT_S,
) -> OnnxClassifier:
    """Check ``model_bytes`` (:func:`check_model_bytes`), open a session, check its input/output
    shapes and warm it up, each warm-up batch within ``warmup_timeout_s``."""
    session = _open_session(model_bytes, threads)
    inputs = session.get_inputs()
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        raise ModelLoadError(
            "the ONNX model must take one input shaped (N, 1, 28, 28); got "
            + ", ".join(f"{i.name}{i.shape}" for i in inputs)
        )
    classifier = OnnxClassifier(
        session=session, class_names=list(class_names), threads=threads, input_name=inputs[0].name
    )
    for batch in (1, 2):  # warm-up, and a check that the batch dimension is dynamic
        zeros = np.zeros((batch, 1, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
        try:
            probabilities = predict_within(classifier, zeros, warmup_timeout_s)
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"the ONNX model fails on a batch of {batch}: {exc}") from exc
        if probabilities.shape != (batch, len(class_names)):
            raise ModelLoadError(
                f"the ONNX model answers shape {probabilities.shape} for {batch} images; "
                f"expected ({batch}, {len(class_names)})"
            )
    return classifier
