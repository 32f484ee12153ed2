"""Micro-batching: the images of concurrent ``/predict`` requests go through ONE forward.

Whether that pays depends on the CPU: on some a batch of 16 costs far less than 16 forwards of
one image, on others the same. :func:`batch_speedup` measures it for a model as it loads, and
``serve.micro_batch: auto`` uses the batcher only where the gain is at least ``MIN_SPEEDUP``.

The batcher waits (at most ``max_wait_s``) only for requests that are already being decoded, so
a lone request is forwarded at once and pays no wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

MIN_SPEEDUP = 1.2  # per-image forward time at batch size must be at least this much lower


class Forward(Protocol):
    def predict_proba(self, images: np.ndarray) -> np.ndarray: ...


def _best_seconds(forward: Forward, images: np.ndarray, repeats: int, rounds: int = 3) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(repeats):
            forward.predict_proba(images)
        best = min(best, (time.perf_counter() - started) / repeats)
    return best


def batch_speedup(forward: Forward, batch: int, image_shape: tuple[int, ...]) -> float:
    """Per-image time of a batch of 1 over that of a batch of ``batch`` (best of 3 rounds)."""
    if batch < 2:
        return 1.0
    one = np.zeros((1, *image_shape), dtype=np.float32)
    many = np.zeros((batch, *image_shape), dtype=np.float32)
    single = _best_seconds(forward, one, repeats=8)
    batched = _best_seconds(forward, many, repeats=1) / batch
    return single / batched if batched > 0 else 1.0


@dataclass
class _Job:
    model: Forward
    images: np.ndarray
    future: Future[np.ndarray] = field(default_factory=Future)


class MicroBatcher:
    """One thread forwarding queued jobs, the jobs of one model together, ``max_batch`` images
    at most. ``on_forward(n)`` is told each forward's size (for ``/metrics``)."""

    def __init__(
        self, max_batch: int, max_wait_s: float, on_forward: Callable[[int], None]
    ) -> None:
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.on_forward = on_forward
        self._jobs: deque[_Job] = deque()
        self._decoding = 0  # requests admitted that have not submitted their images yet
        self._condition = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="micro-batcher", daemon=True)
        self._thread.start()

    @contextlib.contextmanager
    def admitted(self) -> Iterator[Callable[[Forward, np.ndarray], Future[np.ndarray]]]:
        """Count a request as coming (the batcher may wait for it) while it decodes; yields its
        ``submit(model, images)``. Leaving without submitting stops the wait for it."""
        submitted = False

        def submit(model: Forward, images: np.ndarray) -> Future[np.ndarray]:
            nonlocal submitted
            job = _Job(model, images)
            with self._condition:
                if self._closed:
                    raise RuntimeError("the micro-batcher is stopped")
                if not submitted:  # this request is no longer one being decoded
                    submitted = True
                    self._decoding -= 1
                self._jobs.append(job)
                self._condition.notify_all()
            return job.future

        with self._condition:
            self._decoding += 1
        try:
            yield submit
        finally:
            if not submitted:
                with self._condition:
                    self._decoding -= 1
                    self._condition.notify_all()

    def close(self, timeout: float = 5.0) -> None:
        with self._condition:
            self._closed = True
            self._condition.notify_all()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            jobs = self._next_batch()
            if jobs is None:
                return
            self._forward(jobs)
            # Held while waiting for the next batch, the last jobs would keep their model (one
            # swapped out since) loaded until the next /predict.
            del jobs

    def _next_batch(self) -> list[_Job] | None:
        with self._condition:
            while not self._jobs:
                if self._closed:
                    return None
                self._condition.wait()
            deadline = time.monotonic() + self.max_wait_s
            while self._decoding > 0 and self._queued_images() < self.max_batch:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._condition.wait(left)
            return self._take_same_model()

    def _queued_images(self) -> int:
        return sum(len(job.images) for job in self._jobs)

    def _take_same_model(self) -> list[_Job]:
        first = self._jobs.popleft()
        jobs, count = [first], len(first.images)
        while self._jobs and self._jobs[0].model is first.model:
            if count + len(self._jobs[0].images) > self.max_batch:
                break
            job = self._jobs.popleft()
            jobs.append(job)
            count += len(job.images)
        return jobs

    def _forward(self, jobs: list[_Job]) -> None:
        try:
            images = np.concatenate([job.images for job in jobs])
            probabilities = jobs[0].model.predict_proba(images)
        except BaseException as exc:  # every waiting request gets the error, the thread lives on
            for job in jobs:
                job.future.set_exception(exc)
            return
        self.on_forward(len(images))
        start = 0
        for job in jobs:
            job.future.set_result(probabilities[start : start + len(job.images)])
            start += len(job.images)


class Forwarder:
    """How one worker forwards the images of a request: through the :class:`MicroBatcher`
    (``/predict`` when micro-batching is on for the model) or directly; how many direct forwards
    run at once is bounded by the caller's slots (per kind, so a batch never queues a
    ``/predict``). Tells ``on_forward(kind, n)`` every direct forward's size."""

    def __init__(
        self,
        mode: str,
        batcher: MicroBatcher | None,
        on_forward: Callable[[str, int], None],
    ) -> None:
        self.mode = mode
        self.batcher = batcher
        self.on_forward = on_forward

    def batches(self, speedup: float) -> bool:
        """Whether ``/predict`` images of a model with this :func:`batch_speedup` are batched."""
        if self.batcher is None or self.mode == "off":
            return False
        return self.mode == "on" or speedup >= MIN_SPEEDUP

    @contextlib.contextmanager
    def admitted(
        self, model: Forward, *, single: bool, speedup: float
    ) -> Iterator[Callable[[np.ndarray], np.ndarray]]:
        """For one request (decode inside the block): yields ``forward(images) -> probs``."""
        if single and self.batcher is not None and self.batches(speedup):
            with self.batcher.admitted() as submit:
                yield lambda images: submit(model, images).result()
            return
        kind = "single" if single else "batch"

        def direct(images: np.ndarray) -> np.ndarray:
            probabilities = model.predict_proba(images)
            self.on_forward(kind, len(images))
            return probabilities

        yield direct

    async def forward_inline(
        self, model: Forward, images: np.ndarray, speedup: float
    ) -> np.ndarray:
        """For a worker with one core: the forward on the event loop itself (no thread hop), or
        awaiting the micro-batch it joins (the loop reads the next requests meanwhile)."""
        if self.batcher is not None and self.batches(speedup):
            with self.batcher.admitted() as submit:
                future = submit(model, images)
            return await asyncio.wrap_future(future)
        probabilities = model.predict_proba(images)
        self.on_forward("single", len(images))
        return probabilities
