"""The web page at / in headless Chromium (Debian's package, driven by Python playwright)
against a real uvicorn process: choose a file, drag-and-drop a file, and a bad file."""

from __future__ import annotations

import base64
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.api import Registry, encode, sample_images

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def browser_page(tmp_path: Path) -> Iterator[Any]:
    if not Path(CHROMIUM).is_file():
        pytest.fail("Chromium is missing: run `make browser-deps` (apt-get install chromium).")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),  # fresh user-data-dir
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            timeout=60_000,
        )
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.set_default_timeout(60_000)
            yield page
        finally:
            context.close()


@pytest.mark.integration
@pytest.mark.timeout(400)
def test_page_classifies_chosen_and_dropped_images(
    registry: Registry, server_factory: Any, browser_page: Any, tmp_path: Path
) -> None:
    registry.add_production("sneaker")
    server = server_factory(registry.tracking_uri, registry.name)
    page = browser_page
    page.goto(server.url + "/")
    assert page.title() == "Clothing classifier"
    page.wait_for_function(
        "document.getElementById('model-line').textContent.includes('version 1')"
    )

    # 1. Choose a file.
    image_path = tmp_path / "shoe.png"
    image_path.write_bytes(encode(sample_images(1)[0]))
    page.set_input_files("#file-input", str(image_path))
    page.wait_for_selector("#result:not([hidden])")
    assert page.text_content("#label") == "Sneaker"
    assert page.text_content("#confidence").endswith("%")
    assert page.locator("#top-k li").count() == 3
    assert page.locator("#top-k li").first.text_content().startswith("Sneaker")
    assert page.text_content("#model-version") == "1"

    # 2. Drag and drop a (colour, non-square) JPEG onto the drop zone.
    page.evaluate("document.getElementById('result').hidden = true")
    jpeg = base64.b64encode(encode(sample_images(1, seed=4)[0].repeat(3, axis=1), "JPEG")).decode()
    page.evaluate(
        """async (b64) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const file = new File([bytes], "dropped.jpg", { type: "image/jpeg" });
            const data = new DataTransfer();
            data.items.add(file);
            const zone = document.getElementById("drop-zone");
            for (const type of ["dragenter", "dragover", "drop"]) {
                zone.dispatchEvent(new DragEvent(type, { dataTransfer: data, bubbles: true,
                                                          cancelable: true }));
            }
        }""",
        jpeg,
    )
    page.wait_for_selector("#result:not([hidden])")
    assert page.text_content("#label") == "Sneaker"

    # 3. Not an image: the API's one-line explanation is shown, no result.
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"these are not pixels")
    page.set_input_files("#file-input", str(bad))
    page.wait_for_selector("#status.error")
    assert "not an image" in page.text_content("#status")
    assert page.locator("#result").is_hidden()
