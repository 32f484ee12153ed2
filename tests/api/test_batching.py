"""Micro-batching (src/serving/batching.py) and each worker's share (src/serving/workers.py)."""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from src.serving.app import worker_inflight_bytes
from src.serving.batching import MIN_SPEEDUP, Forwarder, MicroBatcher, batch_speedup
from src.serving.workers import usable_cores, worker_cores
from tests.helpers.api import Registry, api_client_for, encode, sample_images
from tests.helpers.config import serve_config


class Recorder:
    """A model that remembers each forward's batch size; ``pause`` holds the first forward."""

    def __init__(self, pause: threading.Event | None = None, fail: bool = False) -> None:
        self.sizes: list[int] = []
        self.pause = pause
        self.fail = fail
        self.first_started = threading.Event()

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        if self.pause is not None and not self.sizes:
            self.sizes.append(len(images))
            self.first_started.set()
            self.pause.wait(10)
        else:
            self.sizes.append(len(images))
        if self.fail:
            raise RuntimeError("model broke")
        return images.reshape(len(images), -1)[:, :2] + 1.0


def images(n: int, value: float) -> np.ndarray:
    return np.full((n, 1, 2, 2), value, dtype=np.float32)


def test_requests_queued_during_a_forward_go_through_the_next_one_together() -> None:
    release = threading.Event()
    model = Recorder(pause=release)
    seen: list[int] = []
    batcher = MicroBatcher(max_batch=8, max_wait_s=0.0, on_forward=seen.append)
    try:
        with batcher.admitted() as submit:
            first = submit(model, images(1, 0))
        assert model.first_started.wait(10)  # the first forward is running (held)
        futures = []
        for value in range(1, 6):
            with batcher.admitted() as submit:
                futures.append(submit(model, images(1, value)))
        release.set()
        answers = [future.result(5) for future in [first, *futures]]
    finally:
        batcher.close()
    assert model.sizes == [1, 5]
    assert seen == [1, 5]
    # Each request gets its own rows back, in order.
    assert [float(answer[0, 0]) for answer in answers] == [1, 2, 3, 4, 5, 6]


def test_a_lone_request_does_not_wait_and_a_full_batch_splits() -> None:
    model = Recorder()
    batcher = MicroBatcher(max_batch=4, max_wait_s=600.0, on_forward=lambda n: None)
    try:
        with batcher.admitted() as submit:
            future = submit(model, images(1, 0))
        future.result(30)  # nobody else was decoding: no 600 s wait
        with batcher.admitted() as submit:
            many = [submit(model, images(3, value)) for value in (1, 2)]
        assert [len(f.result(5)) for f in many] == [3, 3]
    finally:
        batcher.close()
    assert max(model.sizes) <= 4


def test_models_are_never_mixed_and_errors_reach_every_request() -> None:
    release = threading.Event()
    blocker, old, broken = Recorder(pause=release), Recorder(), Recorder(fail=True)
    batcher = MicroBatcher(max_batch=16, max_wait_s=0.0, on_forward=lambda n: None)
    try:
        with batcher.admitted() as submit:
            held = submit(blocker, images(1, 0))
            assert blocker.first_started.wait(10)
            olds = [submit(old, images(1, 1)) for _ in range(2)]
            bad = [submit(broken, images(1, 2)) for _ in range(2)]
        release.set()
        held.result(5)
        assert all(len(f.result(5)) == 1 for f in olds)
        for future in bad:
            with pytest.raises(RuntimeError, match="model broke"):
                future.result(5)
    finally:
        batcher.close()
    assert old.sizes == [2] and broken.sizes == [2]


def test_auto_batches_only_where_the_measured_speedup_pays() -> None:
    forwarder = Forwarder("auto", MicroBatcher(4, 0.0, lambda n: None), lambda k, n: None)
    try:
        assert forwarder.batches(MIN_SPEEDUP) and not forwarder.batches(MIN_SPEEDUP - 0.01)
        forwarder.mode = "on"
        assert forwarder.batches(1.0)
        forwarder.mode = "off"
        assert not forwarder.batches(10.0)
    finally:
        assert forwarder.batcher is not None
        forwarder.batcher.close()


class FakeClock:
    """The batching module's clock, advanced only by the model: a test of the arithmetic, not of
    this machine's speed (that is benchmarks/bench_api.py's)."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


def test_batch_speedup_is_the_per_image_time_of_one_over_that_of_a_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from src.serving import batching

    clock = FakeClock()
    monkeypatch.setattr(batching, "time", clock)

    class FixedCost:  # a forward costs 1 s at any batch size: batching pays fully
        def predict_proba(self, images: np.ndarray) -> np.ndarray:
            clock.now += 1.0
            return images

    class PerImageCost:  # 1 s per image: batching gains nothing
        def predict_proba(self, images: np.ndarray) -> np.ndarray:
            clock.now += float(len(images))
            return images

    assert batch_speedup(FixedCost(), 8, (1, 2, 2)) == 8.0
    assert batch_speedup(PerImageCost(), 8, (1, 2, 2)) == 1.0
    assert batch_speedup(FixedCost(), 1, (1, 2, 2)) == 1.0


def test_each_worker_takes_its_share_of_cores_and_of_the_body_budget() -> None:
    cores = usable_cores()
    assert worker_cores(serve_config(workers=0)) == cores  # a lone `uvicorn src.api:app`
    assert worker_cores(serve_config(workers=cores)) == 1
    assert worker_cores(serve_config(workers=4 * cores)) == 1
    two = serve_config(workers=2, max_inflight_bytes=256 << 20, max_batch_bytes=64 << 20)
    assert worker_inflight_bytes(two) == 128 << 20
    many = serve_config(workers=16, max_inflight_bytes=256 << 20, max_batch_bytes=64 << 20)
    assert worker_inflight_bytes(many) == 64 << 20  # always room for one whole batch


class HeldServedForward:
    """Wraps the served model's forward (every ONNX classifier in this process): records each
    forward's size; while ``hold`` is set, a forward of ``hold_size`` images waits for
    ``release`` (so what arrives meanwhile queues behind it)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, hold_size: int | None) -> None:
        from src.onnx_model import OnnxClassifier

        self.sizes: list[int] = []
        self.hold_size = hold_size
        self.held = threading.Event()
        self.release = threading.Event()
        real = OnnxClassifier.predict_proba

        def forward(model: OnnxClassifier, images: np.ndarray, *args: Any) -> np.ndarray:
            self.sizes.append(len(images))
            if len(images) == self.hold_size and not self.held.is_set():
                self.held.set()
                assert self.release.wait(60), "the held forward was never released"
            return real(model, images, *args)

        monkeypatch.setattr(OnnxClassifier, "predict_proba", forward)


def counted_submissions(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Wraps MicroBatcher.admitted: each image submitted to the batcher appends its count."""
    submitted: list[int] = []
    real = MicroBatcher.admitted

    @contextlib.contextmanager
    def admitted(batcher: MicroBatcher) -> Iterator[Any]:
        with real(batcher) as submit:

            def counted(model: Any, images: np.ndarray) -> Any:
                future = submit(model, images)
                submitted.append(len(images))
                return future

            yield counted

    monkeypatch.setattr(MicroBatcher, "admitted", admitted)
    return submitted


def until(condition: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {timeout} s"
        time.sleep(0.01)


def test_micro_batched_answers_match_single_ones_and_queued_requests_share_a_forward(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first /predict's forward is held; the 15 that arrive meanwhile queue and go through
    the next forward together (the default micro_batch_max, 16, holds them all)."""
    registry.add_production("varied")
    blobs = [encode(image) for image in sample_images(8, seed=3)]
    alone = api_client_for(registry, micro_batch="off", workers=usable_cores())
    try:
        expected = [alone.post("/predict", files={"file": ("a.png", b)}).json() for b in blobs]
    finally:
        alone.__exit__(None, None, None)
    client = api_client_for(registry, micro_batch="on", workers=usable_cores())
    try:
        assert client.get("/model").json()["micro_batching"] == "on"
        forwards = HeldServedForward(monkeypatch, hold_size=1)  # after the load's measurement
        submitted = counted_submissions(monkeypatch)

        def ask(index: int) -> tuple[int, dict[str, Any]]:
            blob = blobs[index % len(blobs)]
            answer = client.post("/predict", files={"file": ("a.png", blob)}).json()
            return index % len(blobs), answer

        with ThreadPoolExecutor(16) as pool:
            try:
                first = pool.submit(ask, 0)
                until(forwards.held.is_set, "the first forward did not start")
                rest = [pool.submit(ask, index) for index in range(1, 16)]
                until(lambda: len(submitted) == 16, "the 15 requests did not queue")
            finally:
                forwards.release.set()
            answers = [first.result(60), *(future.result(60) for future in rest)]
        metrics = client.get("/metrics").text
    finally:
        client.__exit__(None, None, None)
    assert forwards.sizes == [1, 15]
    for index, answer in answers:
        assert answer["label"] == expected[index]["label"]
        assert abs(answer["confidence"] - expected[index]["confidence"]) < 1e-5
    forwarded = re.search(r'^inference_batch_size_sum\{kind="single"\} (\S+)$', metrics, re.M)
    assert forwarded is not None and float(forwarded.group(1)) == 16


def test_a_batch_never_queues_a_predict(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One forward slot per kind: while a /predict/batch forward holds the batch slot, a
    /predict still gets an answer (it has its own slot)."""
    registry.add_production("varied")
    blobs = [encode(image) for image in sample_images(2, seed=4)]
    client = api_client_for(registry, micro_batch="off", inference_concurrency=1, workers=0)
    try:
        forwards = HeldServedForward(monkeypatch, hold_size=2)
        with ThreadPoolExecutor(2) as pool:
            try:
                files = [("files", (f"{i}.png", blob)) for i, blob in enumerate(blobs)]
                batch = pool.submit(client.post, "/predict/batch", files=files)
                until(forwards.held.is_set, "the batch's forward did not start")
                single = pool.submit(client.post, "/predict", files={"file": ("a.png", blobs[0])})
                answer = single.result(60)  # a /predict queued behind the batch never answers
                assert answer.status_code == 200, answer.text
                assert not batch.done()  # the batch was still held
            finally:
                forwards.release.set()
            assert batch.result(60).status_code == 200
    finally:
        client.__exit__(None, None, None)
    assert forwards.sizes == [2, 1]
