"""Response shapes (for the OpenAPI schema and clients)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema


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


class FieldProblem(BaseModel):
    """One invalid field of a JSON body (422 ``invalid_request``)."""

    model_config = ConfigDict(extra="forbid")
    loc: list[str] = Field(description="Where: 'body', then the field's path.")
    detail: str = Field(description="What is wrong with it.")


class FileProblem(BaseModel):
    """One uploaded file that cannot be classified (422 ``bad_image``)."""

    model_config = ConfigDict(extra="forbid")
    index: int = Field(ge=0, description="Position of the file in the request.")
    filename: str | None
    detail: str = Field(description="Why it cannot be classified.")


class ErrorBody(BaseModel):
    """The body of every error answer (built by :func:`src.serving.errors.error_body`)."""

    model_config = ConfigDict(extra="forbid")
    error: str = Field(description="Machine-readable code, e.g. 'payload_too_large'.")
    detail: str = Field(description="What went wrong and what to do, in one line.")
    # Absent rather than null when there is nothing to list.
    problems: list[FieldProblem | FileProblem] | SkipJsonSchema[None] = Field(
        default=None,
        description="422 only: each invalid field (`loc`) or file (`index`), and its problem.",
    )


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


Responses = dict[int | str, dict[str, Any]]
RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer"}}}
BUSY = "too many upload bytes in flight (`busy`, with Retry-After)"


def error(description: str, **extra: Any) -> dict[str, Any]:
    """An error answer: :class:`ErrorBody` as JSON."""
    return {"model": ErrorBody, "description": description, **extra}


# What any operation can answer, whatever it does: the transport limits run before routing
# (src.serving.limits) and the error handlers catch the rest (src.serving.errors). Every router
# is included with these; a route that answers a status for its own reasons too says both.
TRANSPORT_RESPONSES: Responses = {
    413: error("The declared body is over the limit for this path (`payload_too_large`)."),
    431: error("The request headers are over the limit (`headers_too_large`)."),
    500: error("An unexpected failure (`internal_error`); it was logged."),
    503: error(f"The server is busy: {BUSY}.", headers=RETRY_AFTER),
}

# What an operation that reads a body can answer besides (the others never read one).
BODY_READ = (
    "the body ended short of its Content-Length (`short_body`), or the client left "
    "(`client_disconnected`)"
)
BODY_RESPONSES: Responses = {
    400: error(f"The body cannot be read: {BODY_READ}."),
    408: error("The request body stalled (`request_timeout`)."),
}

API_KEY_RESPONSES: Responses = {
    401: error("Missing or wrong X-API-Key, when the server has one (`unauthorized`)."),
}

NOT_READY = "no model is loaded yet (`not_ready`)"

UPLOAD_RESPONSES: Responses = {
    **BODY_RESPONSES,
    **API_KEY_RESPONSES,
    400: error(f"Malformed multipart body (`malformed_multipart`), or {BODY_READ}."),
    413: error(
        "Body over the limit (`payload_too_large`), a file over its limit (`file_too_large`), "
        "too many files or form fields (`too_many_files`, `too_many_fields`), or images "
        "over the request's decoded-pixel budget (`batch_too_large`)."
    ),
    415: error("Not multipart/form-data (`unsupported_media_type`)."),
    422: error(
        "No such field (`missing_field`), a plain field instead of a file (`not_a_file`), or "
        "files that are not acceptable images (`bad_image`, each in `problems`)."
    ),
    503: error(f"Not ready: {NOT_READY}; or {BUSY}.", headers=RETRY_AFTER),
}
