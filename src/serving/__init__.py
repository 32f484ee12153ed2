"""HTTP serving of the Production model (``uvicorn src.api:app``).

Importing this package first imports ``mlflow.pytorch`` with ``pytorch_lightning`` hidden:
``mlflow.pytorch`` tries ``import pytorch_lightning`` at import time only to offer Lightning
autologging, which serving never uses; that import costs ~3 s of cold start and pulls the whole
training stack into the server. The hiding lasts for that one import (``pytorch_lightning`` can be
imported normally afterwards) and is skipped when either module is already loaded.
"""

from __future__ import annotations

import sys

_HIDDEN = "pytorch_lightning"
if "mlflow.pytorch" not in sys.modules and _HIDDEN not in sys.modules:
    sys.modules[_HIDDEN] = None  # type: ignore[assignment]  # makes `import pytorch_lightning` fail
    try:
        import mlflow.pytorch  # noqa: F401
    finally:
        if _HIDDEN in sys.modules and sys.modules[_HIDDEN] is None:
            del sys.modules[_HIDDEN]
