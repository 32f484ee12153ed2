"""Which file of a registered model version is served, decided once for the API, the gate, the
evaluation and the monitoring profile (they all call :func:`fetch_served_model`).

A version logged by the trainer is MLflow's ``onnx`` flavour: its own folder holds ``model.onnx``
(the ONNX graph ONNX Runtime runs) and an ``MLmodel`` that names it (``flavors.onnx.data``), with
the class names, the preprocessing and the input signature. That ``model.onnx`` is what is served:
the registry's version *is* the served file, byte for byte.

Versions registered before (MLflow's ``pt2`` PyTorch flavour) hold no ONNX graph themselves; their
run kept one beside them (``onnx/model.onnx``), which is served instead, so they still roll back
and serve. Their pt2 archive is never read (it holds a pickled member).

Everything here is data: ``MLmodel`` is parsed with YAML's safe loader, at most
:data:`MAX_MLMODEL_BYTES`, and the flavour may name only a plain file inside the version's own
folder. No MLflow import: the API process uses this module.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml

# The onnx flavour's file in a version's own folder, as MLflow writes it.
REGISTERED_ONNX_FILE = "model.onnx"
# Beside pt2 versions registered before the onnx flavour: the ONNX graph in their run.
LEGACY_ONNX_ARTIFACT = "onnx/model.onnx"
MAX_MLMODEL_BYTES = 1024 * 1024
ONNX_FLAVOR = "onnx"
# A flavour's file must be a plain name in the version's folder: no folder, no "..".
_PLAIN_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}")

# read(location, path inside it, max bytes) -> the bytes; raises when it cannot.
ReadArtifact = Callable[[str, str, int], bytes]


class NoServableModel(ValueError):
    """The version has no ONNX graph this project can serve; the message says what to do."""


@dataclass(frozen=True)
class ServedModel:
    """The bytes to run, what ``MLmodel`` says about them and where they came from."""

    model_bytes: bytes
    metadata: dict[str, Any] = field(default_factory=dict)
    origin: str = ""  # "model.onnx (onnx flavor)" or "run artifact onnx/model.onnx (pt2 version)"
    flavors: tuple[str, ...] = ()


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:200] if text else type(exc).__name__


def parse_mlmodel(text: bytes) -> dict[str, Any]:
    """``MLmodel`` as plain data (YAML safe loader: a tag that builds an object is refused)."""
    document = yaml.safe_load(text)
    return document if isinstance(document, dict) else {}


def mlmodel_metadata(document: dict[str, Any]) -> dict[str, Any]:
    """The ``metadata`` section; ``class_names`` kept only when it is a list of strings."""
    metadata = document.get("metadata")
    if not isinstance(metadata, dict):
        return {}
    metadata = dict(metadata)
    names = metadata.get("class_names")
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        metadata.pop("class_names", None)
    return metadata


def onnx_flavor_file(document: dict[str, Any]) -> str | None:
    """The file the ``onnx`` flavour names (``None``: no onnx flavour); a name that is not a plain
    file in the version's folder is refused."""
    flavors = document.get("flavors")
    flavor = flavors.get(ONNX_FLAVOR) if isinstance(flavors, dict) else None
    if not isinstance(flavor, dict):
        return None
    data = flavor.get("data", REGISTERED_ONNX_FILE)
    if not (isinstance(data, str) and _PLAIN_FILE.fullmatch(data) and ".." not in data):
        raise NoServableModel(
            f"its MLmodel's onnx flavor names {str(data)[:80]!r}, not a plain file in the "
            f"version's folder; log the model with mlflow.onnx.log_model (data: "
            f"{REGISTERED_ONNX_FILE})"
        )
    return data


def _read_mlmodel(read: ReadArtifact, location: str) -> dict[str, Any]:
    try:
        return parse_mlmodel(read(location, "MLmodel", MAX_MLMODEL_BYTES))
    except Exception:  # unreadable, oversized or not YAML: as if there were none
        return {}


def _flavor_names(document: dict[str, Any]) -> tuple[str, ...]:
    flavors = document.get("flavors")
    return tuple(str(name) for name in flavors) if isinstance(flavors, dict) else ()


def fetch_served_model(
    read: ReadArtifact, model_location: str, run_artifact_uri: str | None, max_bytes: int
) -> ServedModel:
    """The ONNX graph to serve for the model stored at ``model_location`` (a version's folder):

    * its own onnx-flavour file when its ``MLmodel`` declares one (what the trainer registers);
    * else, for a version registered before (pt2), its run's ``onnx/model.onnx``;
    * else :class:`NoServableModel`, saying which flavours it has and what to do.
    """
    document = _read_mlmodel(read, model_location)
    metadata = mlmodel_metadata(document)
    flavors = _flavor_names(document)
    name = onnx_flavor_file(document)
    if name is not None:
        try:
            model_bytes = read(model_location, name, max_bytes)
        except Exception as exc:
            raise NoServableModel(
                f"its onnx flavor's {name} is unreadable ({_first_line(exc)}); register a model "
                "logged by `make train`"
            ) from exc
        return ServedModel(model_bytes, metadata, f"{name} (onnx flavor)", flavors)
    if run_artifact_uri:
        try:
            model_bytes = read(run_artifact_uri, LEGACY_ONNX_ARTIFACT, max_bytes)
        except Exception as exc:
            raise NoServableModel(_no_onnx_message(flavors, exc)) from exc
        return ServedModel(
            model_bytes, metadata, f"run artifact {LEGACY_ONNX_ARTIFACT} (no onnx flavor)", flavors
        )
    raise NoServableModel(_no_onnx_message(flavors, None))


def _no_onnx_message(flavors: tuple[str, ...], exc: BaseException | None) -> str:
    kind = "/".join(flavors) if flavors else "no readable MLmodel"
    detail = f"; its run's {LEGACY_ONNX_ARTIFACT}: {_first_line(exc)}" if exc is not None else ""
    return (
        f"it is not an ONNX model ({kind}) and has no ONNX graph beside it{detail}; only ONNX "
        "models are served (never a pickle or pt2): register a model logged by `make train`"
    )
