"""The web page's monitoring parts in headless Chromium against a real uvicorn: a low-confidence
answer reads "Not sure", and "wrong? choose the right garment" records feedback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from src.monitoring.store import PredictionStore
from tests.helpers.api import Registry, encode, sample_images, wait_until


@pytest.mark.integration
@pytest.mark.timeout(400)
def test_page_says_not_sure_and_sends_feedback(
    registry: Registry,
    server_factory: Any,
    browser_page: Any,
    tmp_path: Path,
) -> None:
    # The T-shirt model answers with confidence 0.978: under this version's threshold.
    registry.promote(registry.add_version("tshirt", low_confidence_threshold="0.99"))
    store_url = f"sqlite:///{tmp_path / 'predictions.db'}"
    server = server_factory(
        registry.tracking_uri,
        registry.name,
        MONITOR_STORE_URL=store_url,
        MONITOR_FLUSH_INTERVAL_S="0.1",
    )
    page = browser_page
    page.goto(server.url + "/")
    image = tmp_path / "shirt.png"
    image.write_bytes(encode(sample_images(1)[0]))
    page.set_input_files("#file-input", str(image))
    page.wait_for_selector("#result:not([hidden])")
    assert page.text_content("#label") == "Not sure"
    assert page.text_content("#confidence").startswith("maybe T-shirt/top (97.8%)")

    page.select_option("#true-label", label="Shirt")
    page.click("#feedback button[type=submit]")
    page.wait_for_function(
        "document.getElementById('feedback-status').textContent.startsWith('Thanks')"
    )
    assert page.text_content("#feedback-status") == "Thanks: recorded as Shirt."
    store = PredictionStore(store_url)
    try:
        [row] = wait_until(lambda: store.labelled(limit=100))
        assert (row["class_id"], row["true_class_id"], row["low_confidence"]) == (0, 6, True)
    finally:
        store.close()
