#!/usr/bin/env bash
# Throwaway PostgreSQL clusters for tests and for trying hsmkms on
# PostgreSQL, from the distribution's packages. Nothing here touches a
# system cluster: each cluster lives under a directory you name, listens on
# 127.0.0.1 only, and requires the password this script generates.
#
#   scripts/postgres.sh install     apt-get install postgresql if its server
#                                   binaries are missing (as setup.sh does
#                                   for SoftHSM2); a no-op otherwise
#   scripts/postgres.sh bindir      print the directory of initdb and postgres
#   scripts/postgres.sh start DIR   create a cluster in DIR if there is none,
#                                   start it in the background (pg_ctl), and
#                                   print its URL
#   scripts/postgres.sh run DIR     the same, but print the URL and then run
#                                   the server in the foreground (exec): what
#                                   tests use, so the server dies with them
#   scripts/postgres.sh stop DIR    stop the cluster started in DIR
#
# DIR holds data/ (the cluster), log (the server log) and url (0600:
# postgres://hsmkms:<password>@127.0.0.1:<port>/postgres). PG_PORT chooses
# the port (default: a free one); PG_BINDIR the binaries.
#
# PostgreSQL refuses to run as root. As root the cluster runs as the
# "postgres" user the Debian packages create (or, if there is none, a
# system user "hsmkms-pg" this script creates), so DIR must be reachable
# by that user: DIR itself is given to it, and its parents need o+x
# (anything under /tmp from mktemp is fine; t.TempDir() is not).
set -euo pipefail

die() { echo "postgres.sh: $*" >&2; exit 1; }

bindir() {
  if [ -n "${PG_BINDIR:-}" ]; then
    [ -x "$PG_BINDIR/postgres" ] || die "PG_BINDIR=$PG_BINDIR has no postgres binary"
    echo "$PG_BINDIR"; return 0
  fi
  # Debian and Ubuntu keep each major version's server in its own
  # directory, off PATH; take the newest.
  local d best=""
  best=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | while read -r d; do
    if [ -x "$d/postgres" ] && [ -x "$d/initdb" ]; then echo "$d"; fi; done | tail -n 1)
  if [ -z "$best" ] && command -v initdb >/dev/null 2>&1 && command -v postgres >/dev/null 2>&1; then
    best=$(dirname "$(command -v initdb)")
  fi
  [ -n "$best" ] || return 1
  echo "$best"
}

install() {
  if bindir >/dev/null; then return 0; fi
  if ! command -v apt-get >/dev/null 2>&1; then
    die "no PostgreSQL server found and no apt-get to install one: install PostgreSQL 13 or later (initdb, postgres; tested with 15) and set PG_BINDIR, or set HSMKMS_TEST_POSTGRES=skip to skip the PostgreSQL tests"
  fi
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || die "need root (or sudo) to apt-get install postgresql"
    sudo="sudo"
  fi
  echo "postgres.sh: installing postgresql with apt-get" >&2
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends postgresql >/dev/null
  bindir >/dev/null || die "apt-get installed postgresql but no server binaries were found under /usr/lib/postgresql"
  echo "postgres.sh: done" >&2
}

# as USER CMD...: runs CMD as the cluster's owner. setpriv (util-linux,
# always present on Debian) execs without forking, so a process that
# starts `run` with a parent-death signal still owns the server, and
# --pdeathsig keep carries that signal across the change of user.
user=""
as() {
  if [ -z "$user" ]; then "$@"; return; fi
  setpriv --reuid="$user" --regid="$user" --init-groups --pdeathsig keep -- "$@"
}

pick_user() {
  [ "$(id -u)" -eq 0 ] || return 0
  if id postgres >/dev/null 2>&1; then
    user=postgres
  else
    id hsmkms-pg >/dev/null 2>&1 ||
      useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin hsmkms-pg
    user=hsmkms-pg
  fi
}

free_port() {
  local p
  for _ in $(seq 1 50); do
    p=$((20000 + RANDOM % 30000))
    # Something answers: taken. Nothing: free (a race we accept; start
    # fails loudly if another process binds it first).
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return 0; fi
  done
  die "no free port found"
}

# init DIR: creates the cluster in DIR/data once; later calls reuse it.
init() {
  local dir=$1 bin
  bin=$(bindir) || die "no PostgreSQL server binaries; run: scripts/postgres.sh install"
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  pick_user
  if [ -n "$user" ]; then
    chown "$user:" "$dir"
    as test -x "$dir" || die "$dir is not reachable by the user $user (a parent directory lacks o+x)"
  fi
  if [ -f "$dir/data/PG_VERSION" ]; then
    [ -s "$dir/url" ] || die "$dir/data exists but $dir/url does not"
    return 0
  fi
  local pw port
  pw=$(head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')
  port=${PG_PORT:-$(free_port)}
  (umask 077; printf '%s\n' "$pw" >"$dir/pwfile")
  [ -z "$user" ] || chown "$user:" "$dir/pwfile"
  # -N: no fsync of the new files (the cluster is throwaway). The server
  # itself keeps fsync and synchronous_commit on: hsmkms's guarantees and
  # the benchmarks are measured as in production.
  if ! (cd / && as "$bin/initdb" -D "$dir/data" -U hsmkms --pwfile="$dir/pwfile" --auth=scram-sha-256 \
        -E UTF8 --no-locale -N >"$dir/initdb.log" 2>&1); then
    rm -f "$dir/pwfile"
    cat "$dir/initdb.log" >&2
    die "initdb failed"
  fi
  rm -f "$dir/pwfile"
  cat >>"$dir/data/postgresql.conf" <<EOF

# scripts/postgres.sh: a throwaway cluster on loopback.
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir/data'
max_connections = 300
shared_buffers = 32MB
EOF
  (umask 077; printf 'postgres://hsmkms:%s@127.0.0.1:%s/postgres?sslmode=disable\n' "$pw" "$port" >"$dir/url")
}

cmd=${1:-}
case "$cmd" in
  install) install ;;
  bindir) bindir || die "no PostgreSQL server binaries; run: scripts/postgres.sh install" ;;
  start)
    [ $# -eq 2 ] || die "usage: $0 start DIR"
    init "$2"
    dir=$(cd "$2" && pwd)
    bin=$(bindir)
    touch "$dir/log"; [ -z "$user" ] || chown "$user:" "$dir/log"
    (cd / && as "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w -t 60 start >/dev/null) ||
      { tail -n 20 "$dir/log" >&2; die "the server did not start"; }
    cat "$dir/url"
    ;;
  run)
    [ $# -eq 2 ] || die "usage: $0 run DIR"
    init "$2"
    dir=$(cd "$2" && pwd)
    bin=$(bindir)
    cat "$dir/url"
    cd /
    if [ -n "$user" ]; then
      exec setpriv --reuid="$user" --regid="$user" --init-groups --pdeathsig keep -- \
        "$bin/postgres" -D "$dir/data" >>"$dir/log" 2>&1
    fi
    exec "$bin/postgres" -D "$dir/data" >>"$dir/log" 2>&1
    ;;
  stop)
    [ $# -eq 2 ] || die "usage: $0 stop DIR"
    dir=$(cd "$2" && pwd)
    pick_user
    bin=$(bindir)
    (cd / && as "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null)
    ;;
  *) die "usage: $0 install | bindir | start DIR | run DIR | stop DIR" ;;
esac
