#!/bin/sh
# The official postgres image's contract, as far as docker/compose*.yaml use it: on first start a cluster in
# $PGDATA owned by $POSTGRES_USER (password $POSTGRES_PASSWORD, scram-sha-256 over TCP, listening on every
# address unless `-c listen_addresses=...` says otherwise) with the database $POSTGRES_DB; the port is
# $PGPORT (5432 by default); `postgres -c ...` arguments go to the server, which runs as the postgres user.
set -eu
case "${1:-}" in -*) set -- postgres "$@" ;; esac
if [ "${1:-}" != postgres ]; then
    exec "$@"
fi
shift
as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }
mkdir -p "$PGDATA"
chown postgres:postgres "$PGDATA"
chmod 700 "$PGDATA"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    user="${POSTGRES_USER:-postgres}"
    database="${POSTGRES_DB:-$user}"
    password_file="$(mktemp)"
    printf '%s\n' "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD must be set}" > "$password_file"
    chown postgres "$password_file"
    as_postgres initdb --username="$user" --pwfile="$password_file" --encoding=UTF8 --locale=C.UTF-8 \
        --auth-local=trust --auth-host=scram-sha-256 > /dev/null
    rm -f "$password_file"
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    echo "listen_addresses = '*'" >> "$PGDATA/postgresql.conf"
    if [ "$database" != postgres ]; then
        as_postgres pg_ctl --pgdata="$PGDATA" --options="-c listen_addresses=''" --wait --silent start
        as_postgres createdb --username="$user" "$database"
        as_postgres pg_ctl --pgdata="$PGDATA" --mode=fast --wait --silent stop
    fi
fi
exec setpriv --reuid=postgres --regid=postgres --init-groups postgres "$@"
