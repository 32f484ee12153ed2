"""Micro-batching (src/serving/batching.py) and each worker's share (src/serving/workers.py)."""

from __future__ import annotations

import re
import threading
import time
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


def test_batch_speedup_of_a_model_whose_batches_cost_the_same_as_one_image() -> None:
    class FixedCost:
        def predict_proba(self, images: np.ndarray) -> np.ndarray:
            time.sleep(0.002)  # the same time for any batch: batching pays fully
            return images

    assert batch_speedup(FixedCost(), 8, (1, 2, 2)) > 4
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


def test_micro_batched_answers_match_single_ones_and_every_image_is_forwarded_once(
    registry: Registry,
) -> None:
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

        def ask(index: int) -> tuple[int, dict[str, Any]]:
            blob = blobs[index % len(blobs)]
            answer = client.post("/predict", files={"file": ("a.png", blob)}).json()
            return index % len(blobs), answer

        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(ask, range(64)))
        metrics = client.get("/metrics").text
    finally:
        client.__exit__(None, None, None)
    for index, answer in answers:
        assert answer["label"] == expected[index]["label"]
        assert abs(answer["confidence"] - expected[index]["confidence"]) < 1e-5
    forwarded = re.search(r'^inference_batch_size_sum\{kind="single"\} (\S+)$', metrics, re.M)
    assert forwarded is not None and float(forwarded.group(1)) == 64
