"""Response shapes (for the OpenAPI schema and clients)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ClassProbability(BaseModel):
    label: str
    probability: float = Field(ge=0, le=1)


class Prediction(BaseModel):
    label: str = Field(description="Garment name, e.g. 'Sneaker'.")
    class_id: int = Field(ge=0, description="Index of the class (0-9 for Fashion-MNIST).")
    confidence: float = Field(ge=0, le=1, description="Probability of `label`.")
    top_k: list[ClassProbability] = Field(description="The most likely classes, best first.")
    model_version: str = Field(description="Registry version that answered.")
    prediction_id: str = Field(description="Id of this answer in the prediction log (/feedback).")
    low_confidence: bool = Field(
        description="True when `confidence` is below the version's calibrated threshold: "
        "the answer is a guess (the web page says 'not sure')."
    )


class ModelDescription(BaseModel):
    name: str
    version: str
    run_id: str | None
    model_uri: str
    metrics: dict[str, float]
    data_md5: str | None
    split_hash: str | None
    validation_status: str | None
    class_names: list[str]
    flip_tta: bool | None = Field(description="Mirror test-time averaging inside the model.")
    runtime: str = Field(description="What runs the model, e.g. 'onnxruntime 1.32.0'.")
    threads: int = Field(description="Threads per forward.")
    micro_batching: str = Field(
        description="'on' while concurrent /predict images of this model are forwarded together."
    )
    batch_speedup: float = Field(
        description="Per-image forward time at batch 1 over that at the micro-batch size, as "
        "measured when the model loaded (1.0: not measured)."
    )
    loaded_at: str = Field(description="ISO 8601, UTC.")
    load_seconds: float
    production_version: str | None = Field(
        description="The registry's Production version (differs from `version` when it failed "
        "to load)."
    )
    load_error: str | None = Field(description="Why the Production version failed to load.")


class ErrorBody(BaseModel):
    error: str = Field(description="Machine-readable code, e.g. 'payload_too_large'.")
    detail: str = Field(description="What went wrong and what to do, in one line.")
    problems: list[dict[str, Any]] | None = None


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    model_version: str | None = None
    reason: str | None = Field(
        default=None,
        description="Why not ready, or 'serving vX; Production vY failed to load: ...', or "
        "'serving vX; the reload of Production vY has run N s, past its deadline ...'.",
    )
    production_version: str | None = None
    reload_stuck: bool | None = Field(
        default=None, description="True while a reload runs past its deadline."
    )


def multipart_body(field: str, *, many: bool, max_files: int) -> dict[str, Any]:
    """OpenAPI ``requestBody`` for a multipart upload (the form is parsed by hand, under the
    app's own limits, so FastAPI cannot infer it)."""
    binary = {"type": "string", "format": "binary"}
    schema: dict[str, Any] = (
        {"type": "array", "items": binary, "minItems": 1, "maxItems": max_files} if many else binary
    )
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": [field],
                        "properties": {field: schema},
                    }
                }
            },
        }
    }


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in {
        400: "Malformed multipart body.",
        401: "Missing or wrong X-API-Key (when the server has one configured).",
        413: "Body, file or file count over the limit.",
        415: "Not multipart/form-data.",
        408: "The request body stalled.",
        422: "Missing field, or a file that is not an acceptable image.",
        431: "Request headers too large.",
        503: "No model loaded yet, or too many upload bytes in flight (see Retry-After).",
    }.items()
}
