#!/usr/bin/env bash
# A throwaway team tracking server on this machine, for trying the team setup: a PostgreSQL
# cluster in DIR (initdb/pg_ctl as a non-root user, 127.0.0.1 only) and `mlflow server` on it,
# with the artifacts proxied (mlflow-artifacts:) into DIR/artifacts, optionally with basic auth.
#
#   scripts/team_server.sh start DIR [--auth] [--port 5000] [--db-port 5432] [--workers 2]
#   . DIR/client.env                     # MLFLOW_TRACKING_URI (and, with --auth, the admin login)
#   scripts/team_server.sh stop DIR [server|db]
#
# `start` on a DIR set up before starts whichever part is down, with the settings of the first
# start (kept, with the generated passwords, in DIR/team.env, readable by its owner only).
# `stop` stops both (or one). Needs PostgreSQL's binaries (PG_BIN, else pg_config --bindir, else
# /usr/lib/postgresql/*/bin) and `pip install -e '.[team]'`. Run as root, PostgreSQL runs as
# the `postgres` user (PG_USER), who must be able to enter DIR.
set -euo pipefail

die() { echo "team_server.sh: $*" >&2; exit 2; }
usage() { die "usage: $0 start DIR [--auth] [--port N] [--db-port N] [--workers N] | stop DIR [server|db]"; }

[[ $# -ge 2 ]] || usage
action=$1 dir=$2
shift 2
case $action in start | stop) ;; *) usage ;; esac

if [[ -z ${PG_BIN:-} ]]; then
  PG_BIN=$(pg_config --bindir 2>/dev/null || true)
  [[ -x ${PG_BIN}/initdb ]] || PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
fi
[[ -x ${PG_BIN}/initdb ]] || die "no PostgreSQL binaries found: install PostgreSQL (apt-get install postgresql) or set PG_BIN"

as_db_user() { # PostgreSQL refuses to run as root
  if [[ $(id -u) -eq 0 ]]; then runuser -u "${PG_USER:-postgres}" -- "$@"; else "$@"; fi
}

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
env_file=$dir/team.env pgdata=$dir/pgdata pidfile=$dir/mlflow.pid

server_pid() { # the running mlflow server's pid (its process group), if any
  [[ -f $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null && cat "$pidfile"
}
db_running() { [[ -d $pgdata ]] && as_db_user "$PG_BIN/pg_ctl" -D "$pgdata" status >/dev/null 2>&1; }

stop_server() {
  local pid
  if pid=$(server_pid); then
    kill -TERM -- "-$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
    echo "mlflow server stopped"
  fi
  rm -f "$pidfile"
}

stop_db() {
  if db_running; then
    as_db_user "$PG_BIN/pg_ctl" -D "$pgdata" -m fast -w stop >/dev/null
    echo "PostgreSQL stopped"
  fi
}

if [[ $action == stop ]]; then
  case ${1:-both} in
    server) stop_server ;;
    db) stop_db ;;
    both) stop_server; stop_db ;;
    *) usage ;;
  esac
  exit 0
fi

# start: settings from the first start, else the options (and new passwords)
port=5000 db_port=5432 workers=2 auth=0
# shellcheck source=/dev/null
[[ -f $env_file ]] && . "$env_file"
while [[ $# -gt 0 ]]; do
  case $1 in
    --auth) auth=1 ;;
    --port) port=${2:?}; shift ;;
    --db-port) db_port=${2:?}; shift ;;
    --workers) workers=${2:?}; shift ;;
    *) usage ;;
  esac
  shift
done
secret() { python3 -c 'import secrets; print(secrets.token_urlsafe(18))'; }
if [[ ! -f $env_file ]]; then
  (umask 077 && cat >"$env_file" <<EOF
port=$port db_port=$db_port workers=$workers auth=$auth
db_password=$(secret)
admin_password=${MLFLOW_AUTH_ADMIN_PASSWORD:-$(secret)}
flask_secret=$(secret)
EOF
  )
  . "$env_file"
fi
db_uri=postgresql://mlflow:$db_password@127.0.0.1:$db_port

if [[ ! -d $pgdata ]]; then
  as_db_user test -x "$dir" || die "user ${PG_USER:-postgres} cannot enter $dir: choose a folder it can reach (e.g. under /tmp), or chmod o+x its parents"
  install -d -m 700 "$pgdata"
  [[ $(id -u) -ne 0 ]] || chown "${PG_USER:-postgres}:" "$pgdata"
  pwfile=$dir/.db_password
  (umask 077 && echo "$db_password" >"$pwfile")
  [[ $(id -u) -ne 0 ]] || chown "${PG_USER:-postgres}:" "$pwfile"
  as_db_user "$PG_BIN/initdb" -D "$pgdata" -U mlflow --pwfile="$pwfile" -A scram-sha-256 \
    -E UTF8 --no-locale >"$dir/initdb.log" 2>&1 ||
    { rm -rf "$pgdata" "$pwfile"; die "initdb failed: see $dir/initdb.log"; }
  rm -f "$pwfile"
  created=1
fi
if ! db_running; then
  as_db_user "$PG_BIN/pg_ctl" -D "$pgdata" -l "$pgdata/postgres.log" -w -t 60 start \
    -o "-c listen_addresses=127.0.0.1 -p $db_port -k $pgdata" >/dev/null ||
    die "PostgreSQL did not start on 127.0.0.1:$db_port: see $pgdata/postgres.log"
  echo "PostgreSQL on 127.0.0.1:$db_port (data in $pgdata)"
fi
if [[ ${created:-0} == 1 ]]; then
  for db in mlflow mlflow_auth; do
    PGPASSWORD=$db_password "$PG_BIN/createdb" -h 127.0.0.1 -p "$db_port" -U mlflow "$db"
  done
fi

if server_pid >/dev/null; then
  echo "mlflow server already running (process $(cat "$pidfile"))"
else
  args=(server --host 127.0.0.1 --port "$port" --workers "$workers"
    --backend-store-uri "$db_uri/mlflow" --artifacts-destination "$dir/artifacts")
  if [[ $auth == 1 ]]; then
    # auth_cache_ttl_seconds: a login is checked (a slow password hash) once a minute per
    # worker, not on every request; a changed password takes up to a minute to reach all workers
    (umask 077 && cat >"$dir/basic_auth.ini" <<EOF
[mlflow]
default_permission = READ
database_uri = $db_uri/mlflow_auth
admin_username = admin
auth_cache_ttl_seconds = 60
EOF
    )
    args+=(--app-name basic-auth)
  fi
  MLFLOW_AUTH_CONFIG_PATH=$dir/basic_auth.ini MLFLOW_AUTH_ADMIN_PASSWORD=$admin_password \
    MLFLOW_FLASK_SERVER_SECRET_KEY=$flask_secret \
    setsid mlflow "${args[@]}" >>"$dir/mlflow.log" 2>&1 </dev/null &
  echo $! >"$pidfile"
  for _ in $(seq 180); do
    python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$port/health', timeout=2)" \
      2>/dev/null && break
    server_pid >/dev/null || die "mlflow server exited: see $dir/mlflow.log"
    sleep 0.5
  done
  python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$port/health', timeout=2)" \
    2>/dev/null || die "mlflow server did not answer in 90 s: see $dir/mlflow.log"
  echo "mlflow server on http://127.0.0.1:$port (process $(cat "$pidfile"), log $dir/mlflow.log)"
fi

(umask 077 && {
  echo "export MLFLOW_TRACKING_URI=http://127.0.0.1:$port"
  if [[ $auth == 1 ]]; then
    echo "export MLFLOW_TRACKING_USERNAME=admin"
    echo "export MLFLOW_TRACKING_PASSWORD='$admin_password'"
  fi
} >"$dir/client.env")
echo "use it: . $dir/client.env && python -m train mlflow=server"
