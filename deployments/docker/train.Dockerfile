# The training/worker image: the pipeline (train + services roles of uv.lock: Prefect, MLflow, DVC,
# Great Expectations, Lightning, the PostgreSQL and S3 clients) for flow runs of a Prefect Docker
# (or Kubernetes) work pool; deployments/prefect-docker.yaml deploys the flows onto it.
#
# Build it with `make image-train` (python -m deployments.images build train), which writes the
# build context this file expects (requirements.txt with hashes, wheels/, project/). The worker
# starts a container per flow run with the command `prefect flow-run execute` (also this image's
# CMD) and PREFECT_API_URL / PREFECT__FLOW_RUN_ID; the services' addresses and credentials come
# from the work pool's or deployment's environment (MLFLOW_TRACKING_URI, DATA_*, AWS_*, ...),
# never from the image.
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
# Only what the lock pins, each file hash-checked; no index is reached (the wheels are here; a
# package published only as source is built from its locked archive with the locked setuptools).
COPY requirements.txt /tmp/build/requirements.txt
COPY wheels /tmp/build/wheels
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --quiet --no-cache-dir --disable-pip-version-check --no-index \
        --find-links /tmp/build/wheels --require-hashes --no-deps -r /tmp/build/requirements.txt
COPY project /tmp/build/project
RUN /opt/venv/bin/pip install --quiet --no-cache-dir --disable-pip-version-check --no-index \
        --no-deps /tmp/build/project/*.whl \
    && /opt/venv/bin/pip check

FROM ${BASE}
ARG UID=10001
RUN useradd --system --uid ${UID} --user-group --no-log-init \
        --home-dir /var/lib/clothing-classifier --create-home --shell /usr/sbin/nologin app
COPY --from=build /opt/venv /opt/venv
# The installed package keeps its working files (data/, outputs/, the Prefect home) in the
# folder it starts in: the app user's home. The flow runs' pull step sets the same folder.
WORKDIR /var/lib/clothing-classifier
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/var/lib/clothing-classifier
USER ${UID}:${UID}
CMD ["prefect", "flow-run", "execute"]
