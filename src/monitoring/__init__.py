"""Monitoring and the closed loop: the prediction log (written by the API), the reference profile
and low-confidence threshold (logged at training time), drift tests and reports (monitor-flow),
feedback, and the model card. Nothing here imports MLflow or Prefect at module level, so the API
can use the log and the routes without either.
"""
