# feedwork/postgres:15-bookworm: Debian bookworm's PostgreSQL 15 on the locally built base
# (docker/build-base.sh), for machines that cannot pull the official postgres image. It
# reads the same variables as the official image where the compose file uses them:
# POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB, PGDATA; PGPORT moves the port, and
# POSTGRES_LISTEN_ADDRESSES (default '*') the addresses. See postgres-entrypoint.sh.
#
#   docker build --network host -f docker/postgres.Dockerfile -t feedwork/postgres:15-bookworm docker
ARG BASE_IMAGE=feedwork/base:bookworm
FROM ${BASE_IMAGE}

# No "main" cluster from the package: the entrypoint creates one in PGDATA on first start.
RUN apt-get update \
    && apt-get install -y postgresql-common \
    && sed -ri 's/^#?\s*create_main_cluster\s*=.*/create_main_cluster = false/' \
        /etc/postgresql-common/createcluster.conf \
    && apt-get install -y postgresql-15 \
    && rm -rf /var/lib/apt/lists/* \
    && install -d -o postgres -g postgres -m 0700 /var/lib/postgresql/data \
    && install -d -o postgres -g postgres -m 2775 /var/run/postgresql

COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint

ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PGDATA=/var/lib/postgresql/data
USER postgres
VOLUME /var/lib/postgresql/data
EXPOSE 5432
ENTRYPOINT ["postgres-entrypoint"]
