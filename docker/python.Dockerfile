# feedwork/python:3.11-bookworm: Debian bookworm's Python 3.11 on the locally built base
# (docker/build-base.sh), shaped like the official python:3.11-slim as far as the root
# Dockerfile needs: `python` and `pip` on PATH, and `pip install` allowed. Debian's own
# Python refuses system-wide pip installs (PEP 668), so both come from a virtual
# environment in /opt/python that is first on PATH.
#
#   docker build --network host -f docker/python.Dockerfile -t feedwork/python:3.11-bookworm docker
ARG BASE_IMAGE=feedwork/base:bookworm
FROM ${BASE_IMAGE}

RUN apt-get update \
    && apt-get install -y python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/python

ENV VIRTUAL_ENV=/opt/python PATH=/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
CMD ["python"]
