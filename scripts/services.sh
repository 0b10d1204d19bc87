#!/usr/bin/env bash
# Sourced by scripts/test.sh after setup.sh (or run as `bash scripts/services.sh`): makes the
# test suite's PostgreSQL and Redis reachable and exports where they are.
#
#   SPENDGATE_TEST_POSTGRES  default postgresql://postgres@127.0.0.1:5432/spendgate_test
#   SPENDGATE_TEST_REDIS     default redis://127.0.0.1:6379/15
#   (the defaults of src/spendgate/testing/servers.py)
#
# A server that already answers is used as it is (PostgreSQL: the database is created if
# missing); nothing is stopped, restarted or reconfigured. When a 127.0.0.1/localhost server
# does not answer, this installs Debian's packages if needed and starts one of its own on the
# URL's port, listening on 127.0.0.1 only, with its files outside the checkout:
#   root:      /var/lib/spendgate-test/{pg,redis}-<port>  (PostgreSQL runs as the postgres user)
#   otherwise: ~/.cache/spendgate/{pg,redis}-<port>      (run as the current user)
# Stop them with:  pg_ctl -D <dir>/data stop  (as its owner)  and  redis-cli -p <port> shutdown
set -euo pipefail

export SPENDGATE_TEST_POSTGRES="${SPENDGATE_TEST_POSTGRES:-postgresql://postgres@127.0.0.1:5432/spendgate_test}"
export SPENDGATE_TEST_REDIS="${SPENDGATE_TEST_REDIS:-redis://127.0.0.1:6379/15}"

_sg_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

_sg_say() { printf 'services.sh: %s\n' "$*" >&2; }
# `cmd || _sg_die "why" || return`: prints why, fails.
_sg_die() { printf 'services.sh: error: %s\n' "$*" >&2; return 1; }

_sg_is_root() { [ "$(id -u)" = 0 ]; }

# Where a server of our own keeps its files.
_sg_state_dir() {
  if _sg_is_root; then
    printf '%s\n' /var/lib/spendgate-test
  else
    printf '%s\n' "${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/spendgate"
  fi
}

# True when something accepts TCP connections on host:port.
_sg_listening() {
  # shellcheck disable=SC2016
  timeout 3 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$1" "$2" 2>/dev/null
}

_sg_apt_install() {
  local sudo=()
  if ! _sg_is_root; then
    command -v sudo >/dev/null 2>&1 || _sg_die "installing $* needs root or sudo" || return
    sudo=(sudo)
  fi
  command -v apt-get >/dev/null 2>&1 || _sg_die "no apt-get here: install $* yourself" || return
  _sg_say "installing $* from Debian's packages"
  local apt=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300)
  # A fresh image has no package index; a stale one fails to find or fetch: update, retry.
  if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null ||
     ! "${apt[@]}" install -y -qq "$@" >/dev/null 2>&1; then
    "${apt[@]}" update -qq >/dev/null || _sg_die "apt-get update failed" || return
    "${apt[@]}" install -y -qq "$@" >/dev/null || _sg_die "apt-get install $* failed" || return
  fi
}

# Split both URLs into shell variables (_sg_pg_*, _sg_rd_*).
_sg_parse_urls() {
  local py=python3 out
  _sg_pg_host="" _sg_pg_port="" _sg_pg_user="" _sg_pg_db="" _sg_pg_maint="" _sg_pg_local=""
  _sg_rd_host="" _sg_rd_port="" _sg_rd_db="" _sg_rd_user="" _sg_rd_password="" _sg_rd_tls="" _sg_rd_local=""
  [ -x "$_sg_root/.venv/bin/python" ] && py="$_sg_root/.venv/bin/python"
  command -v "$py" >/dev/null 2>&1 || _sg_die "needs python3 (scripts/test.sh sets it up)" || return
  # shellcheck disable=SC2016
  out="$("$py" -c '
import getpass, shlex, sys
from urllib.parse import unquote, urlsplit, urlunsplit

def out(name, value):
    print(f"{name}={shlex.quote(str(value))}")

def fail(message):
    print(f"services.sh: error: {message}", file=sys.stderr)
    sys.exit(1)

pg_url, redis_url = sys.argv[1:3]
local = ("127.0.0.1", "localhost")
try:
    pg = urlsplit(pg_url)
    if pg.scheme not in ("postgresql", "postgres") or not pg.hostname:
        fail(f"SPENDGATE_TEST_POSTGRES={pg_url!r}: want postgresql://user@host:port/database")
    user = unquote(pg.username) if pg.username else getpass.getuser()
    out("_sg_pg_host", pg.hostname)
    out("_sg_pg_port", pg.port or 5432)
    out("_sg_pg_user", user)
    out("_sg_pg_db", unquote(pg.path.lstrip("/")) or user)
    out("_sg_pg_maint", urlunsplit(pg._replace(path="/postgres")))
    out("_sg_pg_local", int(pg.hostname in local))
    rd = urlsplit(redis_url)
    if rd.scheme not in ("redis", "rediss") or not rd.hostname:
        fail(f"SPENDGATE_TEST_REDIS={redis_url!r}: want redis://host:port/db")
    out("_sg_rd_host", rd.hostname)
    out("_sg_rd_port", rd.port or 6379)
    out("_sg_rd_db", int(rd.path.lstrip("/") or 0))
    out("_sg_rd_user", unquote(rd.username or ""))
    out("_sg_rd_password", unquote(rd.password or ""))
    out("_sg_rd_tls", int(rd.scheme == "rediss"))
    out("_sg_rd_local", int(rd.hostname in local))
except ValueError as e:
    fail(f"bad test server URL: {e}")
' "$SPENDGATE_TEST_POSTGRES" "$SPENDGATE_TEST_REDIS")" || return
  eval "$out"
}

# ---------------------------------------------------------------- PostgreSQL

# A client to run SQL with: Debian's newest psql, any psql, else psycopg from the venv.
_sg_pg_client() {
  local candidates=(/usr/lib/postgresql/*/bin/psql) candidate
  _sg_psql=""
  for candidate in $(printf '%s\n' "${candidates[@]}" | sort -V -r) "$(command -v psql || true)"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ]; then _sg_psql="$candidate"; return 0; fi
  done
  if [ -x "$_sg_root/.venv/bin/python" ] && "$_sg_root/.venv/bin/python" -c 'import psycopg' 2>/dev/null; then
    return 0
  fi
  _sg_apt_install postgresql-client || return
  _sg_pg_client
}

# _sg_pg_sql CONNINFO SQL: runs SQL (CONNINFO: a URL or "key=value ..."); the rows (a|b) in
# $_sg_pg_out; on failure returns 1 with the client's message in $_sg_pg_err.
_sg_pg_sql() {
  local errfile rc=0
  errfile="$(mktemp)"
  if [ -n "$_sg_psql" ]; then
    _sg_pg_out="$(PGCONNECT_TIMEOUT=5 "$_sg_psql" -X -q -w -A -t -v ON_ERROR_STOP=1 \
      -d "$1" -c "$2" 2>"$errfile")" || rc=$?
  else
    _sg_pg_out="$("$_sg_root/.venv/bin/python" -c '
import sys, psycopg
try:
    with psycopg.connect(sys.argv[1], autocommit=True, connect_timeout=5) as conn:
        cur = conn.execute(sys.argv[2])
        for row in cur.fetchall() if cur.description else ():
            print("|".join("" if v is None else str(v) for v in row))
except psycopg.Error as e:
    sys.exit(str(e).strip())
' "$1" "$2" 2>"$errfile")" || rc=$?
  fi
  _sg_pg_err="$(tr -s '\n\t' '  ' <"$errfile" | sed 's/ *$//')"
  rm -f "$errfile"
  return "$rc"
}

_sg_sql_literal() { local s=${1//\'/\'\'}; printf "'%s'" "$s"; }
_sg_sql_ident() { local s=${1//\"/\"\"}; printf '"%s"' "$s"; }

# Debian's server binaries: the newest /usr/lib/postgresql/*/bin (or $1's version).
_sg_pg_bindir() {
  local dir
  if [ -n "${1:-}" ]; then
    dir="/usr/lib/postgresql/$1/bin"
  else
    local dirs=(/usr/lib/postgresql/*/bin)
    dir="$(printf '%s\n' "${dirs[@]}" | sort -V | tail -n 1)"
  fi
  [ -n "$dir" ] && [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ] && [ -x "$dir/postgres" ] || return 1
  printf '%s\n' "$dir"
}

# Runs a command as the test cluster's OS user, from / (its home may be unreadable to it).
_sg_as_pg() {
  if [ "$_sg_pg_os_user" = "$(id -un)" ]; then
    (cd / && "$@")
  elif command -v runuser >/dev/null 2>&1; then
    (cd / && runuser -u "$_sg_pg_os_user" -- "$@")
  else
    (cd / && su -s /bin/bash "$_sg_pg_os_user" -c "$(printf '%q ' "$@")")
  fi
}

_sg_pg_install() {
  # Debian's package would create and start a "main" cluster on 5432 with password
  # authentication; the tests want one of their own, so keep it from being created.
  local dir=/etc/postgresql-common/createcluster.d sudo=() made_dir=0 rc=0
  local dropin="$dir/spendgate-test.conf"
  _sg_is_root || sudo=(sudo)
  [ -d "$dir" ] || made_dir=1
  "${sudo[@]}" mkdir -p "$dir" &&
    printf 'create_main_cluster = false\n' | "${sudo[@]}" tee "$dropin" >/dev/null ||
    _sg_die "cannot write $dropin" || return
  _sg_apt_install postgresql || rc=$?
  "${sudo[@]}" rm -f "$dropin"
  if [ "$made_dir" = 1 ]; then "${sudo[@]}" rmdir "$dir" 2>/dev/null || true; fi
  return "$rc"
}

# Starts (creating it first if need be) a cluster of our own on the URL's port, then makes
# the URL's role and database.
_sg_pg_own_cluster() {
  local port="$_sg_pg_port" bindir base data version super admin running=0 pid
  base="$(_sg_state_dir)/pg-$port"
  data="$base/data"
  # Ours, already running (its postmaster.pid names a live process)?
  if pid="$(head -n 1 "$data/postmaster.pid" 2>/dev/null)" && [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    running=1
  elif _sg_listening 127.0.0.1 "$port"; then
    _sg_die "port $port is taken by another server, which refused $_sg_pg_user ($_sg_pg_err):" \
      "set SPENDGATE_TEST_POSTGRES to a server the tests may use, or to a free port for one of their own"
    return
  fi

  bindir="$(_sg_pg_bindir)" || { _sg_pg_install && bindir="$(_sg_pg_bindir)"; } ||
    _sg_die "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin" || return

  if _sg_is_root; then
    _sg_pg_os_user=postgres
    if ! id -u postgres >/dev/null 2>&1; then
      _sg_say "creating the postgres OS user (PostgreSQL will not run as root)"
      useradd --system --user-group --no-create-home --home-dir /var/lib/postgresql \
        --shell /bin/bash postgres || _sg_die "cannot create the postgres user" || return
    fi
  else
    _sg_pg_os_user="$(id -un)"
  fi
  super="$_sg_pg_os_user"
  mkdir -p "$base" || _sg_die "cannot create $base" || return
  if _sg_is_root; then
    chown "$_sg_pg_os_user:" "$base" && chmod 755 "$(_sg_state_dir)" "$base" || return
  fi

  if [ -f "$data/PG_VERSION" ]; then
    version="$(cat "$data/PG_VERSION")"
    bindir="$(_sg_pg_bindir "$version")" ||
      _sg_die "$data was made by PostgreSQL $version, whose binaries are gone: delete $base" || return
  else
    rm -rf "$data"  # an initdb that did not finish
    _sg_say "creating a PostgreSQL test cluster in $data (run as $_sg_pg_os_user)"
    _sg_as_pg "$bindir/initdb" -D "$data" -U "$super" -A trust -E UTF8 --no-locale \
      >"$base/initdb.log" 2>&1 ||
      { tail -n 20 "$base/initdb.log" >&2; _sg_die "initdb failed (log: $base/initdb.log)"; return; }
    local sockdir=${base//\'/\'\'}
    printf '\n# spendgate scripts/services.sh: a test cluster of its own\n%s\n%s\n%s\n' \
      "listen_addresses = '127.0.0.1'" "port = $port" "unix_socket_directories = '$sockdir'" \
      | _sg_as_pg tee -a "$data/postgresql.conf" >/dev/null || return
  fi

  if [ "$running" = 0 ]; then
    _sg_say "starting PostgreSQL $(cat "$data/PG_VERSION") on 127.0.0.1:$port (log: $base/postgresql.log)"
    _sg_as_pg "$bindir/pg_ctl" -D "$data" -l "$base/postgresql.log" -w -t 60 -s start </dev/null >&2 ||
      { tail -n 20 "$base/postgresql.log" >&2 || true; _sg_die "PostgreSQL did not start"; return; }
  fi

  # Superuser over the cluster's own socket (trust).
  admin="host='${base//\'/\\\'}' port=$port user='$super' dbname=postgres"
  _sg_psql="$bindir/psql"
  local tries=0
  until _sg_pg_sql "$admin" 'SELECT 1' >/dev/null; do
    tries=$((tries + 1))
    [ "$tries" -lt 60 ] || _sg_die "PostgreSQL on port $port does not accept connections: $_sg_pg_err" || return
    sleep 0.5
  done

  _sg_pg_sql "$admin" "SELECT 1 FROM pg_roles WHERE rolname = $(_sg_sql_literal "$_sg_pg_user")" ||
    _sg_die "$_sg_pg_err" || return
  if [ -z "$_sg_pg_out" ]; then
    _sg_say "creating PostgreSQL role $_sg_pg_user"
    _sg_pg_sql "$admin" "CREATE ROLE $(_sg_sql_ident "$_sg_pg_user") LOGIN SUPERUSER" >/dev/null ||
      _sg_die "$_sg_pg_err" || return
  fi
  _sg_pg_sql "$admin" "SELECT 1 FROM pg_database WHERE datname = $(_sg_sql_literal "$_sg_pg_db")" ||
    _sg_die "$_sg_pg_err" || return
  if [ -z "$_sg_pg_out" ]; then
    _sg_say "creating PostgreSQL database $_sg_pg_db"
    _sg_pg_sql "$admin" "CREATE DATABASE $(_sg_sql_ident "$_sg_pg_db") OWNER $(_sg_sql_ident "$_sg_pg_user")" >/dev/null ||
      _sg_die "$_sg_pg_err" || return
  fi
}

_sg_postgres_up() {
  local where="PostgreSQL at $_sg_pg_host:$_sg_pg_port"
  _sg_pg_client || return
  # The usual case: the database is there.
  _sg_pg_sql "$SPENDGATE_TEST_POSTGRES" 'SELECT 1' >/dev/null && return 0
  local first_err="$_sg_pg_err"

  # The server answers the role, the database is missing: create it.
  if _sg_pg_sql "$_sg_pg_maint" "SELECT 1 FROM pg_database WHERE datname = $(_sg_sql_literal "$_sg_pg_db")"; then
    [ -z "$_sg_pg_out" ] || _sg_die "$where: cannot use database $_sg_pg_db: $first_err" || return
    _sg_say "creating database $_sg_pg_db on $where"
    _sg_pg_sql "$_sg_pg_maint" "CREATE DATABASE $(_sg_sql_ident "$_sg_pg_db")" >/dev/null ||
      _sg_pg_sql "$SPENDGATE_TEST_POSTGRES" 'SELECT 1' >/dev/null ||  # made meanwhile
      _sg_die "$where: cannot create database $_sg_pg_db: $_sg_pg_err" || return
    return 0
  fi

  [ "$_sg_pg_local" = 1 ] ||
    _sg_die "$where is not reachable as $_sg_pg_user ($first_err); this script starts" \
      "servers on 127.0.0.1/localhost only: start that one, or set SPENDGATE_TEST_POSTGRES" || return
  _sg_pg_own_cluster || return
  _sg_pg_sql "$SPENDGATE_TEST_POSTGRES" 'SELECT 1' >/dev/null ||
    _sg_die "$where still refuses $SPENDGATE_TEST_POSTGRES: $_sg_pg_err" || return
}

# --------------------------------------------------------------------- Redis

# Prints the server's answer to PING (PONG when all is well).
_sg_redis_ping() {
  if command -v redis-cli >/dev/null 2>&1; then
    local args=(-h "$_sg_rd_host" -p "$_sg_rd_port") auth=()
    [ "$_sg_rd_tls" = 1 ] && args+=(--tls)
    [ -n "$_sg_rd_user" ] && args+=(--user "$_sg_rd_user")
    [ -n "$_sg_rd_password" ] && auth=(REDISCLI_AUTH="$_sg_rd_password")
    env "${auth[@]}" timeout 5 redis-cli "${args[@]}" ping 2>&1 | head -n 1
  elif [ "$_sg_rd_tls" = 1 ]; then
    echo "(no redis-cli to check a TLS server)"
  else
    # RESP over bash's /dev/tcp: [AUTH [user] password,] PING.
    # shellcheck disable=SC2016
    LC_ALL=C timeout 5 bash -c '
      exec 3<>"/dev/tcp/$0/$1" || exit 1
      if [ -n "$2" ] && [ -n "$3" ]; then
        printf "*3\r\n\$4\r\nAUTH\r\n\$%d\r\n%s\r\n\$%d\r\n%s\r\n" "${#3}" "$3" "${#2}" "$2" >&3
        IFS= read -r line <&3
      elif [ -n "$2" ]; then
        printf "*2\r\n\$4\r\nAUTH\r\n\$%d\r\n%s\r\n" "${#2}" "$2" >&3
        IFS= read -r line <&3
      fi
      printf "*1\r\n\$4\r\nPING\r\n" >&3
      IFS= read -r line <&3
      printf "%s\n" "${line#+}" | tr -d "\r"
    ' "$_sg_rd_host" "$_sg_rd_port" "$_sg_rd_password" "$_sg_rd_user" 2>&1 | head -n 1
  fi
}

_sg_redis_up() {
  local where="Redis at $_sg_rd_host:$_sg_rd_port" answer
  answer="$(_sg_redis_ping || true)"
  [ "$answer" = PONG ] && return 0

  [ "$_sg_rd_local" = 1 ] ||
    _sg_die "$where is not reachable (${answer:-no answer}); this script starts servers on" \
      "127.0.0.1/localhost only: start that one, or set SPENDGATE_TEST_REDIS" || return
  if _sg_listening 127.0.0.1 "$_sg_rd_port"; then
    _sg_die "port $_sg_rd_port is taken by a server that does not answer PING as the URL" \
      "asks (${answer:-no answer}): set SPENDGATE_TEST_REDIS to a Redis the tests may use, or to a free port" || return
  fi

  if ! command -v redis-server >/dev/null 2>&1; then
    _sg_apt_install redis-server || return
    hash -r
    command -v redis-server >/dev/null 2>&1 || _sg_die "redis-server is still missing" || return
    # Debian's package may have started its own server on this port.
    answer="$(_sg_redis_ping || true)"
    [ "$answer" = PONG ] && return 0
  fi

  local dir args
  dir="$(_sg_state_dir)/redis-$_sg_rd_port"
  mkdir -p "$dir" || _sg_die "cannot create $dir" || return
  args=(--port "$_sg_rd_port" --bind 127.0.0.1 --daemonize yes --save '' --appendonly no
        --dir "$dir" --pidfile "$dir/redis.pid" --logfile "$dir/redis.log")
  [ "$_sg_rd_db" -lt 16 ] || args+=(--databases "$((_sg_rd_db + 1))")
  [ -z "$_sg_rd_password" ] || args+=(--requirepass "$_sg_rd_password")
  _sg_say "starting Redis on 127.0.0.1:$_sg_rd_port (log: $dir/redis.log)"
  redis-server "${args[@]}" </dev/null >>"$dir/redis.log" 2>&1 ||
    { tail -n 20 "$dir/redis.log" >&2 || true; _sg_die "redis-server did not start"; return; }
  local tries=0
  until [ "$(_sg_redis_ping || true)" = PONG ]; do
    tries=$((tries + 1))
    if [ "$tries" -ge 100 ]; then
      tail -n 20 "$dir/redis.log" >&2 || true
      _sg_die "$where does not answer PING after starting it"
      return
    fi
    sleep 0.1
  done
}

# ---------------------------------------------------------------------- main

_sg_parse_urls
_sg_postgres_up
_sg_redis_up

unset -f _sg_say _sg_die _sg_is_root _sg_state_dir _sg_listening _sg_apt_install _sg_parse_urls \
  _sg_pg_client _sg_pg_sql _sg_sql_literal _sg_sql_ident _sg_pg_bindir _sg_as_pg _sg_pg_install \
  _sg_pg_own_cluster _sg_postgres_up _sg_redis_ping _sg_redis_up
unset _sg_root _sg_psql _sg_pg_out _sg_pg_err _sg_pg_os_user _sg_pg_host _sg_pg_port _sg_pg_user _sg_pg_db \
  _sg_pg_maint _sg_pg_local _sg_rd_host _sg_rd_port _sg_rd_db _sg_rd_user _sg_rd_password \
  _sg_rd_tls _sg_rd_local
