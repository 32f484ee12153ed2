"""HTTP serving settings (env prefix ``SERVE_``)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Values people leave in a config when they mean "set a real key here".
PLACEHOLDER_API_KEYS = frozenset(
    {
        "",
        "changeme",
        "change-me",
        "change_me",
        "your-api-key",
        "your_api_key",
        "yourapikey",
        "api-key",
        "api_key",
        "apikey",
        "secret",
        "password",
        "test",
        "xxx",
        "none",
        "null",
        "todo",
        "default",
    }
)
MIN_API_KEY_LENGTH = 16
# Room for the multipart boundaries and part headers around one image (not a setting).
MULTIPART_OVERHEAD = 64 * 1024


def api_key_problem(key: str) -> str | None:
    """Why ``key`` is not acceptable as an API key, or ``None`` when it is."""
    stripped = key.strip()
    if stripped.lower() in PLACEHOLDER_API_KEYS or set(stripped.lower()) <= {"x", "*", "-", "."}:
        return "is a placeholder"
    if stripped != key:
        return "has leading or trailing whitespace"
    if len(key) < MIN_API_KEY_LENGTH:
        return f"is shorter than {MIN_API_KEY_LENGTH} characters"
    return None


class ServeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    env_prefix: ClassVar[str] = "SERVE_"

    # Where `make serve` (python -m src.serving.cli) listens.
    host: str
    port: int = Field(ge=1, le=65535)
    # uvicorn: close idle keep-alive connections after this long; refuse (503) past this many
    # connections and requests at once (0 = no limit).
    keep_alive_timeout_s: float = Field(gt=0)
    limit_concurrency: int = Field(ge=0)
    # How often the registry is asked whether Production moved (once a model is loaded).
    poll_interval_s: float = Field(gt=0)
    # How soon to retry while no model is loaded yet (registry down, nothing promoted yet).
    retry_interval_s: float = Field(gt=0)
    # A Production version that failed to load is retried after this delay, doubling each time.
    load_backoff_s: float = Field(gt=0)
    load_backoff_max_s: float = Field(gt=0)
    # The ONNX model file is refused past this size (it is held in memory while loading).
    max_model_bytes: int = Field(ge=1)
    # One registry check (reads, model fetch, load and warm-up) ends by this deadline; one still
    # running past it is reported stuck in /ready and /metrics while the old model serves.
    reload_timeout_s: float = Field(gt=0)
    # A new model's warm-up batches must answer within this, else the version fails to load.
    warmup_timeout_s: float = Field(gt=0)
    max_batch_files: int = Field(ge=1)
    # One image file; a /predict body may be this plus a little multipart framing.
    max_image_bytes: int = Field(ge=1)
    # A whole /predict/batch body.
    max_batch_bytes: int = Field(ge=1)
    # Pixels decoded for one image (JPEGs are decoded at reduced scale first).
    max_image_pixels: int = Field(ge=1)
    # Longest side of an image as its header states it, checked before anything is decoded.
    max_image_side: int = Field(ge=28)
    # Pixels decoded for all the images of one request together (bounds its CPU time).
    max_batch_pixels: int = Field(ge=1)
    # Bytes of request bodies held at once by the process; past it: 503 with Retry-After.
    max_inflight_bytes: int = Field(ge=1)
    # Request headers (all of them); past it: 431.
    max_header_bytes: int = Field(ge=1024)
    # A request body that stalls this long between two chunks gets 408.
    body_timeout_s: float = Field(gt=0)
    top_k: int = Field(ge=1, le=10)
    # When set, /predict and /predict/batch need header X-API-Key with this value.
    api_key: str | None
    # ONNX Runtime intra-op threads per forward (1 is best for latency with concurrent requests).
    inference_threads: int = Field(ge=1)
    # Forwards running at once per endpoint kind (single, batch) in one worker process; 0 = the
    # worker's share of the cores (cores / workers, at least 1).
    inference_concurrency: int = Field(ge=0)
    # `make serve` runs this many uvicorn worker processes; 0 = one per usable CPU core.
    workers: int = Field(ge=0, le=256)
    # Concurrent /predict images forwarded as one batch: "auto" turns it on only where the model
    # forwards a batch faster per image than one image on this CPU (measured at load).
    micro_batch: Literal["auto", "on", "off"]
    micro_batch_max: int = Field(ge=1, le=1024)
    # A micro-batch waits at most this long, and only for requests already being decoded.
    micro_batch_wait_ms: float = Field(ge=0, le=1000)
    # One JSON line per request from the app (and uvicorn's plain access log switched off).
    json_logs: bool
    log_level: str

    @property
    def max_image_request_bytes(self) -> int:
        """The body of a /predict request with one image of ``max_image_bytes`` (the API's and
        the edge's limit)."""
        return self.max_image_bytes + MULTIPART_OVERHEAD

    @field_validator("api_key")
    @classmethod
    def _reject_placeholder_key(cls, value: str | None) -> str | None:
        if value is None:
            return None
        problem = api_key_problem(value)
        if problem:
            raise ValueError(
                f"the API key {problem}; set SERVE_API_KEY to a random secret of at least "
                f"{MIN_API_KEY_LENGTH} characters (e.g. `openssl rand -hex 32`) or unset it"
            )
        return value
