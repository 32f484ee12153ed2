# The serving image: `uvicorn src.api:app` with the serving role of uv.lock only (no torch, MLflow
# or Prefect), as a non-root user, ready when GET /ready answers 200.
#
# Build it with `make image-serve` (python -m deployments.images build serve): that writes the
# build context this file expects (requirements.txt with hashes, wheels/, project/) and runs
# `docker build`. Run it with the registry and any credentials from the environment:
#
#   docker run -p 8000:8000 -e MLFLOW_TRACKING_URI=http://mlflow.internal:5000 \
#       -e SERVE_API_KEY=... clothing-classifier-serve:0.2.0
#
# No secret is read at build time: settings and credentials come from the container's environment
# (SERVE_*, MLFLOW_*, MONITOR_*; uvicorn's own UVICORN_HOST / UVICORN_PORT).
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
# Only what the lock pins, each file hash-checked; no index is reached (the wheels are here). The
# dependencies come first, so a change to the project's code alone reuses their layer.
COPY requirements.txt /tmp/build/requirements.txt
COPY wheels /tmp/build/wheels
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --quiet --no-cache-dir --disable-pip-version-check --no-index \
        --find-links /tmp/build/wheels --require-hashes --no-deps -r /tmp/build/requirements.txt
COPY project /tmp/build/project
RUN /opt/venv/bin/pip install --quiet --no-cache-dir --disable-pip-version-check --no-index \
        --no-deps /tmp/build/project/*.whl \
    && /opt/venv/bin/pip check

# The wheels and the build folder stay in the first stage; this one gets the virtualenv only.
FROM ${BASE}
ARG UID=10001
RUN useradd --system --uid ${UID} --user-group --no-log-init \
        --home-dir /var/lib/clothing-classifier --create-home --shell /usr/sbin/nologin app
COPY --from=build /opt/venv /opt/venv
# The prediction log (outputs/) and the process's scratch folders are the only files written:
# in the app user's home, the working folder of the installed package.
WORKDIR /var/lib/clothing-classifier
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    UVICORN_HOST=0.0.0.0 \
    UVICORN_PORT=8000
USER ${UID}:${UID}
EXPOSE 8000
# Ready = a model is loaded (GET /ready 200); until then, and while none loads, it is unhealthy.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('UVICORN_PORT', '8000') + '/ready', timeout=2)"]
CMD ["uvicorn", "src.api:app"]
