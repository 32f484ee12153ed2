"""The API's prediction log: ids, the low-confidence flag, what is recorded, feedback, /metrics."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from PIL import Image

from src.api import create_app
from src.monitoring.store import PredictionStore, predictions
from tests.helpers.api import Registry, encode, sample_images, wait_until
from tests.helpers.monitoring import monitored_config

KEY = "k3y-for-tests-0123456789abcdef"
# The constant T-shirt model puts logit 6 on class 0 and 0 elsewhere.
TSHIRT_CONFIDENCE = math.exp(6) / (math.exp(6) + 9)


def _client(registry: Registry, tmp_path: Path, **monitor: Any) -> TestClient:
    serve = {"api_key": monitor.pop("api_key")} if "api_key" in monitor else {}
    client = TestClient(create_app(monitored_config(registry, tmp_path, monitor, **serve)))
    client.__enter__()
    wait_until(lambda: client.get("/ready").status_code == 200)
    return client


@pytest.fixture
def client(registry: Registry, tmp_path: Path) -> Iterator[TestClient]:
    registry.add_production("varied")
    test_client = _client(registry, tmp_path)
    yield test_client
    test_client.__exit__(None, None, None)


def _store(tmp_path: Path) -> PredictionStore:
    return PredictionStore(f"sqlite:///{tmp_path / 'predictions.db'}")


def _rows(tmp_path: Path, count: int) -> list[dict[str, Any]]:
    store = _store(tmp_path)
    try:
        return wait_until(lambda: (r := store.recent_predictions(0)) and len(r) >= count and r)
    finally:
        store.close()


def test_every_answer_gets_an_id_and_is_logged_with_its_input(
    client: TestClient, tmp_path: Path
) -> None:
    dark = sample_images(1)[0]
    # A light-background colour photo, not square: the preprocessing inverts it.
    photo = np.full((30, 40, 3), 230, dtype=np.uint8)
    photo[8:22, 10:30] = (40, 60, 200)
    single = client.post("/predict", files={"file": ("a.png", encode(dark), "image/png")})
    batch = client.post(
        "/predict/batch",
        files=[
            ("files", ("b.png", encode(photo), "image/png")),
            ("files", ("c.png", encode(dark), "image/png")),
        ],
    )
    assert single.status_code == 200 and batch.status_code == 200
    answers = [single.json(), *batch.json()]
    ids = [answer["prediction_id"] for answer in answers]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids) and len(set(ids)) == 3
    # No calibrated threshold on this version: nothing is flagged.
    assert [answer["low_confidence"] for answer in answers] == [False, False, False]

    rows = {row["prediction_id"]: row for row in _rows(tmp_path, 3)}
    assert set(rows) == set(ids)
    first, light = rows[ids[0]], rows[ids[1]]
    assert (first["width"], first["height"], first["mode"], first["inverted"]) == (28, 28, "L", 0)
    assert (light["width"], light["height"], light["mode"], light["inverted"]) == (40, 30, "RGB", 1)
    assert first["input_mean"] == pytest.approx(dark.mean() / 255, abs=1e-5)
    assert first["input_std"] == pytest.approx(dark.std() / 255, abs=1e-5)
    for answer in answers:
        row = rows[answer["prediction_id"]]
        assert row["class_id"] == answer["class_id"] and row["label"] == answer["label"]
        assert row["confidence"] == pytest.approx(answer["confidence"])
        top = answer["top_k"]
        assert row["margin"] == pytest.approx(top[0]["probability"] - top[1]["probability"])
        assert row["model_version"] == answer["model_version"]
    # No image bytes unless monitor.store_images says so.
    store = _store(tmp_path)
    with store.engine.connect() as conn:
        images = conn.execute(sa.select(predictions.c.image)).scalars().all()
    store.close()
    assert images == [None, None, None]


def test_low_confidence_uses_the_versions_calibrated_threshold(
    registry: Registry, tmp_path: Path
) -> None:
    version = registry.add_version("tshirt", low_confidence_threshold="0.99")
    registry.promote(version)
    client = _client(registry, tmp_path)
    try:
        answer = client.post(
            "/predict", files={"file": ("a.png", encode(sample_images(1)[0]), "image/png")}
        ).json()
        assert answer["confidence"] == pytest.approx(TSHIRT_CONFIDENCE, abs=1e-5)
        assert answer["low_confidence"] is True  # 0.978 < 0.99
        newer = registry.add_version("tshirt", low_confidence_threshold="0.5")
        registry.promote(newer)
        wait_until(lambda: client.get("/ready").json().get("model_version") == newer)
        answer = client.post(
            "/predict", files={"file": ("a.png", encode(sample_images(1)[0]), "image/png")}
        ).json()
        assert answer["low_confidence"] is False
        metrics = client.get("/metrics").text
        assert re.search(r"^low_confidence_answers_total 1\.0$", metrics, re.M)
    finally:
        client.__exit__(None, None, None)


def test_images_are_kept_only_when_the_setting_says_so(registry: Registry, tmp_path: Path) -> None:
    registry.add_production("varied")
    client = _client(registry, tmp_path, store_images=True)
    image = sample_images(1, seed=3)[0]
    try:
        answer = client.post("/predict", files={"file": ("a.png", encode(image), "image/png")})
        pid = answer.json()["prediction_id"]
        assert client.post("/feedback", json={"prediction_id": pid, "label": 3}).status_code == 202
        store = _store(tmp_path)
        labelled = wait_until(lambda: store.labelled(limit=100))
        stored = np.frombuffer(labelled[0]["image"], dtype=np.uint8).reshape(28, 28)
        assert np.array_equal(stored, image)
    finally:
        client.__exit__(None, None, None)


def test_feedback_records_a_label_for_a_known_answer(client: TestClient, tmp_path: Path) -> None:
    answer = client.post(
        "/predict", files={"file": ("a.png", encode(sample_images(1)[0]), "image/png")}
    ).json()
    pid = answer["prediction_id"]
    accepted = client.post("/feedback", json={"prediction_id": pid, "label": "shirt"})
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["true_class_id"] == 6
    unknown = client.post("/feedback", json={"prediction_id": "0" * 32, "label": 1})
    assert unknown.status_code == 404 and "prediction_id" in unknown.json()["detail"]
    bad_label = client.post("/feedback", json={"prediction_id": pid, "label": "Hat"})
    assert bad_label.status_code == 422 and "Shirt" in bad_label.json()["detail"]
    bad_id = client.post("/feedback", json={"prediction_id": "x", "label": 1})
    assert bad_id.status_code == 422
    store = _store(tmp_path)
    labelled = wait_until(lambda: store.labelled(limit=100))
    assert [(row["prediction_id"], row["true_class_id"]) for row in labelled] == [(pid, 6)]
    assert labelled[0]["image"] is None


def test_feedback_is_rate_limited_per_client_and_stored_once(
    registry: Registry, tmp_path: Path
) -> None:
    registry.add_production("varied")
    client = _client(registry, tmp_path, feedback_burst=3, feedback_rate_per_minute=1)
    try:
        png = encode(sample_images(1)[0])
        pid = client.post("/predict", files={"file": ("a.png", png, "image/png")}).json()[
            "prediction_id"
        ]
        answers = [
            client.post("/feedback", json={"prediction_id": pid, "label": label})
            for label in range(6)
        ]
        assert [a.status_code for a in answers] == [202] * 3 + [429] * 3
        limited = answers[-1]
        assert limited.json()["error"] == "too_many_requests"
        assert "retry in" in limited.json()["detail"]
        assert int(limited.headers["retry-after"]) >= 1
        store = _store(tmp_path)
        try:
            [row] = wait_until(
                lambda: (r := store.labelled(limit=10)) and r[0]["label_count"] == 3 and r
            )
            assert row["true_class_id"] == 2 and store.count_labels() == 1  # the last accepted
        finally:
            store.close()
    finally:
        client.__exit__(None, None, None)


def test_feedback_needs_the_same_api_key_as_predict(registry: Registry, tmp_path: Path) -> None:
    registry.add_production("varied")
    client = _client(registry, tmp_path, api_key=KEY)
    try:
        png = encode(sample_images(1)[0])
        headers = {"X-API-Key": KEY}
        pid = client.post(
            "/predict", files={"file": ("a.png", png, "image/png")}, headers=headers
        ).json()["prediction_id"]
        body = {"prediction_id": pid, "label": 0}
        assert client.post("/feedback", json=body).status_code == 401
        assert (
            client.post("/feedback", json=body, headers={"X-API-Key": "w" * 30}).status_code == 401
        )
        assert client.post("/feedback", json=body, headers=headers).status_code == 202
    finally:
        client.__exit__(None, None, None)


def test_metrics_show_the_prediction_log(client: TestClient, tmp_path: Path) -> None:
    for _ in range(3):
        client.post("/predict", files={"file": ("a.png", encode(sample_images(1)[0]), "image/png")})
    _rows(tmp_path, 3)

    def scraped() -> str | None:
        text = client.get("/metrics").text
        return text if re.search(r"^prediction_log_rows 3\.0$", text, re.M) else None

    text = wait_until(scraped)
    assert re.search(r"^prediction_log_records_written_total 3\.0$", text, re.M)
    assert re.search(r"^prediction_log_records_dropped_total 0\.0$", text, re.M)
    assert re.search(r"^monitor_drift_detected -1\.0$", text, re.M)  # no monitor run yet
    store = _store(tmp_path)
    store.add_monitor_run(
        model_version="1", drift_detected=True, drift_share=0.6, n_predictions=3, status="ok"
    )
    text = wait_until(
        lambda: (
            (t := client.get("/metrics").text)
            and re.search(r"^monitor_drift_detected 1\.0$", t, re.M)
            and t
        )
    )
    assert re.search(r"^monitor_drift_share 0\.6$", text, re.M)
    assert re.search(r"^monitor_last_run_timestamp_seconds [1-9]", text, re.M)


def test_model_card_is_served_from_the_version(registry: Registry, tmp_path: Path) -> None:
    version = registry.add_version("varied", model_card="# Model card\n\nhello")
    registry.add_production("tshirt")  # a version without a card first
    client = _client(registry, tmp_path)
    try:
        missing = client.get("/model/card")
        assert missing.status_code == 404 and "no model card" in missing.json()["detail"]
        registry.promote(version)
        wait_until(lambda: client.get("/ready").json().get("model_version") == version)
        card = client.get("/model/card")
        assert card.status_code == 200 and card.text == "# Model card\n\nhello"
        assert card.headers["content-type"].startswith("text/markdown")
    finally:
        client.__exit__(None, None, None)


def test_light_background_detection_matches_preprocessing() -> None:
    """The logged ``inverted`` flag says what the preprocessing did to the pixels: a light picture
    reaches the model inverted (255 - v), a dark one unchanged."""
    from src.preprocessing import to_model_image_and_inversion

    light = np.full((28, 28), 240, dtype=np.uint8)
    light[6:20, 8:18] = 40  # a dark garment on light paper
    array, inverted = to_model_image_and_inversion(Image.fromarray(light))
    assert inverted and np.array_equal(array, 255 - light)
    dark = 255 - light  # the same garment, Fashion-MNIST's way round
    array, inverted = to_model_image_and_inversion(Image.fromarray(dark))
    assert not inverted and np.array_equal(array, dark)
