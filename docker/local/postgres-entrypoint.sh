#!/bin/sh
# The official postgres image's entrypoint contract, for Debian's server: on an empty PGDATA,
# initdb with POSTGRES_USER/POSTGRES_PASSWORD, create POSTGRES_DB, run the init scripts against
# a server that listens on its socket only; then serve on every address, with passwords
# required from other hosts. Runs as the postgres user (the image's USER), never as root.
set -eu
[ "${1:-}" = postgres ] || exec "$@"
shift
: "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"
user=${POSTGRES_USER:-postgres}
db=${POSTGRES_DB:-$user}

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    pwfile=$(mktemp)
    printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
    # As the official image: trust inside the container (socket and loopback, which the
    # health check uses), a password from anywhere else.
    initdb --username="$user" --pwfile="$pwfile" --auth=trust --encoding=UTF8 -D "$PGDATA"
    rm -f "$pwfile"
    echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
    pg_ctl -D "$PGDATA" -w -o "-c listen_addresses=''" start
    export PGUSER="$user" PGDATABASE=postgres
    [ "$db" = postgres ] || createdb --owner="$user" "$db"
    export PGDATABASE="$db"
    for f in /docker-entrypoint-initdb.d/*; do
        case "$f" in
            *.sh) if [ -x "$f" ]; then "$f"; else . "$f"; fi ;;
            *.sql) psql -v ON_ERROR_STOP=1 -f "$f" ;;
        esac
    done
    unset PGUSER PGDATABASE
    pg_ctl -D "$PGDATA" -m fast -w stop
fi
exec postgres -c listen_addresses='*' "$@"
