# Throw-away PostgreSQL cluster for the registry tests (issue 14); sourced by .ci/run
# and by the developers' setup. `pg_cluster_start DIR` installs Debian's postgresql if
# no initdb is found, makes a cluster in DIR owned by the `postgres` user (initdb
# refuses root), listening only on 127.0.0.1 at a free port with scram-sha-256 auth for
# a superuser `cradle` whose generated password is in DIR/pgpass (0600, PGPASSFILE),
# and exports CRADLE_TEST_PG_URL (no password in it) and PGPASSFILE.
# DIR's parent must be traversable by `postgres` (a fresh `mktemp -d` is fine: DIR is
# handed to that user). `pg_cluster_stop DIR` stops it.

pg_find_bin() {
  local d
  if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
    dirname "$(readlink -f "$(command -v pg_ctl)")"
    return 0
  fi
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && { echo "$d"; return 0; }
  done
  return 1
}

pg_cluster_start() {
  local dir=$1 bin port pw
  bin=$(pg_find_bin) || {
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq postgresql
    bin=$(pg_find_bin)
  }
  id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
  mkdir -p "$dir"
  chown postgres "$dir"
  chmod 0700 "$dir"
  pw=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')
  # The password reaches initdb through a file only the postgres user reads.
  printf '%s\n' "$pw" > "$dir/pw"
  chown postgres "$dir/pw"
  chmod 0600 "$dir/pw"
  runuser -u postgres -- "$bin/initdb" -D "$dir/data" -U cradle --pwfile="$dir/pw" \
    --auth-host=scram-sha-256 --auth-local=scram-sha-256 -E UTF8 --no-instructions >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; return 1; }
  rm -f "$dir/pw"
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  runuser -u postgres -- "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off -c max_connections=200" start >/dev/null \
    || { cat "$dir/server.log" >&2; return 1; }
  printf '127.0.0.1:%s:*:cradle:%s\n' "$port" "$pw" > "$dir/pgpass"
  chmod 0600 "$dir/pgpass"
  export PGPASSFILE="$dir/pgpass"
  export CRADLE_TEST_PG_URL="postgresql://cradle@127.0.0.1:$port/postgres"
  export CRADLE_TEST_PG_BIN="$bin"
  export CRADLE_TEST_PG_DATA="$dir/data"
}

pg_cluster_stop() {
  local dir=$1 bin
  bin=$(pg_find_bin) || return 0
  [ -f "$dir/data/postmaster.pid" ] && runuser -u postgres -- "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1
  return 0
}
