"""The one place where answers to prediction requests are produced (:func:`classify_request`).

The body is read on the event loop (bounded by the limit middleware); parsing, decoding and the
forward run in a worker thread under a capacity limiter, and are dropped as soon as the client
disconnects.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import numpy as np
from fastapi import Request
from starlette.requests import ClientDisconnect

from src.monitoring.inputs import InputInfo
from src.serving.deps import ServingContext
from src.serving.errors import ApiError
from src.serving.inference import (
    BadImages,
    BatchTooLarge,
    ClientGone,
    ImageLimits,
    answers,
    decode_all,
)
from src.serving.model_store import LoadedModel
from src.serving.multipart import (
    MultipartError,
    Part,
    TooManyFiles,
    boundary_of,
    parse_parts,
    read_body,
)

MAX_FORM_FIELDS = 16  # plain (non-file) form fields tolerated beside the files
MAX_FIELD_BYTES = 64 * 1024
T = TypeVar("T")


def multipart_boundary(request: Request, field: str) -> bytes:
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise ApiError(
            415,
            "unsupported_media_type",
            f"Send the image as multipart/form-data in the field '{field}' (got Content-Type "
            f"{content_type or 'none'!r}), e.g. curl -F {field}=@shirt.png ...",
        )
    try:
        return boundary_of(content_type)
    except MultipartError as exc:
        raise ApiError(exc.status, exc.error, str(exc)) from exc


def files_of(parts: list[Part], field: str) -> list[Part]:
    values = [part for part in parts if part.name == field]
    if not values:
        raise ApiError(
            422,
            "missing_field",
            f"The multipart form has no field '{field}'; send the image as -F {field}=@image.png.",
        )
    for index, part in enumerate(values):
        if part.filename is None:
            raise ApiError(
                422,
                "not_a_file",
                f"Field '{field}' (#{index}) is plain text, not a file upload; send it as a "
                f"file, e.g. -F {field}=@image.png.",
            )
    return values


def _parse(
    body: bytearray, boundary: bytes, field: str, max_files: int, ctx: ServingContext, path: str
) -> list[Part]:
    try:
        parts = parse_parts(
            body,
            boundary,
            max_files=max_files,
            max_fields=MAX_FORM_FIELDS,
            max_file_bytes=ctx.cfg.serve.max_image_bytes,
            max_field_bytes=MAX_FIELD_BYTES,
        )
    except TooManyFiles as exc:
        hint = "; use /predict/batch for several images" if max_files == 1 else ""
        raise ApiError(
            413, exc.error, f"Too many files: {path} takes at most {max_files} per request{hint}."
        ) from exc
    except MultipartError as exc:
        raise ApiError(exc.status, exc.error, str(exc)) from exc
    return files_of(parts, field)


def _bad_images(exc: BadImages, count: int) -> ApiError:
    if count == 1:
        detail = exc.problems[0].message
    else:
        detail = f"{len(exc.problems)} of {count} files cannot be classified: " + "; ".join(
            f"#{p.index} ({p.filename}): {p.message}" for p in exc.problems[:5]
        )
    return ApiError(422, "bad_image", detail, [p.as_dict() for p in exc.problems])


async def run_until_disconnect(
    request: Request, job: Callable[[threading.Event], T], limiter: anyio.CapacityLimiter
) -> T:
    """``job(cancelled)`` in a worker thread; ``cancelled`` is set when the client disconnects."""
    cancelled = threading.Event()

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        cancelled.set()

    outcome: list[Any] = []
    async with anyio.create_task_group() as group:
        group.start_soon(watch)
        try:
            outcome.append(await anyio.to_thread.run_sync(job, cancelled, limiter=limiter))
        except Exception as exc:  # re-raised below, outside the task group (no ExceptionGroup)
            outcome.append(exc)
        group.cancel_scope.cancel()
    if isinstance(outcome[0], Exception):
        raise outcome[0]
    result: T = outcome[0]
    return result


def forward_in_thread(
    ctx: ServingContext,
    model: LoadedModel,
    decode: Callable[[threading.Event | None, ImageLimits], np.ndarray],
    *,
    single: bool,
) -> Callable[[threading.Event], np.ndarray]:
    """The job of a worker thread: decode (under the full limits), then forward."""

    def job(cancelled: threading.Event) -> np.ndarray:
        admitted = ctx.forwarder.admitted(model, single=single, speedup=model.batch_speedup)
        with admitted as forward:
            return forward(decode(cancelled, ctx.image_limits))

    return job


async def probabilities_for(
    request: Request,
    ctx: ServingContext,
    model: LoadedModel,
    decode: Callable[[threading.Event | None, ImageLimits], np.ndarray],
    *,
    single: bool,
) -> np.ndarray:
    """One image on a one-core worker: decoded and forwarded on the event loop when it is small
    (a thread hop would cost more than the work); anything else in a worker thread."""
    if single and ctx.inline_limits is not None:
        try:
            images = decode(None, ctx.inline_limits)
        except BatchTooLarge:  # over the inline pixel budget: decode it off the loop
            pass
        else:
            return await ctx.forwarder.forward_inline(model, images, model.batch_speedup)
    job = forward_in_thread(ctx, model, decode, single=single)
    limiter = ctx.single_slots if single else ctx.batch_slots
    return await run_until_disconnect(request, job, limiter)


async def classify_request(
    request: Request, ctx: ServingContext, model: LoadedModel, *, field: str, max_files: int
) -> list[dict[str, Any]]:
    """The answers for the images of multipart field ``field`` (one per file, in order)."""
    boundary = multipart_boundary(request, field)
    body = await read_body(request.stream())
    request.state.model_version = model.version
    path, serve = request.url.path, ctx.cfg.serve
    counted: list[int] = [0]
    inputs: list[InputInfo] = []  # what the prediction log records about each upload

    def decode(cancelled: threading.Event | None, limits: ImageLimits) -> np.ndarray:
        files = _parse(body, boundary, field, max_files, ctx, path)
        counted[0] = len(files)
        blobs, names = [part.data for part in files], [part.filename for part in files]
        return decode_all(blobs, names, limits, cancelled, inputs)

    try:
        probabilities = await probabilities_for(request, ctx, model, decode, single=max_files == 1)
    except BadImages as exc:
        ctx.metrics.images_rejected.inc(len(exc.problems))
        request.state.error = "bad_image"
        raise _bad_images(exc, counted[0]) from exc
    except BatchTooLarge as exc:
        request.state.error = "batch_too_large"
        raise ApiError(413, "batch_too_large", str(exc)) from exc
    except ClientGone as exc:
        request.state.error = "client_disconnected"
        raise ClientDisconnect() from exc
    results = answers(probabilities, model.class_names, model.version, serve.top_k)
    request.state.images = len(results)
    for label, count in Counter(result["label"] for result in results).items():
        ctx.metrics.predictions.labels(label=label).inc(count)
    return ctx.monitor.record(model, inputs, results) if ctx.monitor else results
