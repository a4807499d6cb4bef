# Stand-in for the official postgres image: Debian 12's PostgreSQL 15 behind an entrypoint with
# the same contract (POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB, PGDATA and the scripts in
# /docker-entrypoint-initdb.d, run once on an empty data directory). Built by base-images.sh.
ARG DEBIAN_IMAGE=toolbox-sweeps-local/debian:bookworm
FROM ${DEBIAN_IMAGE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-15 \
    && pg_dropcluster 15 main \
    && apt-get clean && rm -rf /var/lib/apt/lists/* /usr/share/doc/* /usr/share/man/* \
    # The official image's layout: PGDATA owned by postgres, a socket dir it can write.
    && install -d -o postgres -g postgres -m 0700 /var/lib/postgresql/data \
    && install -d -o postgres -g postgres -m 2775 /var/run/postgresql /docker-entrypoint-initdb.d
COPY postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
ENV PATH=/usr/lib/postgresql/15/bin:$PATH \
    PGDATA=/var/lib/postgresql/data \
    LANG=C.UTF-8
USER postgres
STOPSIGNAL SIGINT
EXPOSE 5432
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["postgres"]
