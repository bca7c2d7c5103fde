# One image for the feeder and the workers; the command picks the role.
FROM python:3.11-slim

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
CMD ["python", "-m", "feeder", "--listen", "0.0.0.0:50051", "--db", "/data/feedwork.db"]
