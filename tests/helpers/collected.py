"""A pytest plugin for tests/test_markers.py (``-p tests.helpers.collected``): after collection,
writes each collected test's id, every fixture it uses (transitively) and its function's source
to the JSON file ``$COLLECTED_JSON``."""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path

import pytest


def pytest_collection_finish(session: pytest.Session) -> None:
    rows = []
    for item in session.items:
        function = getattr(item, "function", None)
        try:
            source = inspect.getsource(function) if function is not None else ""
        except (OSError, TypeError):
            source = ""
        fixtures = list(getattr(item, "fixturenames", []))
        rows.append({"id": item.nodeid, "fixtures": fixtures, "source": source})
    Path(os.environ["COLLECTED_JSON"]).write_text(json.dumps(rows))
