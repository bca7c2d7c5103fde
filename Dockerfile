# One image for the feeder and the workers; the command picks the role.
#
# BASE_IMAGE is any image with Python 3.11+ whose `python` and `pip` are on PATH. Without
# a registry, docker/build-images.sh builds one from Debian bookworm and passes
# --build-arg BASE_IMAGE=feedwork/python:3.11-bookworm (see docs/DOCKER.md).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

COPY pyproject.toml README.md ./
COPY feedwork ./feedwork
COPY feeder ./feeder
COPY worker ./worker
RUN pip install . \
    && useradd --system --uid 10001 feedwork \
    && mkdir /data && chown feedwork /data

USER feedwork
VOLUME /data
EXPOSE 50051
# A container listens on every interface of its own network to be reachable at all: like
# Redis's image (protected mode off), this default runs without TLS, and publishing its
# port is the operator's choice (docker-compose.override.yml: 127.0.0.1 only). With TLS
# and keys, give --tls-cert, --tls-key and --auth-file instead (docs/SECURITY.md).
CMD ["python", "-m", "feeder", "--listen", "0.0.0.0:50051", "--db", "/data/feedwork.db", "--insecure"]
