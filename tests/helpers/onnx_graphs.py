"""Hand-built ONNX graphs as an attacker (or a careless exporter) would write them, and a way to
register one as a model version: for the serving tests of what a model file may reach."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.helpers.api import Registry

OPSET = [helper.make_opsetid("", 17)]


def _model(nodes: list[Any], initializers: list[Any], **extra: Any) -> bytes:
    graph = helper.make_graph(
        nodes,
        "attack",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=extra.pop("opsets", OPSET), **extra)
    model.ir_version = 8
    return model.SerializeToString()


def _flat_zeros() -> tuple[list[Any], list[Any]]:
    """images → (N, 10) zeros that still depend on the input (nothing constant-folded)."""
    nodes = [
        helper.make_node("Flatten", ["images"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["zeros"]),
    ]
    return nodes, [numpy_helper.from_array(np.zeros((784, 10), np.float32), "w")]


def external_tensor(name: str, location: str, length: int) -> Any:
    """A uint8 tensor whose bytes are the first ``length`` bytes of the file ``location``."""
    tensor = TensorProto(name=name, data_type=TensorProto.UINT8, dims=[length])
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def exfiltration_model(location: str = ".stack/env.sh", length: int = 10) -> bytes:
    """Answers softmax(the first ``length`` bytes of ``location``): ONNX Runtime resolves the
    external-data name against the process's working folder."""
    nodes, inits = _flat_zeros()
    nodes += [
        helper.make_node("Cast", ["secret"], ["secret_f"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["zeros", "secret_f"], ["logits"]),
    ]
    return _model(nodes, [*inits, external_tensor("secret", location, length)])


def custom_op_model() -> bytes:
    nodes, inits = _flat_zeros()
    nodes.append(helper.make_node("ReadFile", ["zeros"], ["logits"], domain="com.example"))
    return _model(nodes, inits, opsets=[*OPSET, helper.make_opsetid("com.example", 1)])


def external_in_loop_body_model(location: str) -> bytes:
    """The external tensor hides in a Loop body's Constant node (a subgraph attribute)."""
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond"], ["cond_out"]),
            helper.make_node("Constant", [], ["hidden"], value=external_tensor("h", location, 4)),
            helper.make_node("Identity", ["v"], ["v_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v", TensorProto.FLOAT, ["N", 10]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", TensorProto.FLOAT, ["N", 10]),
        ],
    )
    nodes, inits = _flat_zeros()
    nodes.append(helper.make_node("Loop", ["trips", "", "zeros"], ["logits"], body=body))
    inits.append(numpy_helper.from_array(np.array(1, np.int64), "trips"))
    return _model(nodes, inits)


def endless_loop_model(trips: int = 10**12) -> bytes:
    """A valid graph whose answer waits for a Loop of ``trips`` iterations (adds 0 each)."""
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond"], ["cond_out"]),
            helper.make_node("Add", ["v", "zero"], ["v_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v", TensorProto.FLOAT, ["N", 10]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", TensorProto.FLOAT, ["N", 10]),
        ],
        initializer=[numpy_helper.from_array(np.array(0.0, np.float32), "zero")],
    )
    nodes, inits = _flat_zeros()
    nodes.append(helper.make_node("Loop", ["trips", "", "zeros"], ["logits"], body=body))
    inits.append(numpy_helper.from_array(np.array(trips, np.int64), "trips"))
    return _model(nodes, inits)


def long_kernel_model(side: int) -> bytes:
    """One MatMul of two (side, side) matrices built at run time: a single kernel, which ONNX
    Runtime's terminate flag cannot stop halfway (it is checked between nodes)."""
    nodes, inits = _flat_zeros()
    nodes += [
        helper.make_node("ReduceSum", ["zeros"], ["total"], keepdims=0),
        helper.make_node("Add", ["total", "one"], ["seed"]),
        helper.make_node("Expand", ["seed", "square"], ["big"]),
        helper.make_node("MatMul", ["big", "big"], ["product"]),
        helper.make_node("ReduceSum", ["product"], ["sum"], keepdims=0),
        helper.make_node("Mul", ["sum", "nothing"], ["scalar"]),
        helper.make_node("Add", ["zeros", "scalar"], ["logits"]),
    ]
    inits += [
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        numpy_helper.from_array(np.array(0.0, np.float32), "nothing"),
        numpy_helper.from_array(np.array([side, side], np.int64), "square"),
    ]
    return _model(nodes, inits)


def long_kernel_side(seconds: float) -> int:
    """The side of :func:`long_kernel_model` whose kernel takes about ``seconds`` here: a
    (1000, 1000) MatMul is timed (best of 3, on every core: the fastest it can run) and the side
    scaled by the cube root, so the kernel outlasts a deadline on a fast CPU as on a slow one."""
    import time

    import onnxruntime as ort

    session = ort.InferenceSession(long_kernel_model(1000), providers=["CPUExecutionProvider"])
    images = np.zeros((1, 1, 28, 28), np.float32)
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        session.run(None, {"images": images})
        best = min(best, time.perf_counter() - started)
    return max(1000, int(1000 * (seconds / max(best, 1e-6)) ** (1 / 3)))


def check(model_bytes: bytes) -> None:
    """The graph is valid ONNX apart from what it reaches (external data is not loaded)."""
    onnx.checker.check_model(onnx.load_model_from_string(model_bytes))


ONNX_MLMODEL = """artifact_path: model
flavors:
  onnx:
    data: model.onnx
  python_function:
    data: model.onnx
    loader_module: mlflow.onnx
"""


def add_onnx_version(registry: Registry, model_bytes: bytes, label: str) -> str:
    """Register (gate passed) an onnx-flavour version whose ``model.onnx`` is ``model_bytes``."""
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(registry.tracking_uri)
    try:
        experiment = registry.client.get_experiment_by_name("api-tests")
        assert experiment is not None
        with (
            mlflow.start_run(experiment_id=experiment.experiment_id) as run,
            tempfile.TemporaryDirectory() as tmp,
        ):
            (Path(tmp) / "model.onnx").write_bytes(model_bytes)
            (Path(tmp) / "MLmodel").write_text(ONNX_MLMODEL)
            mlflow.log_artifacts(tmp, artifact_path="model")
            source = mlflow.get_artifact_uri("model")
    finally:
        mlflow.set_tracking_uri(previous)
    return registry.add_source(source, run.info.run_id, label)


def served_file(registry: Registry, version: str) -> Path:
    """The local path of ``version``'s served file (its onnx flavour's ``model.onnx``)."""
    location = registry.client.get_model_version_download_uri(registry.name, version)
    return Path(location[len("file://") :] if location.startswith("file://") else location) / (
        "model.onnx"
    )
