# windowgate services image: one image, three commands (see docker-compose.yml):
#   python -m services.ingest | python -m services.window worker | python -m services.dispatcher
# plus `python -m services.preflight` (the configuration check) and, from /src, the demo
# `python -m services.local_run` (make run, which also needs the Graph stand-in from tests/).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# README.md* : the pyproject names a readme; the glob keeps the build working while it is absent.
COPY pyproject.toml README.md* ./
COPY schemas ./schemas
COPY windowgate ./windowgate
COPY services ./services
RUN pip install . \
    && useradd --create-home --uid 10001 windowgate \
    && mkdir -p /data \
    && chown windowgate /data
# The Graph stand-in of the demo profile (services.local_run.GRAPH_STANDIN_MODULE) lives in tests/.
COPY tests ./tests

# Working directory of the services (none keeps state on disk: the window restores from Kafka).
WORKDIR /data
USER windowgate
EXPOSE 8080 8081 8082
CMD ["python", "-m", "services.ingest"]
