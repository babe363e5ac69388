#!/usr/bin/env bash
# A throwaway PostgreSQL server on loopback for development and CI.
#
#   deploy/dev-postgres.sh start   install PostgreSQL from Debian if missing, init and start the cluster
#   deploy/dev-postgres.sh url     print the SQLAlchemy URL (postgresql+psycopg://...)
#   deploy/dev-postgres.sh stop    stop the cluster (its files stay for the next start)
#   deploy/dev-postgres.sh status
#
# Settings (environment):
#   ASSISTANT_PG_DIR   cluster directory   (default ${TMPDIR:-/tmp}/assistant-postgres)
#   ASSISTANT_PG_PORT  TCP port on 127.0.0.1 (default 55432)
#
# The role `assistant` (password `assistant`) owns the database `assistant` and
# may CREATE DATABASE: the test suite makes one database per test. The server
# runs with fsync off, which is fine for tests and wrong for anything you keep;
# production uses deploy/docker-compose.yml or your own server.
#
# `start` is idempotent: a running cluster in ASSISTANT_PG_DIR is reused.
# Any failure (no apt-get, no permission, a port in use) stops with a message;
# nothing is skipped silently.
set -euo pipefail

PG_DIR="${ASSISTANT_PG_DIR:-${TMPDIR:-/tmp}/assistant-postgres}"
PG_PORT="${ASSISTANT_PG_PORT:-55432}"
DATA="$PG_DIR/data"
LOG="$PG_DIR/server.log"
ROLE=assistant
PASSWORD=assistant
DATABASE=assistant

die() { echo "dev-postgres: $*" >&2; exit 1; }

find_bindir() {
    # Debian keeps the server binaries out of PATH, one directory per major version.
    local d
    d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
    if [[ -n "$d" && -x "$d/initdb" ]]; then echo "$d"; return; fi
    if command -v initdb >/dev/null 2>&1; then dirname "$(command -v initdb)"; return; fi
    if command -v pg_config >/dev/null 2>&1 && [[ -x "$(pg_config --bindir)/initdb" ]]; then pg_config --bindir; return; fi
}

install_postgres() {
    command -v apt-get >/dev/null 2>&1 \
        || die "PostgreSQL is not installed and apt-get is not available; install the PostgreSQL server (initdb, pg_ctl) yourself"
    [[ "$(id -u)" == 0 ]] \
        || die "PostgreSQL is not installed; run as root (apt-get install -y postgresql) or install it yourself"
    echo "dev-postgres: installing PostgreSQL from Debian packages" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q || die "apt-get update failed"
    apt-get install -y -q --no-install-recommends postgresql || die "apt-get install postgresql failed"
}

# Run a command as the cluster owner: `postgres` when we are root (the server refuses root), else ourselves.
as_owner() {
    if [[ "$(id -u)" == 0 ]]; then
        id postgres >/dev/null 2>&1 || die "running as root but there is no 'postgres' user to own the cluster"
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

url() {
    echo "postgresql+psycopg://$ROLE:$PASSWORD@127.0.0.1:$PG_PORT/$DATABASE"
}

psql_admin() {
    as_owner "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PG_DIR" -p "$PG_PORT" -U postgres -d postgres "$@"
}

start() {
    BIN="$(find_bindir)"
    if [[ -z "$BIN" ]]; then
        install_postgres
        BIN="$(find_bindir)"
        [[ -n "$BIN" ]] || die "PostgreSQL was installed but initdb was not found under /usr/lib/postgresql/*/bin"
    fi
    if [[ "$(id -u)" == 0 ]]; then
        install -d -m 0700 -o postgres -g postgres "$PG_DIR"
    else
        install -d -m 0700 "$PG_DIR"
    fi
    if [[ ! -f "$DATA/PG_VERSION" ]]; then
        as_owner "$BIN/initdb" -D "$DATA" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
            --encoding=UTF8 --locale=C.UTF-8 >"$PG_DIR/initdb.log" 2>&1 \
            || die "initdb failed; see $PG_DIR/initdb.log"
    fi
    if as_owner "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
        echo "dev-postgres: already running in $PG_DIR" >&2
    else
        as_owner "$BIN/pg_ctl" -D "$DATA" -l "$LOG" -w -t 60 \
            -o "-p $PG_PORT -k $PG_DIR -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
            start >/dev/null || die "the server did not start; see $LOG (port $PG_PORT in use? set ASSISTANT_PG_PORT)"
    fi
    psql_admin <<SQL || die "could not create the role and database; see $LOG"
SELECT 'CREATE ROLE $ROLE LOGIN CREATEDB PASSWORD ''$PASSWORD'''
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$ROLE') \gexec
SELECT 'CREATE DATABASE $DATABASE OWNER $ROLE'
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$DATABASE') \gexec
SQL
    echo "dev-postgres: ready at $(url)" >&2
}

stop() {
    BIN="$(find_bindir)"
    [[ -n "$BIN" ]] || die "PostgreSQL is not installed"
    if [[ -f "$DATA/PG_VERSION" ]] && as_owner "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
        as_owner "$BIN/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null
        echo "dev-postgres: stopped" >&2
    fi
}

status() {
    BIN="$(find_bindir)"
    [[ -n "$BIN" && -f "$DATA/PG_VERSION" ]] || { echo "not initialised"; exit 3; }
    as_owner "$BIN/pg_ctl" -D "$DATA" status
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    url) url ;;
    status) status ;;
    *) echo "usage: $0 start|stop|url|status" >&2; exit 2 ;;
esac
