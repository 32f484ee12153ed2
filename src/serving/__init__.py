"""HTTP serving of the Production model (``uvicorn src.api:app``).

The API process imports neither MLflow nor torch: the registry is read by
:mod:`src.serving.registry_reader` and the model runs in ONNX Runtime (:mod:`src.onnx_model`).
"""
