# akidb-embed: the embedding server (REST on 8080, gRPC on 9090) with the ONNX Runtime backend.
#
#   bash scripts/make-wheelhouse.sh          # wheels of akidb-embed and its runtime deps -> wheelhouse/
#   docker build -t akidb-embed .            # installs from wheelhouse/ only: no download in the build
#   docker run --init -p 8080:8080 -v "$PWD/models:/models:ro" \
#       -e AKIDB_EMBEDDING_MODEL=/models/all-MiniLM-L6-v2-onnx akidb-embed
#
# Configuration is by AKIDB_* variables or a mounted config file (AKIDB_CONFIG); see
# docs/container.md. BASE_IMAGE must have the Python the wheelhouse was made for (3.11).
ARG BASE_IMAGE=python:3.11-slim-bookworm

# --- build: two virtualenvs from the wheelhouse --------------------------------------------
FROM ${BASE_IMAGE} AS build
COPY wheelhouse/ /wheelhouse/
# /opt/venv: the server, the core and the ONNX backend (onnxruntime, tokenizers; no torch,
# no export tooling). /opt/bridge: a second interpreter with the core and the ONNX backend
# only, for the python-bridge provider (python_path=/opt/bridge/bin/python). Files the two
# have in common (onnxruntime's and numpy's libraries) become hard links, stored once; not
# the .py files, whose .pyc is valid only for their own modification time.
RUN python3 -c "import platform, sys; \
target = dict(line.split('=', 1) for line in open('/wheelhouse/TARGET').read().split()); \
have = {'python': '%d.%d' % sys.version_info[:2], 'machine': platform.machine()}; \
sys.exit(None if target == have else f'the wheelhouse was made for {target}, this base image has {have}: ' \
    f'run scripts/make-wheelhouse.sh --python-version {have[\"python\"]} --arch {have[\"machine\"]}')" \
 && python3 -m venv /opt/venv \
 && /opt/venv/bin/python -m pip install --no-index --find-links /wheelhouse --no-cache-dir \
        --disable-pip-version-check --quiet akidb-embed-server akidb-embed-onnx \
 && /opt/venv/bin/python -m pip check \
 && python3 -m venv /opt/bridge \
 && /opt/bridge/bin/python -m pip install --no-index --find-links /wheelhouse --no-cache-dir \
        --disable-pip-version-check --quiet akidb-embed-onnx \
 && /opt/bridge/bin/python -m pip check \
 && hardlink --quiet --ignore-time --exclude '\.py$' /opt/venv /opt/bridge

# --- runtime -------------------------------------------------------------------------------
FROM ${BASE_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="akidb-embed" \
      org.opencontainers.image.description="Embedding server (REST + gRPC) on ONNX Runtime: akidb, OpenAI- and TEI-compatible routes" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed non-root uid/gid, so volume permissions can be set from the host (chown 10001).
# /data is its home: the Hugging Face cache (HF_HOME) and anything else written at run time.
RUN groupadd --gid 10001 akidb \
 && useradd --no-log-init --uid 10001 --gid akidb --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin akidb \
 && mkdir -p /models /data/hf \
 && chown -R akidb:akidb /data
# One COPY, so the hard links between the two virtualenvs survive into one layer.
COPY --from=build /opt/ /opt/
# AKIDB_LOG_FORMAT (not AKIDB_SERVER_LOG_FORMAT): either variable set at run time overrides it.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HOME=/data/hf \
    HF_HUB_DISABLE_TELEMETRY=1 \
    AKIDB_SERVER_HOST=0.0.0.0 \
    AKIDB_LOG_FORMAT=json
WORKDIR /data
USER 10001:10001
# 8080: REST (akidb, OpenAI, TEI routes, /ready, /metrics). 9090: gRPC.
EXPOSE 8080 9090
# GET /ready on the port and with the API key of the server's own settings; 503 while
# loading or draining. The start period covers a model download into an empty HF cache.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["akidb-embed", "healthcheck"]
# SIGTERM drains in-flight requests for drain_timeout_s (30 s) and exits 0; exec form, so
# the server gets the signal itself (run with --init / compose `init: true` for a reaper).
STOPSIGNAL SIGTERM
ENTRYPOINT ["akidb-embed"]
CMD ["serve"]
