"""A hot swap leaves nothing of the old model behind: no Python reference keeps its session
alive once the swap is done, and what its session frees goes back to the system instead of
staying in the C heap (docs/serving.md#hot-reload; the RSS trend itself is measured by
``python -m benchmarks.bench_swap_memory`` and the soak, not here)."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import textwrap
import weakref
from pathlib import Path
from typing import Any

import pytest

from src.serving.native_memory import heap_stats
from tests.helpers.api import (
    REPO_ROOT,
    Registry,
    api_client_for,
    encode,
    sample_images,
    wait_until,
)

PNG = encode(sample_images(1)[0])


def _holders(obj: Any) -> str:
    """What still refers to ``obj`` (for the failure message)."""
    found = []
    for referrer in gc.get_referrers(obj):
        if isinstance(referrer, dict):
            keys = [k for k, v in referrer.items() if v is obj]
            found.append(f"dict[{keys}]")
        elif hasattr(referrer, "f_code"):
            found.append(f"frame {referrer.f_code.co_name}")
        else:
            found.append(type(referrer).__name__)
    return ", ".join(found[:8]) or "nothing Python sees (a cycle gc could not break?)"


@pytest.mark.parametrize(
    "serve",
    [
        # A one-core worker: /predict on the event loop through the micro-batcher, batches in
        # worker threads.
        pytest.param({"micro_batch": "on", "workers": 64}, id="micro-batched"),
        # All the cores: /predict and batches forwarded directly in worker threads.
        pytest.param({"micro_batch": "off", "workers": 1}, id="direct"),
    ],
)
def test_the_old_model_is_released_after_a_swap(registry: Registry, serve: dict[str, Any]) -> None:
    """v1 answers single images and a batch, Production moves to v2: once the store serves v2
    and a collection has run, nothing holds v1's model, classifier or ONNX Runtime session (no
    request after the swap needed to push it out)."""
    registry.add_production("tshirt")
    client = api_client_for(registry, poll_interval_s=0.05, **serve)
    try:
        store = client.app.state.serving.store  # type: ignore[attr-defined]
        for _ in range(3):
            assert client.post("/predict", files={"file": ("a.png", PNG)}).status_code == 200
        files = [("files", (f"{i}.png", PNG, "image/png")) for i in range(3)]
        assert client.post("/predict/batch", files=files).status_code == 200
        old = store.current
        assert old.version == "1"
        refs = {
            "model": weakref.ref(old),
            "classifier": weakref.ref(old.classifier),
            "session": weakref.ref(old.classifier.session),
        }
        del old
        registry.promote(registry.add_version("sneaker"))
        wait_until(lambda: store.current.version == "2")

        def released() -> bool:
            gc.collect()
            return all(ref() is None for ref in refs.values())

        try:
            wait_until(released, timeout=20)
        except AssertionError:
            held = {name: _holders(ref()) for name, ref in refs.items() if ref() is not None}
            pytest.fail(f"v1 is still loaded after the swap to v2; held by {held}")
        assert client.post("/predict", files={"file": ("a.png", PNG)}).json()["label"] == "Sneaker"
    finally:
        client.__exit__(None, None, None)


# Run in a fresh interpreter: the C heap's settings are process-wide, and the test process may
# have served an app already. Prints how many MiB of an 8 MiB block were mapped on their own,
# after a 24 MiB mapped block was freed (which moves glibc's dynamic threshold above 8 MiB),
# before and after the app's lifespan started.
HEAP_PROBE = textwrap.dedent(
    """
    import json, sys
    from fastapi.testclient import TestClient
    from src.config import load_config
    from src.serving.app import create_app
    from src.serving.native_memory import heap_stats

    def mapped_mib_of_8_mib_block():
        big = bytearray(24 << 20)
        del big  # a mapped block freed: glibc raises its threshold to 24 MiB
        before = heap_stats().mapped_mib
        block = bytearray(8 << 20)
        mapped = heap_stats().mapped_mib - before
        del block
        return mapped

    result = {"before_app": mapped_mib_of_8_mib_block()}
    cfg = load_config(
        overrides={
            "paths": {"root": sys.argv[1]},
            "mlflow": {"tracking_uri": "sqlite:///" + sys.argv[1] + "/none.db"},
            "serve": {"retry_interval_s": 5},
        },
        environ={},
    )
    with TestClient(create_app(cfg)):
        result["app_running"] = mapped_mib_of_8_mib_block()
    print(json.dumps(result))
    """
)


@pytest.mark.skipif(heap_stats() is None, reason="the C heap settings apply to glibc only")
@pytest.mark.timeout(120)
def test_a_serving_process_maps_large_blocks_on_their_own(tmp_path: Path) -> None:
    """Once the app runs, a multi-MiB block (a model's weights, an ONNX Runtime arena block)
    is mapped on its own, and so unmapped when freed, even after glibc's dynamic threshold has
    moved above its size (which, left alone, puts every later model into the heaps)."""
    done = subprocess.run(
        [sys.executable, "-c", HEAP_PROBE, str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    mapped = json.loads(done.stdout.strip().splitlines()[-1])
    # The premise: without the app, glibc put the block into a heap (else this test shows nothing).
    assert mapped["before_app"] < 1, mapped
    assert mapped["app_running"] >= 8, mapped
