# Sourced by .ci/run (bash): a throwaway PostgreSQL server for the sweep tests.
#
#   start_postgres   installs PostgreSQL from Debian if it is missing (apt-get, with sudo
#                    when not root), creates a cluster in a temporary directory, starts it on
#                    a free port of 127.0.0.1 (unix socket in the same directory), creates the
#                    database ensda_test and exports
#                      ENSDA_TEST_POSTGRES_URL=postgresql+psycopg://ensda@127.0.0.1:PORT/ensda_test
#                      ENSDA_REQUIRE_POSTGRES=1   (the PostgreSQL test fails instead of skipping)
#   stop_postgres    stops the server and removes the directory (start_postgres traps EXIT).
#
# initdb refuses to run as root: as root the cluster belongs to the Debian package's
# `postgres` user (runuser); otherwise to the current user.

start_postgres() {
  local sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  if ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
    echo "CI: installing PostgreSQL (Debian package)"
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq postgresql >/dev/null
  fi
  PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  PG_DIR=$(mktemp -d /tmp/ensda-postgres.XXXXXX)
  PG_AS=()
  if [ "$(id -u)" -eq 0 ]; then
    chown postgres: "$PG_DIR"
    PG_AS=(runuser -u postgres --)
  fi
  local port
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  "${PG_AS[@]}" "$PG_BIN/initdb" -D "$PG_DIR/data" -U ensda -A trust --no-sync >"$PG_DIR/initdb.log" 2>&1 \
    || { cat "$PG_DIR/initdb.log" >&2; return 1; }
  trap stop_postgres EXIT
  "${PG_AS[@]}" "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 60 \
    -o "-h 127.0.0.1 -p $port -k $PG_DIR -c fsync=off -c max_connections=50" start >/dev/null \
    || { cat "$PG_DIR/server.log" >&2; return 1; }
  "${PG_AS[@]}" "$PG_BIN/createdb" -h 127.0.0.1 -p "$port" -U ensda ensda_test
  export ENSDA_TEST_POSTGRES_URL="postgresql+psycopg://ensda@127.0.0.1:$port/ensda_test"
  export ENSDA_REQUIRE_POSTGRES=1
  echo "CI: PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$port ($PG_DIR)"
}

stop_postgres() {
  if [ -n "${PG_DIR:-}" ] && [ -d "$PG_DIR/data" ]; then
    "${PG_AS[@]}" "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "$PG_DIR"
  fi
}
