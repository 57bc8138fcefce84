# windowgate services image: one image, three commands (see docker-compose.yml):
#   python -m services.ingest | python -m services.window worker | python -m services.dispatcher
# plus `python -m services.preflight` (the configuration check) and, from /src, the demo
# `python -m devtools.local_run` (make run, with the Graph stand-in; devtools/ is not installed).
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
# The demo profile's tools (make run, the Graph stand-in): run from /src, never installed.
COPY devtools ./devtools

# Working directory of the services (none keeps state on disk: the window restores from Kafka).
WORKDIR /data
USER windowgate
EXPOSE 8080 8081 8082
CMD ["python", "-m", "services.ingest"]
