#!/usr/bin/env bash
# Starts (idempotently) a throwaway PostgreSQL cluster for the tests, on 127.0.0.1 only, owned
# by a non-root user, and prints the URL to export as MTLS_TEST_POSTGRES_URL.
#   eval "$(bash scripts/pg.sh)"
set -euo pipefail
cd "$(dirname "$0")/.."
PORT="${MTLS_TEST_PG_PORT:-55432}"
DATA="${MTLS_TEST_PG_DIR:-/tmp/mtls-test-pg}"
URL="postgres://postgres@127.0.0.1:${PORT}/postgres"

pgbin=""
for d in /usr/lib/postgresql/*/bin; do [ -x "$d/initdb" ] && pgbin="$d"; done
if [ -z "$pgbin" ]; then
  echo "installing postgresql" >&2
  if command -v sudo >/dev/null 2>&1; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq >&2 && $SUDO apt-get install -y -qq postgresql >&2
  for d in /usr/lib/postgresql/*/bin; do [ -x "$d/initdb" ] && pgbin="$d"; done
fi

# PostgreSQL refuses to run as root: run it as the postgres user (or ourselves if not root).
as_pg() {
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

if "$pgbin/pg_isready" -q -h 127.0.0.1 -p "$PORT" 2>/dev/null; then
  echo "export MTLS_TEST_POSTGRES_URL=$URL"
  exit 0
fi
if [ ! -f "$DATA/PG_VERSION" ]; then
  mkdir -p "$DATA"
  [ "$(id -u)" = 0 ] && { id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres; chown postgres "$DATA"; }
  as_pg "$pgbin/initdb" -D "$DATA" -U postgres --auth=trust -E UTF8 >/dev/null
fi
as_pg "$pgbin/pg_ctl" -D "$DATA" -l "$DATA/log" -w -o "-c listen_addresses=127.0.0.1 -p $PORT -k $DATA -c max_connections=200 -c fsync=on" start >/dev/null
echo "export MTLS_TEST_POSTGRES_URL=$URL"
